"""The floor: a plain async client (aiohttp via nhi.k8s.client.Api, no kopf, no work queue,
no caches) that creates exactly the objects the operator creates, with the same cryptography.

It uses the operator's own pure builders (``nhi.builders``), so the objects are byte-for-byte
the shapes the operator applies; what it leaves out is everything that makes an operator an
operator: watches, caches, the work queue, drift checks, Events, metrics and logs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from bench.manifests import TRUST_BUNDLE
from nhi import crypto
from nhi.builders.rbac import desired_access
from nhi.builders.secrets import build_credential_secret, token_request
from nhi.k8s.client import Api
from nhi.models import conditions as cond
from nhi.models.duration import parse_time, rfc3339
from nhi.models.identity import Credential, MachineIdentity
from nhi.models.issued import Issued
from nhi.policies import rotation

TRUST_DOMAIN = "bench.example.org"


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Floor:
    def __init__(self, api: Api) -> None:
        self.api = api
        self.ca_key = crypto.generate_key("ECDSA-P256")
        self.ca_cert = crypto.build_self_signed_ca(
            "bench floor CA", self.ca_key, now(), dt.timedelta(days=365)
        )
        self.bundle = crypto.cert_pem(self.ca_cert)
        self.ca_fingerprint = crypto.fingerprint_sha256(self.ca_cert)
        # The operator's path: the CA is checked once per signer, not per issuance.
        self.ca = crypto.PreparedIssuer(self.ca_cert, self.ca_key, now())

    async def trust_bundle(self, namespace: str) -> None:
        """The trust bundle ConfigMap the operator publishes once per namespace."""
        await self.api.apply(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": TRUST_BUNDLE, "namespace": namespace},
                "data": {"ca.crt": self.bundle.decode()},
            }
        )

    # ------------------------------------------------------------------ provisioning

    async def provision(self, manifest: Mapping[str, Any]) -> None:
        """Everything for one identity, in the operator's order, then its status."""
        body = await self.api.apply(manifest)
        identity = MachineIdentity.from_body(body)
        for obj in desired_access(identity):
            await self.api.apply(obj)
        statuses = []
        for cred in identity.spec.credentials:
            if cred.type == "ServiceAccountToken":
                issued = await self.issue_token(identity, cred)
            else:
                issued = await self.issue_x509(identity, cred)
            statuses.append(credential_status(cred, issued))
        await self.write_status(identity, statuses)

    async def issue_token(self, identity: MachineIdentity, cred: Credential) -> Issued:
        anchor = await self.api.apply(build_credential_secret(identity, cred, None, {}))
        answer = await self.api.create(
            "ServiceAccount",
            identity.namespace,
            token_request(cred, cred.secret_name, anchor["metadata"]["uid"]),
            name=identity.spec.service_account,
            subresource="token",
        )
        token: str = answer["status"]["token"]
        t = now()
        not_after = parse_time(answer["status"]["expirationTimestamp"])
        issued = Issued(
            not_before=t,
            not_after=not_after,
            renewal_time=rotation.renewal_time(identity.spec, t, not_after, cred.name),
            issued_at=t,
            rotation_count=0,
            spec_hash=rotation.spec_hash(cred, identity.spec.service_account),
            fingerprint=crypto.secret_fingerprint(token),
        )
        await self.api.apply(
            build_credential_secret(identity, cred, {"token": token.encode()}, issued.annotations())
        )
        return issued

    async def issue_x509(
        self, identity: MachineIdentity, cred: Credential, count: int = 0
    ) -> Issued:
        t = now()
        key = crypto.generate_key(cred.key_algorithm)
        cert = self.ca.issue_leaf(
            public_key=key.public_key(),
            spiffe_id=crypto.spiffe_id(
                TRUST_DOMAIN, identity.namespace, identity.spec.service_account
            ),
            dns_names=cred.dns_names,
            now=t,
            ttl=cred.ttl,
        )
        nb, na = cert.not_valid_before_utc, cert.not_valid_after_utc
        issued = Issued(
            not_before=nb,
            not_after=na,
            renewal_time=rotation.renewal_time(identity.spec, nb, na, cred.name),
            issued_at=t,
            rotation_count=count,
            spec_hash=rotation.spec_hash(cred, identity.spec.service_account),
            serial=crypto.serial_hex(cert),
            fingerprint=crypto.fingerprint_sha256(cert),
            issuer="ClusterIdentityIssuer/bench-floor",
            ca_fingerprint=self.ca_fingerprint,
        )
        data = {
            "tls.crt": crypto.chain_pem([cert]),
            "tls.key": crypto.private_key_pem(key),
            "ca.crt": self.bundle,
        }
        await self.api.apply(build_credential_secret(identity, cred, data, issued.annotations()))
        return issued

    async def write_status(self, identity: MachineIdentity, statuses: list[dict[str, Any]]) -> None:
        t = now()
        gen = identity.generation
        conds = cond.set_condition([], cond.READY, cond.TRUE, "CredentialsIssued", "ok", gen, t)
        conds = cond.set_condition(conds, cond.RECONCILING, cond.FALSE, "Ready", "-", gen, t)
        conds = cond.set_condition(conds, cond.STALLED, cond.FALSE, "Ready", "-", gen, t)
        status = {
            "observedGeneration": gen,
            "phase": "Active",
            "serviceAccount": identity.spec.service_account,
            "conditions": conds,
            "credentials": statuses,
            "nextRenewalTime": min(s["renewalTime"] for s in statuses) if statuses else None,
        }
        await self.api.patch(
            "MachineIdentity",
            identity.namespace,
            identity.name,
            {"status": status},
            subresource="status",
        )

    # ------------------------------------------------------------------ rotation

    async def rotate_x509(self, body: Mapping[str, Any]) -> None:
        """What a rotation of one X509 credential needs: key, certificate, Secret, status."""
        identity = MachineIdentity.from_body(body)
        statuses = []
        for cred in identity.spec.credentials:
            if cred.type == "X509":
                statuses.append(credential_status(cred, await self.issue_x509(identity, cred, 1)))
        await self.write_status(identity, statuses)


def credential_status(cred: Credential, issued: Issued) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": cred.name,
        "type": cred.type,
        "secretName": cred.secret_name,
        "notBefore": rfc3339(issued.not_before),
        "notAfter": rfc3339(issued.not_after),
        "renewalTime": rfc3339(issued.renewal_time),
        "lastRotationTime": rfc3339(issued.issued_at),
        "rotationCount": issued.rotation_count,
    }
    if issued.serial:
        out["serialNumber"] = issued.serial
    if issued.fingerprint:
        out["fingerprint"] = issued.fingerprint
    return out

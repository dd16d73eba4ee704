"""Issuing one credential's value and storing it in the identity's own Secret.

ServiceAccountToken: a TokenRequest bound to the Secret that holds it. X509: a fresh key and a
leaf from the issuer's signer. StaticSecret: a generated value, the one it replaces kept as
``previous`` through the overlap. Values go into the Secret and nowhere else.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nhi import crypto
from nhi.builders.rbac import ChildKey, field_for
from nhi.builders.secrets import build_credential_secret, token_request
from nhi.k8s.client import Api
from nhi.models.duration import parse_time
from nhi.models.identity import Credential, MachineIdentity
from nhi.models.issued import Issued
from nhi.policies import rotation
from nhi.reconcilers.issuers import RemoteCA, Signer
from nhi.reconcilers.owned import OwnedWriter, uid_of
from nhi.reconcilers.vault_storage import KVStore


class Minter:
    """Issues credential values; writes only Secrets the identity owns (OwnedWriter)."""

    def __init__(self, api: Api, writer: OwnedWriter, kv: KVStore | None = None) -> None:
        self.api = api
        self.writer = writer
        self.kv = kv

    async def issue(
        self,
        identity: MachineIdentity,
        cred: Credential,
        old: Issued | None,
        stored: Mapping[str, Any] | None,
        signer: Signer | None,
        now: dt.datetime,
        reason: str,
        renew_handled: str = "",
    ) -> Issued:
        job = _Issuance(
            identity, cred, now, (old.rotation_count + 1) if old else 0, renew_handled, stored
        )
        if cred.type == "ServiceAccountToken":
            return await self._issue_token(job)
        if cred.type == "X509":
            assert signer is not None
            return await self._issue_x509(job, signer)
        return await self._issue_static(job, old)

    async def _issue_token(self, job: _Issuance) -> Issued:
        identity, cred = job.identity, job.cred
        if _vault_only(cred):
            # No Secret to bind it to: it lives until its expiry or until its ServiceAccount
            # goes (revocation deletes it).
            return await self._issue_unbound_token(job)
        uid = uid_of(job.stored)
        if not uid:
            # The token is bound to its Secret, so the Secret must exist (and have a uid) first.
            job = job.stored_as(
                await self._write(job, build_credential_secret(identity, cred, None, {}))
            )
            uid = uid_of(job.stored)
        answer = await self.api.create(
            "ServiceAccount",
            identity.namespace,
            token_request(cred, cred.secret_name, uid),
            name=identity.spec.service_account,
            subresource="token",
        )
        token: str = answer["status"]["token"]
        not_after = parse_time(answer["status"]["expirationTimestamp"])
        issued = job.issued(
            job.now,
            not_after,
            fingerprint=crypto.secret_fingerprint(token),
            credential_id=crypto.token_credential_id(token),
        )
        await self._store(job, {"token": token.encode()}, issued)
        return issued

    async def _issue_unbound_token(self, job: _Issuance) -> Issued:
        identity, cred = job.identity, job.cred
        spec: dict[str, Any] = {"expirationSeconds": int(cred.ttl.total_seconds())}
        if cred.audiences:
            spec["audiences"] = list(cred.audiences)
        answer = await self.api.create(
            "ServiceAccount",
            identity.namespace,
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
            name=identity.spec.service_account,
            subresource="token",
        )
        token: str = answer["status"]["token"]
        not_after = parse_time(answer["status"]["expirationTimestamp"])
        issued = job.issued(
            job.now,
            not_after,
            fingerprint=crypto.secret_fingerprint(token),
            credential_id=crypto.token_credential_id(token),
        )
        await self._store(job, {"token": token.encode()}, issued)
        return issued

    async def _issue_x509(self, job: _Issuance, signer: Signer) -> Issued:
        identity, cred = job.identity, job.cred
        key = crypto.generate_key(cred.key_algorithm)
        spiffe_id = crypto.spiffe_id(
            signer.trust_domain, identity.namespace, identity.spec.service_account
        )
        chain = signer.chain
        if isinstance(signer.ca, RemoteCA):
            # Vault signs a CSR: the key never leaves the operator.
            cert, chain = await signer.ca.signing.sign(
                key, spiffe_id=spiffe_id, dns_names=cred.dns_names, ttl=cred.ttl
            )
        else:
            cert = signer.ca.issue_leaf(
                public_key=key.public_key(),
                spiffe_id=spiffe_id,
                dns_names=cred.dns_names,
                now=job.now,
                ttl=cred.ttl,
            )
        issued = job.issued(
            cert.not_valid_before_utc,
            cert.not_valid_after_utc,
            serial=crypto.serial_hex(cert),
            fingerprint=crypto.fingerprint_sha256(cert),
            issuer=signer.ref,
            ca_fingerprint=signer.ca.fingerprint,
        )
        data = {
            "tls.crt": crypto.chain_pem([cert, *chain]),
            "tls.key": crypto.private_key_pem(key),
            "ca.crt": signer.bundle_pem,
        }
        await self._store(job, data, issued)
        return issued

    async def _issue_static(self, job: _Issuance, old: Issued | None) -> Issued:
        identity, cred, now = job.identity, job.cred, job.now
        assert cred.generator is not None
        value = crypto.generate_secret(cred.generator.length, cred.generator.charset)
        data = {"current": value.encode()}
        previous_not_after = None
        if old is not None and old.not_after > now:
            # Keep the value being replaced as `previous` until its own expiry: verifiers
            # accept both while consumers roll over.
            current = await self._current(identity, cred, job.stored)
            if current is not None:
                data["previous"] = current
                previous_not_after = old.not_after
        issued = job.issued(
            now,
            now + cred.ttl,
            fingerprint=crypto.secret_fingerprint(value),
            previous_not_after=previous_not_after,
        )
        await self._store(job, data, issued)
        return issued

    async def drop_previous(
        self,
        identity: MachineIdentity,
        cred: Credential,
        issued: Issued,
        stored: Mapping[str, Any] | None,
    ) -> Issued:
        """The overlap window ended: remove ``previous`` from a StaticSecret."""
        current = await self._current(identity, cred, stored)
        new = Issued(**{**issued.__dict__, "previous_not_after": None})
        if current is not None and _vault_only(cred) and self.kv is not None:
            await self.kv.write(identity, cred, {"current": current}, new)
        elif current is not None:
            await self.writer.write(
                identity,
                build_credential_secret(identity, cred, {"current": current}, new.annotations()),
                stored,
                _field(identity, cred),
            )
        return new

    async def _store(self, job: _Issuance, data: Mapping[str, bytes], issued: Issued) -> None:
        """Keep the value: in Vault's KV first when the credential says so (a Vault that
        cannot take it leaves the Secret as it was, to be tried again), then in its Secret."""
        if job.cred.kv is not None and self.kv is not None:
            await self.kv.write(job.identity, job.cred, data, issued)
        if _vault_only(job.cred):
            return  # no Kubernetes Secret at all
        await self._write(
            job, build_credential_secret(job.identity, job.cred, data, issued.annotations())
        )

    async def _current(
        self, identity: MachineIdentity, cred: Credential, stored: Mapping[str, Any] | None
    ) -> bytes | None:
        """A StaticSecret's current value: from its copy in Vault when it has no Secret."""
        if _vault_only(cred):
            if self.kv is None:
                return None
            data = await self.kv.read(identity, cred)
            return (data or {}).get("current")
        return await self._read_data(identity, cred, stored, "current")

    async def _write(self, job: _Issuance, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create the credential's Secret, or update the one the identity owns."""
        return await self.writer.write(
            job.identity, obj, job.stored, _field(job.identity, job.cred)
        )

    async def _read_data(
        self,
        identity: MachineIdentity,
        cred: Credential,
        stored: Mapping[str, Any] | None,
        key: str,
    ) -> bytes | None:
        """A value from the identity's own Secret (never from a namesake that replaced it)."""
        secret = await self.api.get("Secret", identity.namespace, cred.secret_name)
        if secret is None or uid_of(secret) != uid_of(stored):
            return None
        value = (secret.get("data") or {}).get(key)
        return base64.b64decode(value) if value else None


@dataclass(frozen=True)
class _Issuance:
    """One issuance of one credential: what every type records the same way."""

    identity: MachineIdentity
    cred: Credential
    now: dt.datetime
    count: int
    renew_handled: str
    #: The identity's own Secret for the credential, as last seen (None: not written yet).
    stored: Mapping[str, Any] | None = None

    def stored_as(self, written: Mapping[str, Any]) -> _Issuance:
        return dataclasses.replace(self, stored=written)

    def issued(self, not_before: dt.datetime, not_after: dt.datetime, **ids: Any) -> Issued:
        seed = f"{self.identity.uid}/{self.cred.name}/{self.count}"
        return Issued(
            not_before=not_before,
            not_after=not_after,
            renewal_time=rotation.renewal_time(
                self.identity.spec, not_before, not_after, seed, issued_at=self.now
            ),
            issued_at=self.now,
            rotation_count=self.count,
            spec_hash=rotation.spec_hash(self.cred, self.identity.spec.service_account),
            renew_handled=self.renew_handled,
            **ids,
        )


def _field(identity: MachineIdentity, cred: Credential) -> str:
    return field_for(identity, ChildKey("Secret", identity.namespace, cred.secret_name))


def _vault_only(cred: Credential) -> bool:
    return cred.kv is not None and cred.kv.vault_only

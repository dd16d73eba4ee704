"""The admission webhook's serving certificate and its ValidatingWebhookConfiguration.

- **One Secret, shared by every replica and every restart** (``<operator namespace>/
  <secret>``): a self-signed CA (``ca.crt``, ``ca.key``) and a serving certificate for the
  webhook's host names (``tls.crt``, ``tls.key``). A restart reuses it, so the caBundle the
  API server trusts does not change.
- **Renewal never interrupts admission.** The serving certificate is renewed when two thirds of
  its lifetime have passed and loaded into the running TLS context (the listening socket stays
  open). It is signed by the same CA, so the caBundle is unchanged. The CA itself is replaced
  when a third of its (long) lifetime is left: the new CA first joins the caBundle next to the
  old one (``ca-previous.crt``), and only the next serving certificate is signed by it.
- **The configuration** is written with server-side apply: ``failurePolicy: Ignore`` and a 5 s
  timeout, so an operator outage cannot block writes (the reconciler checks the same policies
  before applying anything), and ``kube-system`` and the operator's own namespace are
  excluded, so the operator can always be repaired.

The functions above the ``I/O`` line are pure and take ``now``.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from nhi import FIELD_MANAGER
from nhi.crypto import (
    CLOCK_SKEW,
    PrivateKey,
    build_self_signed_ca,
    cert_pem,
    generate_key,
    load_cert_chain,
    load_private_key,
    private_key_pem,
    signing_hash,
)
from nhi.k8s.client import Api, Conflict

log = logging.getLogger("nhi.reconcilers.webhook")

Clock = Callable[[], dt.datetime]

DEFAULT_CA_TTL = dt.timedelta(days=3650)
DEFAULT_CERT_TTL = dt.timedelta(days=30)
RENEW_AFTER_FRACTION = 2 / 3  # of a certificate's lifetime
WEBHOOK_NAME = "machineidentities.policy.nhi.dev"
TIMEOUT_SECONDS = 5
VWC_PATH = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
LABELS = {
    "app.kubernetes.io/name": "nhi-operator",
    "app.kubernetes.io/part-of": "nhi-operator",
    "app.kubernetes.io/component": "admission-webhook",
}
#: Namespaces the webhook never covers, besides the operator's own.
EXCLUDED_NAMESPACES = ("kube-system",)


# ------------------------------------------------------------------------------ pure


@dataclass(frozen=True)
class ServingMaterial:
    ca_cert: x509.Certificate
    ca_key: PrivateKey
    cert: x509.Certificate
    key: PrivateKey
    previous_ca: x509.Certificate | None = None

    def ca_bundle(self, now: dt.datetime) -> bytes:
        """The CAs the API server must trust: the current one and, while valid, the old."""
        pem = cert_pem(self.ca_cert)
        prev = self.previous_ca
        if prev is not None and prev.not_valid_after_utc > now:
            pem += cert_pem(prev)
        return pem

    def secret_data(self) -> dict[str, str]:
        data = {
            "ca.crt": cert_pem(self.ca_cert),
            "ca.key": private_key_pem(self.ca_key),
            "tls.crt": cert_pem(self.cert),
            "tls.key": private_key_pem(self.key),
        }
        if self.previous_ca is not None:
            data["ca-previous.crt"] = cert_pem(self.previous_ca)
        return {k: base64.b64encode(v).decode("ascii") for k, v in data.items()}

    @classmethod
    def from_secret(cls, secret: Mapping[str, Any] | None) -> ServingMaterial | None:
        """The material in a Secret, or None when it is missing or unreadable."""
        data = (secret or {}).get("data") or {}
        try:
            raw = {k: base64.b64decode(v) for k, v in data.items()}
            prev = raw.get("ca-previous.crt")
            return cls(
                ca_cert=load_cert_chain(raw["ca.crt"])[0],
                ca_key=load_private_key(raw["ca.key"]),
                cert=load_cert_chain(raw["tls.crt"])[0],
                key=load_private_key(raw["tls.key"]),
                previous_ca=load_cert_chain(prev)[0] if prev else None,
            )
        except (KeyError, ValueError, IndexError):
            return None
        except Exception as err:  # a CryptoError or anything cryptography raises
            log.warning("ignoring unreadable webhook certificate material: %s", type(err).__name__)
            return None

    @property
    def serial(self) -> int:
        return int(self.cert.serial_number)


def renewal_time(cert: x509.Certificate) -> dt.datetime:
    """When two thirds of the certificate's lifetime (after the back-dating) have passed."""
    not_before = cert.not_valid_before_utc + CLOCK_SKEW
    lifetime = cert.not_valid_after_utc - not_before
    if lifetime <= dt.timedelta(0):
        return cert.not_valid_before_utc
    return not_before + lifetime * RENEW_AFTER_FRACTION


def _san_entry(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def serving_hosts(
    host: str, service: str = "", namespace: str = "", extra: Sequence[str] = ()
) -> list[str]:
    """The names the API server may use to reach the webhook, for the certificate's SANs."""
    out: list[str] = []
    names = [host] if host else []
    if service:
        names += [
            service,
            f"{service}.{namespace}",
            f"{service}.{namespace}.svc",
            f"{service}.{namespace}.svc.cluster.local",
        ]
    for name in [*names, *extra]:
        if name and name not in out:
            out.append(name)
    return out


def covers_hosts(cert: x509.Certificate, hosts: Sequence[str]) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    present = set(san)
    return all(_san_entry(h) in present for h in hosts)


def issue_serving_cert(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    key: PrivateKey,
    hosts: Sequence[str],
    now: dt.datetime,
    ttl: dt.timedelta,
) -> x509.Certificate:
    """A TLS server certificate for ``hosts`` (IP addresses become IP SANs)."""
    if not hosts:
        raise ValueError("the serving certificate needs at least one host name")
    not_before = max(now - CLOCK_SKEW, ca_cert.not_valid_before_utc)
    not_after = min(now + ttl, ca_cert.not_valid_after_utc)
    public_key = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nhi-operator-webhook")]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([_san_entry(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    return builder.sign(private_key=ca_key, algorithm=signing_hash(ca_key))


def _ca_due(ca: x509.Certificate, now: dt.datetime) -> bool:
    """A third of the CA's lifetime or less is left."""
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    return now >= ca.not_valid_after_utc - lifetime / 3


def plan_material(
    current: ServingMaterial | None,
    hosts: Sequence[str],
    now: dt.datetime,
    cert_ttl: dt.timedelta = DEFAULT_CERT_TTL,
    ca_ttl: dt.timedelta = DEFAULT_CA_TTL,
) -> tuple[ServingMaterial, str]:
    """The material to serve with, and why it changed ("" when ``current`` is kept).

    A new CA is only ever *added* to the caBundle here; the serving certificate keeps the old
    CA's signature until its own renewal, by which time the API server trusts both.
    """
    if current is None:
        ca_key = generate_key()
        ca = build_self_signed_ca("nhi-operator webhook CA", ca_key, now, ca_ttl)
        key = generate_key()
        cert = issue_serving_cert(ca, ca_key, key, hosts, now, cert_ttl)
        return ServingMaterial(ca, ca_key, cert, key), "created"
    material = current
    reason = ""
    prev = material.previous_ca
    if prev is not None and prev.not_valid_after_utc <= now:
        material = ServingMaterial(material.ca_cert, material.ca_key, material.cert, material.key)
        reason = "dropped the expired previous CA"
    rotated = False
    if _ca_due(material.ca_cert, now) or material.ca_cert.not_valid_after_utc <= now:
        ca_key = generate_key()
        ca = build_self_signed_ca("nhi-operator webhook CA", ca_key, now, ca_ttl)
        material = ServingMaterial(ca, ca_key, material.cert, material.key, material.ca_cert)
        reason = "rotated the CA"
        rotated = True
    trusted = _signed_by(material.cert, material.ca_cert) or (
        material.previous_ca is not None and _signed_by(material.cert, material.previous_ca)
    )
    leaf_due = (
        not trusted or now >= renewal_time(material.cert) or not covers_hosts(material.cert, hosts)
    )
    if (
        leaf_due
        and rotated
        and material.cert.not_valid_after_utc > now
        and covers_hosts(material.cert, hosts)
    ):
        # The new CA must reach the caBundle before a certificate signed by it is served:
        # keep the (still valid) certificate this round, renew it on the next.
        leaf_due = False
    if leaf_due:
        key = generate_key()
        cert = issue_serving_cert(material.ca_cert, material.ca_key, key, hosts, now, cert_ttl)
        material = ServingMaterial(
            material.ca_cert, material.ca_key, cert, key, material.previous_ca
        )
        reason = reason or "renewed the serving certificate"
    return material, reason


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    return cert.issuer == ca.subject and _aki(cert) == _ski(ca)


def _aki(cert: x509.Certificate) -> bytes | None:
    try:
        ext = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    except x509.ExtensionNotFound:
        return None
    return ext.key_identifier


def _ski(cert: x509.Certificate) -> bytes | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return None


def namespace_selector(namespaces: Sequence[str], operator_namespace: str) -> dict[str, Any]:
    """Exclude kube-system and the operator's namespace; with an explicit namespace list (no
    globs), cover only those namespaces."""
    excluded = sorted({*EXCLUDED_NAMESPACES, operator_namespace} - {""})
    exprs: list[dict[str, Any]] = [
        {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": excluded}
    ]
    plain = [n for n in namespaces if not any(c in n for c in "*?[")]
    if namespaces and len(plain) == len(namespaces):
        exprs.append(
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": sorted(plain)}
        )
    return {"matchExpressions": exprs}


def build_configuration(
    name: str,
    client_config: Mapping[str, Any],
    namespaces: Sequence[str],
    operator_namespace: str,
) -> dict[str, Any]:
    """The ValidatingWebhookConfiguration for MachineIdentity CREATE and UPDATE."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name, "labels": dict(LABELS)},
        "webhooks": [
            {
                "name": WEBHOOK_NAME,
                "admissionReviewVersions": ["v1"],
                "clientConfig": dict(client_config),
                "rules": [
                    {
                        "apiGroups": ["nhi.dev"],
                        "apiVersions": ["v1alpha1"],
                        "resources": ["machineidentities"],
                        "operations": ["CREATE", "UPDATE"],
                        "scope": "Namespaced",
                    }
                ],
                # An outage of the operator must not block writes: the reconciler applies
                # the same checks before granting anything.
                "failurePolicy": "Ignore",
                "matchPolicy": "Equivalent",
                "sideEffects": "None",
                "timeoutSeconds": TIMEOUT_SECONDS,
                "namespaceSelector": namespace_selector(namespaces, operator_namespace),
            }
        ],
    }


def client_config(
    material: ServingMaterial,
    now: dt.datetime,
    path: str,
    *,
    host: str = "",
    port: int = 0,
    service: str = "",
    service_namespace: str = "",
    service_port: int = 443,
) -> dict[str, Any]:
    """How the API server reaches the webhook: a Service when named, else a URL."""
    bundle = base64.b64encode(material.ca_bundle(now)).decode("ascii")
    path = "/" + path.lstrip("/")
    if service:
        return {
            "service": {
                "namespace": service_namespace,
                "name": service,
                "port": service_port,
                "path": path,
            },
            "caBundle": bundle,
        }
    try:
        netloc = f"[{ipaddress.IPv6Address(host)}]"
    except ValueError:
        netloc = host
    return {"url": f"https://{netloc}:{port}{path}", "caBundle": bundle}


# ------------------------------------------------------------------------------ I/O


class WebhookCertificates:
    """Reads, creates and renews the shared serving material; writes the configuration."""

    def __init__(
        self,
        api: Api,
        namespace: str,
        secret_name: str,
        hosts: Sequence[str],
        clock: Clock,
        cert_ttl: dt.timedelta = DEFAULT_CERT_TTL,
        ca_ttl: dt.timedelta = DEFAULT_CA_TTL,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.secret_name = secret_name
        self.hosts = list(hosts)
        self.clock = clock
        self.cert_ttl = cert_ttl
        self.ca_ttl = ca_ttl

    async def ensure(self) -> ServingMaterial:
        """The material to serve with: the Secret's, renewed and written back when due."""
        for _ in range(5):
            secret = await self.api.get("Secret", self.namespace, self.secret_name)
            current = ServingMaterial.from_secret(secret)
            material, reason = plan_material(
                current, self.hosts, self.clock(), self.cert_ttl, self.ca_ttl
            )
            if not reason:
                return material
            try:
                await self._write(secret, material)
            except Conflict:
                continue  # another replica wrote it first: use theirs
            log.info(
                "%s for the admission webhook",
                reason,
                extra={
                    "secret_name": f"{self.namespace}/{self.secret_name}",
                    "serial": f"{material.serial:x}",
                    "notAfter": material.cert.not_valid_after_utc.isoformat(),
                },
            )
            return material
        raise RuntimeError("the webhook certificate Secret kept changing under the operator")

    async def _write(self, old: Mapping[str, Any] | None, material: ServingMaterial) -> None:
        data = material.secret_data()
        if old is None:
            body = {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "kubernetes.io/tls",
                "metadata": {
                    "name": self.secret_name,
                    "namespace": self.namespace,
                    "labels": dict(LABELS),
                },
                "data": data,
            }
            await self.api.create("Secret", self.namespace, body)
            return
        patch_data: dict[str, str | None] = dict(data)
        for key in (old.get("data") or {}).keys() - data.keys():
            patch_data[key] = None
        # resourceVersion makes the patch conditional: a concurrent writer gets a Conflict.
        patch = {
            "metadata": {"resourceVersion": old["metadata"]["resourceVersion"]},
            "data": patch_data,
        }
        await self.api.patch("Secret", self.namespace, self.secret_name, patch)

    async def publish(self, configuration: Mapping[str, Any]) -> None:
        """Server-side apply the ValidatingWebhookConfiguration (a no-op when unchanged)."""
        name = configuration["metadata"]["name"]
        await self.api.request(
            "PATCH",
            f"{VWC_PATH}/{name}",
            body=configuration,
            params={"fieldManager": FIELD_MANAGER, "force": "true"},
            content_type="application/apply-patch+yaml",
            kind="ValidatingWebhookConfiguration",
            name=name,
        )

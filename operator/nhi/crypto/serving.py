"""The admission webhook's TLS material: a self-signed CA and a serving certificate.

Everything here builds or reads certificates; when to renew them is decided in
:mod:`nhi.policies.webhook`.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from nhi.crypto.certs import CLOCK_SKEW, cert_pem, load_cert_chain
from nhi.crypto.keys import PrivateKey, load_private_key, private_key_pem, signing_hash

log = logging.getLogger("nhi.crypto.serving")


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


def san_entry(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def covers_hosts(cert: x509.Certificate, hosts: Sequence[str]) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    present = set(san)
    return all(san_entry(h) in present for h in hosts)


def issue_serving_cert(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    key: PrivateKey,
    hosts: Sequence[str],
    now: dt.datetime,
    ttl: dt.timedelta,
) -> x509.Certificate:
    """The webhook's TLS server certificate for ``hosts`` (IP addresses become IP SANs)."""
    if not hosts:
        raise ValueError("the serving certificate needs at least one host name")
    return issue_tls_cert(
        ca_cert, ca_key, key, common_name="nhi-operator-webhook", hosts=hosts, now=now, ttl=ttl
    )


def issue_tls_cert(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    key: PrivateKey,
    *,
    common_name: str,
    now: dt.datetime,
    ttl: dt.timedelta,
    organization: str | None = None,
    hosts: Sequence[str] = (),
    client: bool = False,
) -> x509.Certificate:
    """A TLS certificate: a server's for ``hosts``, or a client's (``client=True``).

    The subject is ``O=organization, CN=common_name``; validity is clipped to the CA's.
    """
    not_before = max(now - CLOCK_SKEW, ca_cert.not_valid_before_utc)
    not_after = min(now + ttl, ca_cert.not_valid_after_utc)
    public_key = key.public_key()
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if hosts:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([san_entry(h) for h in hosts]), critical=False
        )
    builder = (
        builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
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
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    return builder.sign(private_key=ca_key, algorithm=signing_hash(ca_key))


def signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
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


def validity(cert: x509.Certificate) -> tuple[dt.datetime, dt.datetime]:
    """(notBefore, notAfter) in UTC."""
    return cert.not_valid_before_utc, cert.not_valid_after_utc


def subject_alt_names(cert: x509.Certificate) -> list[str]:
    """The certificate's SANs as ``URI:...``, ``DNS:...``, ``IP:...``, ``email:...``."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    out = [f"URI:{v}" for v in san.get_values_for_type(x509.UniformResourceIdentifier)]
    out += [f"DNS:{v}" for v in san.get_values_for_type(x509.DNSName)]
    out += [f"IP:{v}" for v in san.get_values_for_type(x509.IPAddress)]
    out += [f"email:{v}" for v in san.get_values_for_type(x509.RFC822Name)]
    return out

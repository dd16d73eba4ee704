"""X.509 certificates: CA and leaf (X.509-SVID) issuance, PEM, chain verification, summary."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import InitVar, dataclass, field
from datetime import datetime, timedelta
from typing import TypeAlias

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from nhi.crypto.ca_checks import basic_constraints as _basic_constraints
from nhi.crypto.ca_checks import describe as _describe
from nhi.crypto.ca_checks import key_usage_of as _key_usage_of
from nhi.crypto.errors import CryptoError, require_positive, require_utc
from nhi.crypto.identifiers import fingerprint_sha256, serial_hex
from nhi.crypto.keys import (
    PrivateKey,
    ensure_supported_private_key,
    ensure_supported_public_key,
    key_algorithm_of,
    same_public_key,
    signing_hash,
)
from nhi.crypto.spiffe import validate_spiffe_id
from nhi.models.duration import rfc3339

CLOCK_SKEW = timedelta(minutes=1)
"""notBefore is back-dated by this much to tolerate clocks that run slightly behind."""

MAX_SERIAL = 2**159 - 1
"""RFC 5280 caps serial numbers at 20 octets; keep them positive."""

_DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"(?:\*\.)?{_DNS_LABEL}(?:\.{_DNS_LABEL})*")
_MAX_DNS_NAME = 253
_MAX_COMMON_NAME = 64

Certificate: TypeAlias = x509.Certificate
"""A parsed X.509 certificate: the type the rooms above name without importing cryptography."""


# --------------------------------------------------------------------------------------- PEM


def cert_pem(cert: x509.Certificate) -> bytes:
    """PEM encoding of one certificate."""
    return cert.public_bytes(serialization.Encoding.PEM)


def chain_pem(certs: Iterable[x509.Certificate]) -> bytes:
    """Concatenated PEM of several certificates, in the given order (leaf first)."""
    return b"".join(cert_pem(c) for c in certs)


def load_cert_chain(pem: bytes | str) -> list[x509.Certificate]:
    """Load every certificate of a PEM bundle, in order; at least one is required."""
    data = pem.encode("utf-8", "replace") if isinstance(pem, str) else pem
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CryptoError("certificate PEM must be bytes or str")
    try:
        certs = x509.load_pem_x509_certificates(bytes(data))
    except (ValueError, UnsupportedAlgorithm):
        raise CryptoError("invalid certificate PEM: no parseable certificate found") from None
    if not certs:  # pragma: no cover - cryptography raises instead
        raise CryptoError("invalid certificate PEM: no parseable certificate found")
    return certs


# ------------------------------------------------------------------------------- extensions


def _key_usage(
    *, digital_signature: bool, key_encipherment: bool = False, ca: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


_EMPTY_NAME = x509.Name([])
_LEAF_BASIC_CONSTRAINTS = x509.BasicConstraints(ca=False, path_length=None)
_LEAF_KEY_USAGE = _key_usage(digital_signature=True)
_LEAF_KEY_USAGE_RSA = _key_usage(digital_signature=True, key_encipherment=True)
_LEAF_EXTENDED_KEY_USAGE = x509.ExtendedKeyUsage(
    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
)


def _aki_from(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        ski = x509.SubjectKeyIdentifier.from_public_key(ca_cert.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _common_name(value: str, field: str) -> x509.Name:
    if not isinstance(value, str) or not value:
        raise CryptoError(f"{field} must be a non-empty string")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise CryptoError(f"{field} must be valid Unicode") from None
    # RFC 5280's ub-common-name, counted in UTF-8 bytes as cryptography (and OpenSSL) do.
    if size > _MAX_COMMON_NAME:
        raise CryptoError(
            f"{field} must be at most {_MAX_COMMON_NAME} bytes in UTF-8 (it has {size})"
        )
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, value)])


def _check_serial(serial: int | None) -> int:
    if serial is None:
        return x509.random_serial_number()
    if not isinstance(serial, int) or isinstance(serial, bool) or not 1 <= serial <= MAX_SERIAL:
        raise CryptoError("serial must be a positive integer of at most 159 bits")
    return serial


def _check_issuer(ca_cert: x509.Certificate, ca_key: PrivateKey, now: datetime) -> None:
    bc = _basic_constraints(ca_cert)
    if bc is None or not bc.ca:
        raise CryptoError(f"issuer {_describe(ca_cert)} is not a CA certificate")
    ku = _key_usage_of(ca_cert)
    if ku is not None and not ku.key_cert_sign:
        raise CryptoError(f"issuer {_describe(ca_cert)} lacks the keyCertSign key usage")
    ensure_supported_private_key(ca_key)
    if not same_public_key(ca_key, ca_cert.public_key()):
        raise CryptoError(f"CA private key does not match CA certificate {_describe(ca_cert)}")
    _check_issuer_validity(ca_cert, ca_cert.not_valid_before_utc, ca_cert.not_valid_after_utc, now)


def _check_issuer_validity(
    ca_cert: x509.Certificate, not_before: datetime, not_after: datetime, now: datetime
) -> None:
    """``not_before``/``not_after`` are ``ca_cert``'s, passed in so callers can keep them."""
    if now >= not_after:
        raise CryptoError(f"CA certificate {_describe(ca_cert)} expired at {rfc3339(not_after)}")
    if now < not_before:
        raise CryptoError(
            f"CA certificate {_describe(ca_cert)} is not valid before {rfc3339(not_before)}"
        )


def _validity(
    ca_cert: x509.Certificate, now: datetime, ttl: timedelta
) -> tuple[datetime, datetime]:
    not_before = max(now - CLOCK_SKEW, ca_cert.not_valid_before_utc)
    not_after = min(now + ttl, ca_cert.not_valid_after_utc)
    return not_before, not_after


# ---------------------------------------------------------------------------------- issuing


def build_self_signed_ca(
    common_name: str,
    key: PrivateKey,
    now: datetime,
    ttl: timedelta,
    serial: int | None = None,
) -> x509.Certificate:
    """A self-signed root CA certificate.

    basicConstraints CA:TRUE (critical, no path length limit), keyUsage keyCertSign, cRLSign
    and digitalSignature (critical), SKI and AKI. Valid from ``now - 1 minute`` to
    ``now + ttl``. ``serial`` defaults to a random positive serial number.
    """
    now = require_utc(now)
    require_positive(ttl, "ttl")
    name = _common_name(common_name, "common_name")
    public_key = key.public_key()
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(_check_serial(serial))
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + ttl)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True, ca=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    )
    return builder.sign(private_key=key, algorithm=signing_hash(key))


def issue_intermediate_ca(
    *,
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    public_key: CertificatePublicKeyTypes,
    common_name: str,
    now: datetime,
    ttl: timedelta,
    path_length: int | None = 0,
) -> x509.Certificate:
    """An intermediate CA certificate signed by ``ca_cert``/``ca_key``.

    Same extensions as :func:`build_self_signed_ca`, with ``path_length`` (default 0: it may
    only issue leaves). notAfter is capped at the issuing CA's notAfter.
    """
    now = require_utc(now)
    require_positive(ttl, "ttl")
    _check_issuer(ca_cert, ca_key, now)
    public_key = ensure_supported_public_key(public_key)
    if path_length is not None and (not isinstance(path_length, int) or path_length < 0):
        raise CryptoError("path_length must be a non-negative integer or None")
    not_before, not_after = _validity(ca_cert, now, ttl)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_common_name(common_name, "common_name"))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_key_usage(digital_signature=True, ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_aki_from(ca_cert), critical=False)
    )
    return builder.sign(private_key=ca_key, algorithm=signing_hash(ca_key))


def _validate_dns_names(dns_names: Sequence[str]) -> list[str]:
    if isinstance(dns_names, str):
        raise CryptoError("dns_names must be a sequence of names, not a single string")
    result: list[str] = []
    for name in dns_names:
        if not isinstance(name, str) or not name:
            raise CryptoError("dns_names entries must be non-empty strings")
        if len(name) > _MAX_DNS_NAME or not _DNS_NAME.fullmatch(name):
            raise CryptoError(f"dns_names entry {name[:80]!r} is not a valid DNS name")
        if name not in result:
            result.append(name)
    return result


@dataclass(frozen=True, slots=True, eq=False)
class PreparedIssuer:
    """A CA certificate and its private key, checked once, ready to sign any number of leaves.

    Building one runs every check of :func:`issue_leaf` that depends on the CA alone
    (CA:TRUE, keyCertSign when keyUsage is present, a supported key that matches the
    certificate, validity at ``now``) and computes what every leaf shares: the AKI, the
    signing hash, the CA's validity window and fingerprint. :meth:`issue_leaf` then checks
    the leaf's own inputs and the CA's validity at the time of issuance only. Build one when
    the CA is loaded, not one per certificate.
    """

    cert: x509.Certificate
    key: PrivateKey = field(repr=False)
    now: InitVar[datetime]
    fingerprint: str = field(init=False)
    """SHA-256 fingerprint of ``cert`` (:func:`~nhi.crypto.fingerprint_sha256`)."""
    not_before: datetime = field(init=False, repr=False)
    not_after: datetime = field(init=False)
    _aki: x509.AuthorityKeyIdentifier = field(init=False, repr=False)
    _hash: hashes.SHA256 | hashes.SHA384 | None = field(init=False, repr=False)

    def __post_init__(self, now: datetime) -> None:
        _check_issuer(self.cert, self.key, require_utc(now))
        # Frozen: the derived fields are set once, here.
        derived = {
            "_hash": signing_hash(self.key),
            "_aki": _aki_from(self.cert),
            "fingerprint": fingerprint_sha256(self.cert),
            "not_before": self.cert.not_valid_before_utc,
            "not_after": self.cert.not_valid_after_utc,
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)

    def issue_leaf(
        self,
        *,
        public_key: CertificatePublicKeyTypes,
        spiffe_id: str | None,
        dns_names: Sequence[str],
        now: datetime,
        ttl: timedelta,
        subject_cn: str | None = None,
    ) -> x509.Certificate:
        """A leaf certificate signed by this CA, with the profile described in :func:`issue_leaf`.

        Raises :class:`CryptoError` when the CA is not valid at ``now`` or an input is invalid.
        """
        now = require_utc(now)
        require_positive(ttl, "ttl")
        _check_issuer_validity(self.cert, self.not_before, self.not_after, now)
        public_key = ensure_supported_public_key(public_key)
        sans: list[x509.GeneralName] = []
        if spiffe_id is not None:
            sans.append(x509.UniformResourceIdentifier(validate_spiffe_id(spiffe_id)))
        sans.extend(x509.DNSName(n) for n in _validate_dns_names(dns_names))
        subject = _EMPTY_NAME if subject_cn is None else _common_name(subject_cn, "subject_cn")
        if not sans and subject_cn is None:
            raise CryptoError("a leaf certificate needs a SPIFFE ID, a DNS name or a subject_cn")
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(max(now - CLOCK_SKEW, self.not_before))
            .not_valid_after(min(now + ttl, self.not_after))
        )
        if sans:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(sans), critical=subject_cn is None
            )
        key_usage = (
            _LEAF_KEY_USAGE_RSA if isinstance(public_key, rsa.RSAPublicKey) else _LEAF_KEY_USAGE
        )
        builder = (
            builder.add_extension(_LEAF_BASIC_CONSTRAINTS, critical=True)
            .add_extension(key_usage, critical=True)
            .add_extension(_LEAF_EXTENDED_KEY_USAGE, critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(self._aki, critical=False)
        )
        return builder.sign(private_key=self.key, algorithm=self._hash)


def issue_leaf(
    *,
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    public_key: CertificatePublicKeyTypes,
    spiffe_id: str | None,
    dns_names: Sequence[str],
    now: datetime,
    ttl: timedelta,
    subject_cn: str | None = None,
) -> x509.Certificate:
    """A leaf certificate (an X.509-SVID when ``spiffe_id`` is given) signed by the CA.

    - random positive serial (``x509.random_serial_number()``);
    - subjectAltName: the SPIFFE ID as URI (first), then the DNS names; critical when the
      subject is empty (``subject_cn`` is None), as RFC 5280 and the X.509-SVID spec require;
    - basicConstraints CA:FALSE (critical); keyUsage digitalSignature, plus keyEncipherment
      for RSA keys (critical); extendedKeyUsage serverAuth + clientAuth; SKI; AKI from the CA;
    - valid from ``now - 1 minute`` (not before the CA) to ``now + ttl`` capped at the CA's
      notAfter; signed with :func:`signing_hash` of the CA key.

    Checks the CA and its key on every call; to sign many leaves with one CA, build a
    :class:`PreparedIssuer` once and use its :meth:`~PreparedIssuer.issue_leaf`.
    """
    now = require_utc(now)
    require_positive(ttl, "ttl")
    return PreparedIssuer(ca_cert, ca_key, now).issue_leaf(
        public_key=public_key,
        spiffe_id=spiffe_id,
        dns_names=dns_names,
        now=now,
        ttl=ttl,
        subject_cn=subject_cn,
    )


# ------------------------------------------------------------------------------ verification


def verify_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    root: x509.Certificate,
    now: datetime,
) -> None:
    """Raise :class:`CryptoError` unless ``leaf`` chains to the trust anchor ``root`` at ``now``.

    ``intermediates`` are ordered from the leaf's issuer upwards. Checked for every link:
    issuer name and signature (``verify_directly_issued_by``), validity at ``now`` of every
    certificate including ``root``, CA:TRUE and (when present) keyCertSign on every issuer,
    and issuer path length constraints.

    This is implemented by hand rather than with ``cryptography.x509.verification``: that
    verifier enforces the CA/Browser Forum Web PKI profile, which forbids Ed25519 keys and so
    cannot check every certificate this operator issues.
    """
    now = require_utc(now)
    chain = [leaf, *intermediates, root]
    for cert in chain:
        if now < cert.not_valid_before_utc:
            raise CryptoError(
                f"certificate {_describe(cert)} is not valid before "
                f"{rfc3339(cert.not_valid_before_utc)}"
            )
        if now > cert.not_valid_after_utc:
            raise CryptoError(
                f"certificate {_describe(cert)} expired at {rfc3339(cert.not_valid_after_utc)}"
            )
    for depth, (child, issuer) in enumerate(itertools.pairwise(chain)):
        bc = _basic_constraints(issuer)
        if bc is None or not bc.ca:
            raise CryptoError(f"issuer {_describe(issuer)} is not a CA certificate")
        ku = _key_usage_of(issuer)
        if ku is not None and not ku.key_cert_sign:
            raise CryptoError(f"issuer {_describe(issuer)} lacks the keyCertSign key usage")
        # ``depth`` CA certificates sit between this issuer and the leaf.
        if bc.path_length is not None and depth > bc.path_length:
            raise CryptoError(
                f"issuer {_describe(issuer)} path length constraint {bc.path_length} exceeded"
            )
        try:
            child.verify_directly_issued_by(issuer)
        except InvalidSignature:
            raise CryptoError(
                f"signature of {_describe(child)} does not verify with the key of "
                f"{_describe(issuer)}"
            ) from None
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise CryptoError(
                f"certificate {_describe(child)} was not issued by {_describe(issuer)}"
            ) from None


# ---------------------------------------------------------------------------------- summary


def _san(cert: x509.Certificate) -> x509.SubjectAlternativeName | None:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None


def spiffe_id_of(cert: x509.Certificate) -> str | None:
    """The first ``spiffe://`` URI SAN of ``cert``, if any."""
    san = _san(cert)
    if san is None:
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith("spiffe://"):
            return uri
    return None


def dns_names_of(cert: x509.Certificate) -> list[str]:
    """The DNS SANs of ``cert``, in order."""
    san = _san(cert)
    return [] if san is None else san.get_values_for_type(x509.DNSName)


def cert_summary(cert: x509.Certificate) -> dict[str, str]:
    """Non-secret facts about a certificate, as shown by ``nhi inspect``.

    Keys: subject, issuer, serial (colon hex), notBefore, notAfter (RFC 3339 ``Z``), spiffeId,
    dnsNames (comma-separated), keyAlgorithm, fingerprint (``sha256:<hex>`` of the DER).
    """
    try:
        algorithm = key_algorithm_of(cert.public_key()).value
    except (CryptoError, UnsupportedAlgorithm):
        algorithm = "unsupported"
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": serial_hex(cert),
        "notBefore": rfc3339(cert.not_valid_before_utc),
        "notAfter": rfc3339(cert.not_valid_after_utc),
        "spiffeId": spiffe_id_of(cert) or "",
        "dnsNames": ",".join(dns_names_of(cert)),
        "keyAlgorithm": algorithm,
        "fingerprint": fingerprint_sha256(cert),
    }

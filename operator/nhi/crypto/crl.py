"""Certificate revocation lists: building, PEM, reading, and signature-checked revocation lookup."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeAlias

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from nhi.crypto.certs import MAX_SERIAL
from nhi.crypto.errors import CryptoError, require_positive, require_utc
from nhi.crypto.keys import (
    PrivateKey,
    ensure_supported_public_key,
    same_public_key,
    signing_hash,
)

CertificateRevocationList: TypeAlias = x509.CertificateRevocationList
"""A parsed CRL, named for the rooms above without importing cryptography."""


@dataclass(frozen=True, slots=True)
class RevokedSerial:
    """One revoked certificate: its serial, when it was revoked and (optionally) why."""

    serial: int
    revoked_at: datetime
    reason: x509.ReasonFlags | None = None


def build_crl(
    *,
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    revoked: Sequence[RevokedSerial],
    now: datetime,
    next_update: timedelta,
    crl_number: int,
) -> x509.CertificateRevocationList:
    """A CRL issued by ``ca_cert`` at ``now``, next update due at ``now + next_update``.

    Carries the CRLNumber and AuthorityKeyIdentifier extensions; entries are sorted by
    serial, and a serial listed twice keeps its earliest revocation. Signed with
    :func:`signing_hash` of the CA key.
    """
    now = require_utc(now)
    require_positive(next_update, "next_update")
    if not isinstance(crl_number, int) or isinstance(crl_number, bool) or crl_number < 0:
        raise CryptoError("crl_number must be a non-negative integer")
    if not same_public_key(ca_key, ca_cert.public_key()):
        raise CryptoError("CA private key does not match the CA certificate")
    ski = _subject_key_identifier(ca_cert)
    entries = _earliest_revocations(revoked)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now)
        .next_update(now + next_update)
        .add_extension(x509.CRLNumber(crl_number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    )
    for serial in sorted(entries):
        builder = builder.add_revoked_certificate(_revoked_certificate(entries[serial]))
    return builder.sign(private_key=ca_key, algorithm=signing_hash(ca_key))


def _subject_key_identifier(ca_cert: x509.Certificate) -> x509.SubjectKeyIdentifier:
    """The CA's SubjectKeyIdentifier, computed from its public key when it carries none."""
    try:
        return ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(ca_cert.public_key())


def _earliest_revocations(revoked: Sequence[RevokedSerial]) -> dict[int, RevokedSerial]:
    """Serial -> its entry, checked; a serial listed twice keeps its earliest revocation."""
    entries: dict[int, RevokedSerial] = {}
    for item in revoked:
        if not isinstance(item, RevokedSerial):
            raise CryptoError("revoked entries must be RevokedSerial values")
        if (
            not isinstance(item.serial, int)
            or isinstance(item.serial, bool)
            or not 0 <= item.serial <= MAX_SERIAL
        ):
            raise CryptoError("revoked serial must be a non-negative integer of at most 159 bits")
        revoked_at = require_utc(item.revoked_at, "revoked_at")
        current = entries.get(item.serial)
        if current is None or revoked_at < current.revoked_at:
            entries[item.serial] = RevokedSerial(item.serial, revoked_at, item.reason)
    return entries


def _revoked_certificate(entry: RevokedSerial) -> x509.RevokedCertificate:
    builder = (
        x509.RevokedCertificateBuilder()
        .serial_number(entry.serial)
        .revocation_date(entry.revoked_at)
    )
    if entry.reason is not None:
        builder = builder.add_extension(x509.CRLReason(entry.reason), critical=False)
    return builder.build()


def crl_pem(crl: x509.CertificateRevocationList) -> bytes:
    """PEM encoding of a CRL."""
    return crl.public_bytes(serialization.Encoding.PEM)


def load_crl(pem: bytes | str) -> x509.CertificateRevocationList:
    """Parse a PEM CRL (signature not checked; see :func:`verify_crl`)."""
    data = pem.encode("utf-8", "replace") if isinstance(pem, str) else pem
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CryptoError("CRL PEM must be bytes or str")
    try:
        return x509.load_pem_x509_crl(bytes(data))
    except (ValueError, UnsupportedAlgorithm):
        raise CryptoError("invalid CRL PEM") from None


def crl_entries(crl: x509.CertificateRevocationList) -> list[RevokedSerial]:
    """The entries of a CRL as :class:`RevokedSerial` values (reason kept)."""
    out = []
    for revoked in crl:
        reason: x509.ReasonFlags | None = None
        try:
            reason = revoked.extensions.get_extension_for_class(x509.CRLReason).value.reason
        except x509.ExtensionNotFound:
            reason = None
        out.append(RevokedSerial(revoked.serial_number, revoked.revocation_date_utc, reason))
    return out


def crl_number(crl: x509.CertificateRevocationList) -> int:
    """The CRLNumber extension of a CRL (0 without one)."""
    try:
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        return 0


def verify_crl(crl: x509.CertificateRevocationList, ca_cert: x509.Certificate) -> None:
    """Raise :class:`CryptoError` unless ``crl`` was issued and signed by ``ca_cert``."""
    if crl.issuer != ca_cert.subject:
        raise CryptoError(
            f"CRL issuer {crl.issuer.rfc4514_string()!r} is not the CA "
            f"{ca_cert.subject.rfc4514_string()!r}"
        )
    try:
        valid = crl.is_signature_valid(ensure_supported_public_key(ca_cert.public_key()))
    except (TypeError, ValueError, UnsupportedAlgorithm):
        valid = False
    if not valid:
        raise CryptoError("CRL signature does not verify with the CA certificate's key")


def is_revoked(crl_pem: bytes | str, ca_cert: x509.Certificate, serial: int) -> bool:
    """True if ``serial`` is listed in the PEM CRL, after checking the CRL's CA signature.

    Raises :class:`CryptoError` if the CRL cannot be parsed or was not signed by ``ca_cert``.
    Freshness (nextUpdate) is the caller's concern, as this function takes no ``now``.
    """
    crl = load_crl(crl_pem)
    verify_crl(crl, ca_cert)
    return crl.get_revoked_certificate_by_serial_number(serial) is not None

"""A TLS Secret's certificate reduced to its metadata, parsed once; the PEM is not kept."""

from __future__ import annotations

import base64
import binascii

from nhi.crypto.certs import load_cert_chain
from nhi.crypto.errors import CryptoError
from nhi.crypto.identifiers import serial_hex
from nhi.models.inventory import CertificateMeta

#: A tls.crt larger than this is not parsed (a chain is a few KB).
MAX_PEM_BYTES = 1 << 20


def certificate_metadata(pem: bytes | str) -> CertificateMeta:
    """The first certificate of a PEM chain as :class:`CertificateMeta`; CryptoError (its
    message names no byte of the input) when there is none."""
    if len(pem) > MAX_PEM_BYTES:
        raise CryptoError("certificate PEM is larger than 1 MiB")
    cert = load_cert_chain(pem)[0]
    return CertificateMeta(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        serial=serial_hex(cert),
    )


def tls_secret_certificate(data: object) -> tuple[CertificateMeta | None, str]:
    """A TLS Secret's ``data`` (base64 values, as the API serves them): its certificate's
    metadata, or None and why there is none (a reason safe to report)."""
    if not isinstance(data, dict):
        return None, "the Secret has no data"
    encoded = data.get("tls.crt")
    if not isinstance(encoded, str) or not encoded:
        return None, "the Secret holds no tls.crt"
    if len(encoded) > MAX_PEM_BYTES * 2:
        return None, "tls.crt is larger than 1 MiB"
    try:
        pem = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None, "tls.crt is not base64"
    try:
        return certificate_metadata(pem), ""
    except CryptoError:
        return None, "tls.crt holds no parseable PEM certificate"

"""Non-secret identifiers: serial numbers, fingerprints of certificates, keys and secrets.

Everything returned here is safe to put in a resource status, a log line or an event.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from nhi.crypto.errors import CryptoError
from nhi.crypto.keys import KeyLike, public_key_der

_SECRET_FINGERPRINT_DOMAIN = b"nhi-secret-fingerprint:"
_HEX_SERIAL = re.compile(r"[0-9a-f]{1,2}(?::[0-9a-f]{1,2})*|[0-9a-f]+")
_MAX_SERIAL_HEX_LEN = 256


def serial_hex(cert_or_serial: x509.Certificate | int) -> str:
    """Colon-separated lowercase hex of a serial number, e.g. ``"5f:3a:07"``.

    Uses the minimal number of octets (``0`` is ``"00"``), the form shown in API status.
    """
    if isinstance(cert_or_serial, x509.Certificate):
        serial = cert_or_serial.serial_number
    elif isinstance(cert_or_serial, int) and not isinstance(cert_or_serial, bool):
        serial = cert_or_serial
    else:
        raise CryptoError("serial must be an int or a certificate")
    if serial < 0:
        raise CryptoError("serial must not be negative")
    raw = serial.to_bytes(max(1, (serial.bit_length() + 7) // 8), "big")
    return ":".join(f"{b:02x}" for b in raw)


def parse_serial_hex(value: str) -> int:
    """Inverse of :func:`serial_hex`.

    Accepts colon-separated octets (``"5f:3a"``) or plain hex (``"5f3a"``), any case, with
    surrounding whitespace; raises :class:`CryptoError` otherwise.
    """
    if not isinstance(value, str):
        raise CryptoError("serial must be a hex string")
    text = value.strip().lower()
    if len(text) > _MAX_SERIAL_HEX_LEN or not _HEX_SERIAL.fullmatch(text):
        raise CryptoError(
            "serial must be hex octets separated by colons (e.g. '5f:3a:07') or plain hex"
        )
    return int(text.replace(":", ""), 16)


def fingerprint_sha256(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint of the DER certificate: ``"sha256:<64 lowercase hex>"``."""
    return "sha256:" + cert.fingerprint(hashes.SHA256()).hex()


def public_key_fingerprint(key: KeyLike | x509.Certificate) -> str:
    """SHA-256 over the DER SubjectPublicKeyInfo: ``"sha256:<64 lowercase hex>"``.

    Accepts a private key (its public half is used), a public key or a certificate; a
    certificate and its private key have the same fingerprint.
    """
    public = key.public_key() if isinstance(key, x509.Certificate) else key
    return "sha256:" + hashlib.sha256(public_key_der(public)).hexdigest()


#: The most characters of a JWT ID kept (the API server's are UUIDs).
_MAX_JTI = 128
_JTI = re.compile(r"[A-Za-z0-9._:-]+")


def token_credential_id(token: str) -> str:
    """The credential ID the API server gives a ServiceAccount token in its audit events,
    ``JTI=<jti>``, read from the token's (unverified) claims; "" when it has none. The ID
    names the token without revealing it: it is in every audit event the token is used for.
    Nothing of the token is ever part of an error."""
    parts = token.split(".")
    if len(parts) != 3:
        return ""
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload.encode("ascii")))
    except (ValueError, UnicodeError, binascii.Error):
        return ""
    jti = claims.get("jti") if isinstance(claims, dict) else None
    if not isinstance(jti, str) or len(jti) > _MAX_JTI or not _JTI.fullmatch(jti):
        return ""
    return f"JTI={jti}"


def secret_fingerprint(value: bytes | str) -> str:
    """A short identifier of a static secret value: ``"sha256:<16 lowercase hex>"``.

    Computed as the first 64 bits of ``SHA-256(b"nhi-secret-fingerprint:" + value)``; a
    ``str`` is encoded as UTF-8 first. It lets status, events and audit logs say *which*
    value is current (and whether it changed) without exposing it: the hash cannot be
    inverted, and the truncation leaves many preimages for every fingerprint.

    It identifies, it does not protect: anyone who can guess a low-entropy value can confirm
    the guess against the fingerprint, so only use it for generated secrets (see
    :func:`nhi.crypto.generate_secret`) or treat it as sensitive otherwise. Never use it as a
    password hash or as key material.
    """
    if isinstance(value, str):
        data = value.encode("utf-8")
    elif isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
    else:
        raise CryptoError("secret value must be bytes or str")
    digest = hashlib.sha256(_SECRET_FINGERPRINT_DOMAIN + data).hexdigest()
    return "sha256:" + digest[:16]

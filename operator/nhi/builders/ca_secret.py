"""CA Secrets: reading and validating the CA material an issuer signs with.

A ``ca`` issuer's Secret holds the CA certificate (and maybe intermediates) under ``tls.crt``,
its key under ``tls.key`` and optionally the chain and root(s) under ``ca.crt``; a
self-signed issuer's root Secret is checked by the same rules. Nothing here does I/O; error
messages name the Secret and the rule, never any key material.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nhi.crypto import (
    Certificate,
    CryptoError,
    PrivateKey,
    key_algorithm_of,
    load_cert_chain,
    load_private_key,
    rfc3339,
    still_valid,
)
from nhi.crypto.ca_checks import describe, is_ca, issued_by, may_sign_certs_and_crls, self_signed
from nhi.crypto.keys import same_public_key
from nhi.models.issuer import IssuerReason

TLS_CRT = "tls.crt"
TLS_KEY = "tls.key"
CA_CRT = "ca.crt"


class CAProblem(Exception):
    """CA material cannot be used: ``reason`` is an :class:`IssuerReason` constant."""

    def __init__(self, reason: str, message: str, cert: Certificate | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.cert = cert  # the CA certificate, when it was readable (for status)


def secret_bytes(secret: Mapping[str, Any], key: str) -> bytes | None:
    """The decoded value of ``key`` in a Secret's data, or None when absent or not base64."""
    raw = (secret.get("data") or {}).get(key)
    if not isinstance(raw, str) or not raw:
        return None
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return None


@dataclass(frozen=True)
class CAMaterial:
    """A usable CA: the signing certificate and key, intermediates up to the roots, roots."""

    cert: Certificate
    key: PrivateKey
    chain: tuple[Certificate, ...]
    roots: tuple[Certificate, ...]


def secret_name(secret: Mapping[str, Any]) -> str:
    meta = secret.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def check_ca(cert: Certificate, key: PrivateKey, where: str, field: str = "tls.crt") -> None:
    """The rules every signing CA must meet; CAProblem names the Secret and the rule."""
    if not is_ca(cert):
        raise CAProblem(
            IssuerReason.CA_SECRET_INVALID,
            f"Secret {where}: {field} {describe(cert)} is not a CA certificate "
            f"(basicConstraints CA:TRUE is required)",
        )
    if not may_sign_certs_and_crls(cert):
        raise CAProblem(
            IssuerReason.CA_SECRET_INVALID,
            f"Secret {where}: {field} {describe(cert)} must allow the keyCertSign and cRLSign "
            f"key usages",
        )
    try:
        key_algorithm_of(cert.public_key())
    except (CryptoError, ValueError) as err:
        raise CAProblem(IssuerReason.CA_SECRET_INVALID, f"Secret {where}: {field}: {err}") from None
    if not same_public_key(key, cert.public_key()):
        raise CAProblem(
            IssuerReason.CA_SECRET_INVALID,
            f"Secret {where}: tls.key does not match the public key of {field} {describe(cert)}",
        )


def check_validity(cert: Certificate, where: str, now: dt.datetime) -> None:
    """CAProblem unless ``cert`` is valid at ``now``."""
    if now >= cert.not_valid_after_utc:
        raise CAProblem(
            IssuerReason.CA_EXPIRED,
            f"Secret {where}: tls.crt {describe(cert)} expired at "
            f"{rfc3339(cert.not_valid_after_utc)}; put a valid CA in the Secret",
            cert,
        )
    if now < cert.not_valid_before_utc:
        raise CAProblem(
            IssuerReason.CA_NOT_YET_VALID,
            f"Secret {where}: tls.crt {describe(cert)} is not valid before "
            f"{rfc3339(cert.not_valid_before_utc)}",
            cert,
        )


def load_ca_secret(
    secret: Mapping[str, Any] | None, namespace: str, name: str, now: dt.datetime
) -> CAMaterial:
    """Validate the CA Secret of a ``ca`` source and return its material.

    tls.crt holds the CA certificate first, optionally followed by its intermediates; tls.key
    its private key; the optional ca.crt the chain and/or the root(s). The roots of the trust
    bundle are the self-signed certificates found; without any, the top of the chain is the
    trust anchor.
    """
    where = f"{namespace}/{name}"
    if secret is None:
        raise CAProblem(
            IssuerReason.CA_SECRET_NOT_FOUND,
            f"Secret {where} (spec.ca.secretName) was not found; create it with the CA "
            f"certificate under tls.crt and its private key under tls.key",
        )
    cert, key, extra, explicit_roots = _read_ca_secret(secret, where)
    check_ca(cert, key, where)
    check_validity(cert, where, now)

    pool = [c for c in still_valid(extra, now) if c != cert]
    chain, top = _walk_up(cert, pool)
    roots = [c for c in pool if self_signed(c)]
    if self_signed(cert):
        roots.insert(0, cert)
    if explicit_roots and not self_signed(top) and roots:
        raise CAProblem(
            IssuerReason.CA_SECRET_INVALID,
            f"Secret {where}: no certificate in tls.crt or ca.crt issued "
            f"{describe(top)}; ca.crt must hold the chain up to the root",
        )
    anchors = still_valid(roots, now) or (top,)
    return CAMaterial(cert=cert, key=key, chain=tuple(chain), roots=anchors)


def _read_ca_secret(
    secret: Mapping[str, Any], where: str
) -> tuple[Certificate, PrivateKey, list[Certificate], bool]:
    """(the CA certificate, its key, the other certificates, whether ca.crt was given)."""
    cert_data, key_data = secret_bytes(secret, TLS_CRT), secret_bytes(secret, TLS_KEY)
    missing = [k for k, v in ((TLS_CRT, cert_data), (TLS_KEY, key_data)) if v is None]
    if missing or cert_data is None or key_data is None:
        raise CAProblem(
            IssuerReason.CA_SECRET_INVALID,
            f"Secret {where}: {' and '.join(missing)} missing or empty; a CA Secret needs the "
            f"CA certificate under tls.crt and its private key under tls.key",
        )
    try:
        certs = load_cert_chain(cert_data)
    except CryptoError:
        raise CAProblem(
            IssuerReason.CA_SECRET_INVALID, f"Secret {where}: tls.crt is not a PEM certificate"
        ) from None
    try:
        key = load_private_key(key_data)
    except CryptoError as err:
        raise CAProblem(IssuerReason.CA_SECRET_INVALID, f"Secret {where}: tls.key: {err}") from None
    extra: list[Certificate] = list(certs[1:])
    ca_data = secret_bytes(secret, CA_CRT)
    explicit_roots = False
    if ca_data:
        try:
            extra.extend(load_cert_chain(ca_data))
            explicit_roots = True
        except CryptoError:
            raise CAProblem(
                IssuerReason.CA_SECRET_INVALID,
                f"Secret {where}: ca.crt is not a PEM certificate bundle",
            ) from None
    return certs[0], key, extra, explicit_roots


def _walk_up(cert: Certificate, pool: list[Certificate]) -> tuple[list[Certificate], Certificate]:
    """Walk up from the CA through ``pool`` to a self-signed root, if any: (the
    intermediates, the top reached)."""
    chain: list[Certificate] = []
    top = cert
    while not self_signed(top):
        parent = next((c for c in pool if c not in chain and issued_by(top, c)), None)
        if parent is None:
            break
        if self_signed(parent):
            top = parent
            break
        chain.append(parent)
        top = parent
    return chain, top

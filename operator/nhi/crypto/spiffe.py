"""SPIFFE ID construction and validation (SPIFFE-ID spec, section 2)."""

from __future__ import annotations

import re

from nhi.crypto.errors import CryptoError

SPIFFE_SCHEME = "spiffe"
MAX_TRUST_DOMAIN_LENGTH = 255
MAX_SPIFFE_ID_LENGTH = 2048

_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_PATH_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_WELL_FORMED_ID = re.compile(
    rf"{SPIFFE_SCHEME}://[a-z0-9._-]{{1,{MAX_TRUST_DOMAIN_LENGTH}}}"
    r"(?:/(?!\.\.?(?:/|$))[A-Za-z0-9._-]+)*"
)
"""Sufficient for :func:`validate_spiffe_id`: one match accepts the common, valid case."""


def validate_trust_domain(trust_domain: str) -> str:
    """Return ``trust_domain`` if it is a valid SPIFFE trust domain name."""
    if not isinstance(trust_domain, str) or not trust_domain:
        raise CryptoError("trust domain must be a non-empty string")
    if len(trust_domain) > MAX_TRUST_DOMAIN_LENGTH:
        raise CryptoError(f"trust domain must be at most {MAX_TRUST_DOMAIN_LENGTH} characters")
    if not _TRUST_DOMAIN.fullmatch(trust_domain):
        raise CryptoError(
            f"trust domain {trust_domain[:64]!r} must contain only lowercase letters, digits, "
            "dots, dashes and underscores"
        )
    return trust_domain


def _validate_segment(segment: str, what: str) -> str:
    if not isinstance(segment, str) or not segment:
        raise CryptoError(f"{what} must be a non-empty SPIFFE path segment")
    if segment in {".", ".."}:
        raise CryptoError(f"{what} must not be '.' or '..' (SPIFFE path segment rule)")
    if not _PATH_SEGMENT.fullmatch(segment):
        raise CryptoError(
            f"{what} {segment[:64]!r} must contain only letters, digits, dots, dashes and "
            "underscores (SPIFFE path segment rule)"
        )
    return segment


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    """``spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>``, validated."""
    validate_trust_domain(trust_domain)
    _validate_segment(namespace, "namespace")
    _validate_segment(service_account, "service account")
    result = f"{SPIFFE_SCHEME}://{trust_domain}/ns/{namespace}/sa/{service_account}"
    if len(result.encode("utf-8")) > MAX_SPIFFE_ID_LENGTH:
        raise CryptoError(f"SPIFFE ID must be at most {MAX_SPIFFE_ID_LENGTH} bytes")
    return result


def validate_spiffe_id(value: str) -> str:
    """Return ``value`` if it is a valid SPIFFE ID (any path), else raise CryptoError."""
    if (
        isinstance(value, str)
        and len(value) <= MAX_SPIFFE_ID_LENGTH  # ASCII when it matches: chars are bytes
        and _WELL_FORMED_ID.fullmatch(value)
    ):
        return value
    if not isinstance(value, str) or not value:
        raise CryptoError("SPIFFE ID must be a non-empty string")
    if len(value.encode("utf-8")) > MAX_SPIFFE_ID_LENGTH:
        raise CryptoError(f"SPIFFE ID must be at most {MAX_SPIFFE_ID_LENGTH} bytes")
    prefix = f"{SPIFFE_SCHEME}://"
    if not value.startswith(prefix):
        raise CryptoError("SPIFFE ID must start with 'spiffe://'")
    if "?" in value or "#" in value:
        raise CryptoError("SPIFFE ID must not contain a query or fragment")
    rest = value[len(prefix) :]
    trust_domain, _, path = rest.partition("/")
    validate_trust_domain(trust_domain)
    if path:
        for segment in path.split("/"):
            _validate_segment(segment, "SPIFFE ID path segment")
    return value


def trust_domain_of(value: str) -> str:
    """The trust domain of a valid SPIFFE ID."""
    validate_spiffe_id(value)
    return value[len(SPIFFE_SCHEME) + 3 :].partition("/")[0]

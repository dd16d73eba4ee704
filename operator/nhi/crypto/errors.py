"""Errors and small argument checks shared by the crypto layer.

Messages built here never contain key material, tokens or secret values: only field names,
rules and non-secret identifiers (subjects, serials, algorithm names).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

_ZERO = timedelta(0)


class CryptoError(ValueError):
    """A cryptographic operation failed or an input was invalid.

    The message is safe to log and to surface in a resource status: it never includes the
    bytes of a key, certificate request, token or secret that was passed in.
    """


def require_utc(value: datetime, field: str = "now") -> datetime:
    """Return ``value`` converted to UTC; reject naive datetimes."""
    if not isinstance(value, datetime):
        raise CryptoError(f"{field} must be a datetime")
    if value.tzinfo is None or value.utcoffset() is None:
        raise CryptoError(f"{field} must be timezone-aware (UTC)")
    return value.astimezone(UTC)


def require_positive(value: timedelta, field: str) -> timedelta:
    """Reject a non-positive or non-timedelta duration."""
    if not isinstance(value, timedelta):
        raise CryptoError(f"{field} must be a timedelta")
    if value <= _ZERO:
        raise CryptoError(f"{field} must be positive")
    return value

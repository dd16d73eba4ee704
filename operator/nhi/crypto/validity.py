"""Time queries over a set of certificates: which are still valid, the earliest bounds.

Every function takes the certificates and, where it matters, ``now``; none reads the clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from cryptography import x509

from nhi.crypto.identifiers import fingerprint_sha256


def still_valid(certs: Iterable[x509.Certificate], now: datetime) -> tuple[x509.Certificate, ...]:
    """The certificates not yet expired at ``now``, without duplicates, in order."""
    seen: set[str] = set()
    out: list[x509.Certificate] = []
    for cert in certs:
        fp = fingerprint_sha256(cert)
        if fp in seen or now >= cert.not_valid_after_utc:
            continue
        seen.add(fp)
        out.append(cert)
    return tuple(out)


def next_expiry(certs: Iterable[x509.Certificate]) -> datetime | None:
    """The earliest notAfter among ``certs``."""
    times = [c.not_valid_after_utc for c in certs]
    return min(times) if times else None


def trusted_since(certs: Iterable[x509.Certificate]) -> datetime:
    """The earliest notBefore of ``certs`` (a CA and the trust anchors)."""
    return min(c.not_valid_before_utc for c in certs)

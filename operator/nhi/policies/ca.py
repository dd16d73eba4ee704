"""When an issuer's CA material and CRL must change: pure rules that take ``now``.

A self-signed root is replaced when less than a third of its lifetime is left; the roots it
replaced stay in the trust bundle until they expire. A CRL is signed again when it is missing,
was signed by another CA, has another validity, has less than a third of its validity left,
lists other serials than it should, or lacks the operator's provenance tag. An issuer is
looked at again at the first of those times, and at least every resync interval.

Nothing here does I/O or reads the clock; messages name rules and fields, never key material.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from nhi.crypto import (
    Certificate,
    CertificateRevocationList,
    CryptoError,
    RevokedSerial,
    crl_entries,
    crl_number,
    key_algorithm_of,
    still_valid,
    trusted_since,
    verify_crl,
)
from nhi.models.duration import rfc3339
from nhi.models.issuer import SelfSignedSource

ROTATE_WHEN_LEFT = 1 / 3
"""A self-signed root is replaced when less than this fraction of its lifetime is left."""

RESIGN_WHEN_LEFT = 1 / 3
"""A CRL is re-signed when less than this fraction of its validity is left."""

OVERDUE_MARGIN = 0.05
"""Seconds added to a due time, so the look that follows finds the action due."""

RootAction = Literal["create", "rotate", "prune"]


class Root(Protocol):
    """A self-signed issuer's root and the previous roots kept for trust."""

    @property
    def cert(self) -> Certificate: ...

    @property
    def previous(self) -> tuple[Certificate, ...]: ...


# -------------------------------------------------------------------------- root rotation


def rotation_at(cert: Certificate) -> dt.datetime:
    """When a root should be replaced: a third of its lifetime before it expires."""
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_after_utc - lifetime * ROTATE_WHEN_LEFT


def needs_rotation(cert: Certificate, now: dt.datetime) -> bool:
    """True when less than a third of the root's lifetime is left (or it has expired)."""
    return now >= rotation_at(cert)


def root_action(root: Root | None, now: dt.datetime) -> RootAction | None:
    """What a self-signed root needs, in order: None when nothing.

    ``create`` (no usable root), ``rotate`` (less than a third of its life left),
    ``prune`` (a previous root expired and leaves the bundle).
    """
    if root is None:
        return "create"
    if needs_rotation(root.cert, now):
        return "rotate"
    if still_valid(root.previous, now) != root.previous:
        return "prune"
    return None


def root_due(root: Root) -> dt.datetime:
    """The next time a root needs an action: its rotation, or a previous root expiring."""
    return min([rotation_at(root.cert), *(c.not_valid_after_utc for c in root.previous)])


def restorable(remembered: Root | None, now: dt.datetime) -> bool:
    """A root lost from its Secret is put back while it is valid (what it signed stays
    trusted)."""
    return remembered is not None and now < remembered.cert.not_valid_after_utc


def pending_root_changes(source: SelfSignedSource, cert: Certificate) -> str:
    """Spec changes that apply at the next rotation ("" when none): the root is not replaced
    early because ``spec.selfSigned`` changed."""
    pending = []
    try:
        alg = key_algorithm_of(cert.public_key()).value
    except CryptoError:
        alg = "unsupported"
    if alg != source.key_algorithm:
        pending.append(f"keyAlgorithm {alg} -> {source.key_algorithm}")
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    # build_self_signed_ca back-dates notBefore by one minute.
    if abs(lifetime - source.ttl - dt.timedelta(minutes=1)) > dt.timedelta(seconds=1):
        pending.append("ttl")
    if not pending:
        return ""
    return (
        f"spec.selfSigned changes ({', '.join(pending)}) apply at the next rotation, at "
        f"{rfc3339(rotation_at(cert))}"
    )


# ------------------------------------------------------------------------------------ CRL


def merge_revoked(
    existing: Iterable[RevokedSerial], new: Iterable[RevokedSerial]
) -> tuple[list[RevokedSerial], int]:
    """Union by serial (the earliest revocation wins), sorted; and how many serials are new."""
    entries: dict[int, RevokedSerial] = {}
    for item in existing:
        current = entries.get(item.serial)
        if current is None or item.revoked_at < current.revoked_at:
            entries[item.serial] = item
    added = 0
    for item in new:
        current = entries.get(item.serial)
        if current is None:
            added += 1
        if current is None or item.revoked_at < current.revoked_at:
            entries[item.serial] = item
    return [entries[s] for s in sorted(entries)], added


def prune_revoked(entries: Iterable[RevokedSerial], since: dt.datetime) -> list[RevokedSerial]:
    """Drop entries revoked before ``since``.

    ``since`` is the earliest notBefore of the CAs still trusted: a certificate revoked
    before it was issued by a CA that has expired since, so it cannot be valid any more.
    """
    return [e for e in entries if e.revoked_at >= since]


def crl_resign_at(crl: CertificateRevocationList, validity: dt.timedelta) -> dt.datetime:
    """When the CRL should be re-signed: a third of its validity before nextUpdate."""
    next_update = crl.next_update_utc
    if next_update is None:
        return crl.last_update_utc
    return next_update - validity * RESIGN_WHEN_LEFT


def crl_resign_reason(
    crl: CertificateRevocationList | None,
    ca_cert: Certificate,
    now: dt.datetime,
    validity: dt.timedelta,
) -> str | None:
    """Why the published CRL must be signed again, or None when it is current."""
    if crl is None:
        return "missing"
    if crl.issuer != ca_cert.subject or not _crl_signed_by(crl, ca_cert):
        return "issuer changed"
    next_update = crl.next_update_utc
    if next_update is None or next_update - crl.last_update_utc != validity:
        return "validity changed"
    if now >= crl_resign_at(crl, validity):
        return "due"
    return None


def _crl_signed_by(crl: CertificateRevocationList, ca_cert: Certificate) -> bool:
    try:
        verify_crl(crl, ca_cert)
    except CryptoError:
        return False
    return True


@dataclass(frozen=True)
class CrlPlan:
    """What the CRL lists, and whether (and why) it is signed again."""

    entries: list[RevokedSerial]
    added: list[RevokedSerial]  # serials listed now that were not before
    number: int  # the CRL number it carries: one more than before when it is signed again
    why: str | None  # None: the published CRL stays as it is


def plan_crl(
    published: CertificateRevocationList | None,
    remembered: tuple[int, Sequence[RevokedSerial]] | None,
    new: Sequence[RevokedSerial],
    *,
    ca_cert: Certificate,
    anchors: Sequence[Certificate],
    validity: dt.timedelta,
    tagged: bool,
    now: dt.datetime,
) -> CrlPlan:
    """The next CRL of an issuer.

    ``published``: the CRL found in its ConfigMap (None when absent or unreadable);
    ``remembered``: the number and entries this process published last. Entries only ever
    add revocations, so their union is safe even if the ConfigMap was edited or lost; entries
    older than every trusted CA (``ca_cert`` and ``anchors``) are dropped. ``tagged``: the
    ConfigMap carries the operator's provenance tag.
    """
    old_entries = crl_entries(published) if published is not None else []
    if remembered is not None:
        old_entries, _ = merge_revoked(old_entries, remembered[1])
    kept = prune_revoked(old_entries, trusted_since([ca_cert, *anchors]))
    entries, _ = merge_revoked(kept, new)
    listed = {e.serial for e in kept}
    added = [e for e in entries if e.serial not in listed]
    why = crl_resign_reason(published, ca_cert, now, validity)
    if (
        published is not None
        and why is None
        and {e.serial for e in crl_entries(published)} != {e.serial for e in entries}
    ):
        why = "entries changed"
    number = max(
        crl_number(published) if published is not None else 0,
        remembered[0] if remembered is not None else 0,
    )
    if why is None and not tagged:
        why = "provenance"  # created by an earlier version, or tagging it failed
    if why is not None:
        number += 1
    return CrlPlan(entries=entries, added=added, number=number, why=why)


# ------------------------------------------------------------------------------ next look


def next_look(
    *,
    ready: bool,
    retry: bool,
    due: dt.datetime | None,
    now: dt.datetime,
    resync: float,
    retry_interval: float,
) -> dt.datetime | None:
    """When to look at an issuer again after a reconcile; None: only when something changes.

    An issuer that waits for something outside its spec is looked at every
    ``retry_interval`` seconds. A Ready one at its next due action (a rotation, a CRL
    re-sign, an expiry) or after ``resync`` seconds, whichever is first; a due time already
    past is returned as it is (the caller backs off rather than spinning).
    """
    if retry:
        return now + dt.timedelta(seconds=retry_interval)
    if not ready:
        return None
    delay = resync
    if due is not None:
        left = (due - now).total_seconds()
        if left <= 0:
            return due
        delay = min(delay, left + OVERDUE_MARGIN)
    return now + dt.timedelta(seconds=delay)

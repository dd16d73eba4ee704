"""When to issue a credential: pure decisions from what is stored and the clock.

Everything the decision needs is read from the credential Secret's annotations (never its
data), so the operator's schedule after a restart is exactly what it was before: nothing that
is still valid is issued again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json

from nhi.models.identity import Credential, Spec
from nhi.models.issued import Issued

#: Jitter is at most this share of the renewal window, and never more than MAX_JITTER.
JITTER_SHARE = 0.05
MAX_JITTER = dt.timedelta(minutes=5)

#: No credential is issued again sooner than this after its last issuance, whatever the
#: spec says (``renewBeforeFraction: 0.99`` on a certificate whose notBefore is back-dated
#: would put its renewal before its issuance), ...
MIN_REISSUE_INTERVAL = dt.timedelta(minutes=1)
#: ... or than this share of what was left of its validity when it was issued, when that is
#: shorter (a certificate capped by a CA that expires soon): it is renewed before it expires.
MIN_REISSUE_SHARE = 0.5
#: Renewal is planned at least this long before notAfter (or half the time left, if less).
RENEWAL_MARGIN = dt.timedelta(seconds=1)
_RESOLUTION = dt.timedelta(microseconds=1)

# Reasons to issue, in the order they are checked.
SECRET_MISSING = "SecretMissing"  # noqa: S105 - a reason, not a secret
SPEC_CHANGED = "SpecChanged"
EXPIRED = "Expired"
ISSUER_CHANGED = "IssuerChanged"
RENEW_REQUESTED = "RenewRequested"
RENEWAL_DUE = "RenewalDue"


def spec_hash(cred: Credential, service_account: str) -> str:
    """A digest of everything in the spec that shapes an issued value."""
    shape = {
        "type": cred.type,
        "ttl": cred.ttl.total_seconds(),
        "audiences": list(cred.audiences),
        "issuer": f"{cred.issuer_ref.kind}/{cred.issuer_ref.name}" if cred.issuer_ref else "",
        "keyAlgorithm": cred.key_algorithm if cred.type == "X509" else "",
        "dnsNames": list(cred.dns_names),
        "generator": [cred.generator.length, cred.generator.charset] if cred.generator else [],
        "serviceAccount": service_account,
    }
    if cred.kv is not None:
        # Only when set: the digests of credentials kept in Secrets alone stay as they were.
        shape["kv"] = [cred.kv.mount, cred.kv.path]
        if cred.kv.vault_only:
            shape["store"] = cred.kv.store
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]


def jitter(seed: str, window: dt.timedelta) -> dt.timedelta:
    """A stable pseudo-random offset in [0, min(5% of window, 5 min)) for ``seed``."""
    cap = min(window * JITTER_SHARE, MAX_JITTER)
    if cap <= dt.timedelta(0):
        return dt.timedelta(0)
    frac = int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big") / 2**64
    return cap * frac


def min_reissue_interval(issued_at: dt.datetime, not_after: dt.datetime) -> dt.timedelta:
    """The shortest time between issuing a value at ``issued_at`` and issuing the next.

    :data:`MIN_REISSUE_INTERVAL`, or :data:`MIN_REISSUE_SHARE` of the validity left at
    issuance when that is shorter; never negative.
    """
    left = not_after - issued_at
    if left <= dt.timedelta(0):
        return dt.timedelta(0)
    return min(MIN_REISSUE_INTERVAL, left * MIN_REISSUE_SHARE)


def renewal_time(
    spec: Spec,
    not_before: dt.datetime,
    not_after: dt.datetime,
    seed: str,
    issued_at: dt.datetime | None = None,
) -> dt.datetime:
    """When to renew a value valid from ``not_before`` to ``not_after``, issued at
    ``issued_at`` (default: ``not_before``).

    ``renewBefore`` renews that long before expiry; otherwise ``renewBeforeFraction`` of the
    actual lifetime before expiry. A stable jitter spreads identities created together.
    Whatever the spec says, the result is at least :func:`min_reissue_interval` after
    issuance and before ``not_after`` (when the value was valid at issuance at all).
    """
    issued_at = not_before if issued_at is None else issued_at
    lifetime = not_after - not_before
    if spec.renew_before is not None:
        before = min(spec.renew_before, lifetime * 0.99)
    else:
        before = lifetime * (spec.renew_before_fraction or 0.33)
    base = not_after - before
    planned = base - jitter(seed, base - not_before)
    earliest = issued_at + min_reissue_interval(issued_at, not_after)
    if not_after <= earliest:
        return earliest  # issued already expired: nothing to plan before notAfter
    margin = max(min(RENEWAL_MARGIN, (not_after - earliest) / 2), _RESOLUTION)
    return min(max(planned, earliest), not_after - margin)


def held_until(issued: Issued, reason: str, now: dt.datetime) -> dt.datetime | None:
    """Until when issuing for ``reason`` must wait; None when it may issue now.

    A value is not replaced sooner than :func:`min_reissue_interval` after its issuance,
    whether the stored renewal time says otherwise (annotations of an older version, a
    clock that jumped) or the issuer changed again. A changed spec, a renew request and a
    missing Secret are acted on at once (each is someone's edit, and answered once), and so
    is an expired value (it is always later than that interval).
    """
    if reason in (SECRET_MISSING, SPEC_CHANGED, RENEW_REQUESTED, EXPIRED):
        return None
    earliest = issued.issued_at + min_reissue_interval(issued.issued_at, issued.not_after)
    return earliest if now < earliest else None


def reason_to_issue(
    cred: Credential,
    issued: Issued | None,
    *,
    current_spec_hash: str,
    now: dt.datetime,
    renew_request: str | None = None,
    ca_fingerprint: str | None = None,
) -> str | None:
    """The first reason to issue a new value, or None when the stored one is fine."""
    if issued is None:
        return SECRET_MISSING
    if issued.spec_hash != current_spec_hash:
        return SPEC_CHANGED
    if now >= issued.not_after:
        return EXPIRED
    if ca_fingerprint and issued.ca_fingerprint and issued.ca_fingerprint != ca_fingerprint:
        return ISSUER_CHANGED
    if renew_request and renew_request != issued.renew_handled:
        # Each distinct value of the annotation renews once, whatever time it names.
        return RENEW_REQUESTED
    if now >= issued.renewal_time:
        return RENEWAL_DUE
    return None


def next_due(issued: Issued, now: dt.datetime) -> dt.datetime:
    """The next moment this credential needs attention (renewal or end of an overlap).

    Never before the value may be issued again (see :func:`held_until`).
    """
    due = max(
        issued.renewal_time,
        issued.issued_at + min_reissue_interval(issued.issued_at, issued.not_after),
    )
    if issued.previous_not_after is not None and issued.previous_not_after > now:
        due = min(due, issued.previous_not_after)
    return due

"""Whether an identity must be revoked (or may live again): a pure function of state.

Revocation is derived from what is observed now and what the status recorded, never from a
single event: if the operator was down while the last workload was deleted, the first
reconcile after it starts sees "no workload, had one" and revokes after the grace period.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nhi.models.duration import parse_time_or_none
from nhi.models.identity import Spec
from nhi.models.meta import Phase

WORKLOAD_DELETED = "WorkloadDeleted"
EXPIRED = "Expired"
MANUAL = "Manual"
IDENTITY_DELETED = "IdentityDeleted"

REVOKED_PHASES = Phase.SETTLED


@dataclass(frozen=True)
class Decision:
    #: Why the identity must be (or stay) revoked; None: it must be active.
    reason: str | None
    expires_at: dt.datetime | None
    first_seen_at: dt.datetime | None
    gone_since: dt.datetime | None
    #: When the answer may change without any event (grace period or JIT window end).
    next_check: dt.datetime | None

    @property
    def phase(self) -> str:
        return Phase.EXPIRED if self.reason == EXPIRED else Phase.REVOKED


def decide_revocation(
    spec: Spec,
    *,
    manual: bool,
    created: dt.datetime | None,
    status: Mapping[str, Any],
    workload_count: int,
    now: dt.datetime,
) -> Decision:
    workloads = status.get("workloads") or {}
    expires_at = created + spec.valid_for if created and spec.valid_for else None
    first_seen = parse_time_or_none(workloads.get("firstSeenAt"))
    if workload_count > 0 and first_seen is None:
        first_seen = now
    gone_since: dt.datetime | None = None
    if workload_count == 0 and first_seen is not None:
        gone_since = parse_time_or_none(workloads.get("goneSince")) or now

    next_check: dt.datetime | None = None
    reason: str | None = None
    if manual:
        reason = MANUAL
    elif expires_at is not None and now >= expires_at:
        reason = EXPIRED
    elif gone_since is not None and spec.on_workload_deletion == "Revoke":
        revoke_at = gone_since + spec.grace_period
        if now >= revoke_at:
            reason = WORKLOAD_DELETED
        else:
            next_check = revoke_at
    if reason is None and expires_at is not None and expires_at > now:
        next_check = min(next_check, expires_at) if next_check else expires_at
    return Decision(reason, expires_at, first_seen, gone_since, next_check)

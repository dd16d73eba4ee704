"""The pure core of the MachineIdentity reconciler: what to do, decided from what was observed.

``IdentityReconciler`` (nhi.reconcilers.identity) gathers, calls these, applies and writes the
status; nothing here makes a request or reads a clock.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nhi import API_VERSION
from nhi.builders.rbac import (
    ChildKey,
    adoption_snapshot,
    child_key,
    desired_access,
    differs,
)
from nhi.models import conditions as cond
from nhi.models.duration import parse_time, rfc3339
from nhi.models.identity import MachineIdentity
from nhi.models.meta import (
    ADOPT_ANNOTATION,
    ADOPTED_FROM_ANNOTATION,
    REVOKE_ANNOTATION,
    Phase,
    Reason,
)
from nhi.models.policy import IdentityPolicy
from nhi.models.workload import Workload
from nhi.policies import identity_policy as ip
from nhi.policies.cluster import check_cluster_permissions
from nhi.policies.ownership import Claim, controller_ref, describe_owner, owned_by
from nhi.policies.revocation import Decision, decide_revocation
from nhi.reconcilers.credentials import CredentialResult

#: A condition beside the kstatus ones: True when undeclared workloads use the identity.
UNDECLARED_USERS = "UndeclaredUsers"


@dataclass(frozen=True)
class Observed:
    identity: MachineIdentity
    #: The objects the identity owns (by the controller ownerReference's UID).
    children: Mapping[ChildKey, Mapping[str, Any]]
    #: A ServiceAccount of the identity's name that it does not own.
    foreign_service_account: Mapping[str, Any] | None
    policies: Sequence[IdentityPolicy]
    namespace_labels: Mapping[str, str]


@dataclass(frozen=True)
class Plan:
    """What to do. ``blocked`` holds (reason, message) when nothing may be applied."""

    apply: tuple[dict[str, Any], ...] = ()
    delete: tuple[ChildKey, ...] = ()
    blocked: tuple[str, str] | None = None
    #: Violations of Warn-enforcement policies: applied, but reported.
    warnings: tuple[str, ...] = ()
    #: A ServiceAccount the identity adopts (it may: nhi.dev/adopt and the policies allow it).
    adopt: Mapping[str, Any] | None = None


@dataclass
class Outcome:
    ready: bool
    reason: str
    message: str
    stalled: bool = False
    changes: list[str] = field(default_factory=list)
    credentials: CredentialResult | None = None
    #: Not ready on purpose (revoked or expired): nothing is pending, nothing failed.
    settled: bool = False
    phase: str | None = None
    #: Further status fields (workloads, revocation) to write as they are.
    extra: dict[str, Any] = field(default_factory=dict)
    #: When to look again even if nothing changes (grace period end, JIT window end).
    next_check: dt.datetime | None = None
    #: Workloads running as the ServiceAccount without being matched by the selector.
    undeclared: list[str] | None = None
    #: Objects the spec points at that the identity does not own (left untouched).
    conflicts: list[Claim] = field(default_factory=list)

    @property
    def next_due(self) -> dt.datetime | None:
        due = [t for t in (self.next_check, self.credentials and self.credentials.next_due) if t]
        return min(due) if due else None


def owned_children(
    children: Mapping[ChildKey, Mapping[str, Any]], uid: str, namespace: str, name: str
) -> dict[ChildKey, Mapping[str, Any]]:
    """The objects labelled as the identity's that it really owns: labels prove nothing."""
    return {k: v for k, v in children.items() if owned_by(v, uid, namespace=namespace, name=name)}


def adopting(identity: MachineIdentity) -> bool:
    return identity.annotations.get(ADOPT_ANNOTATION) == "true"


def service_account_conflict(
    identity: MachineIdentity,
    sa: Mapping[str, Any] | None,
    policies: Sequence[IdentityPolicy] = (),
    namespace_labels: Mapping[str, str] | None = None,
) -> tuple[str, str] | None:
    """Why an existing ServiceAccount the identity does not own may not be taken over:
    (reason, message), or None when there is none or the identity may adopt it."""
    if sa is None:
        return None
    name = identity.spec.service_account
    field = "spec.serviceAccount.name"
    if not adopting(identity):
        return (
            Reason.SERVICE_ACCOUNT_CONFLICT,
            f"{field}: ServiceAccount {name!r} already exists and {describe_owner(sa)}; set "
            f'the annotation {ADOPT_ANNOTATION}: "true" to adopt it (whoever sets it must be '
            "allowed to update and delete that ServiceAccount)",
        )
    if controller_ref(sa) is not None:
        return (
            Reason.OWNERSHIP_CONFLICT,
            f"{field}: ServiceAccount {name!r} cannot be adopted: {describe_owner(sa)}",
        )
    why = ip.check_adoption(name, policies, namespace_labels or {})
    if why is not None:
        return (Reason.ADOPTION_NOT_ALLOWED, why)
    return None


def decide(observed: Observed) -> Plan:
    """Pure: the children to apply and delete, or why nothing may be done."""
    identity = observed.identity
    foreign = observed.foreign_service_account
    conflict = service_account_conflict(
        identity, foreign, observed.policies, observed.namespace_labels
    )
    if conflict:
        return Plan(blocked=conflict)
    verdict = check_cluster_permissions(identity.spec, observed.policies, observed.namespace_labels)
    if not verdict.allowed:
        return Plan(blocked=(verdict.reason, verdict.message))
    violations = ip.evaluate(identity, observed.policies, observed.namespace_labels)
    denied = ip.denials(violations)
    if denied:
        return Plan(blocked=(Reason.POLICY_VIOLATION, ip.summary(denied)))
    sa_key = ChildKey("ServiceAccount", identity.namespace, identity.spec.service_account)
    own_sa = observed.children.get(sa_key)
    adopted_from = (
        adoption_snapshot(foreign)
        if foreign is not None
        else ((own_sa or {}).get("metadata") or {})
        .get("annotations", {})
        .get(ADOPTED_FROM_ANNOTATION)
    )
    desired = desired_access(identity, adopted_from=adopted_from)
    wanted = {child_key(o) for o in desired}
    # Credential Secrets are written by the credential manager; only orphans are removed here
    # (a credential kept in Vault only has none: the Secret of its Both days goes).
    wanted |= {
        ChildKey("Secret", identity.namespace, c.secret_name)
        for c in identity.spec.credentials
        if c.kv is None or not c.kv.vault_only
    }
    apply = tuple(o for o in desired if differs(o, _as_dict(observed.children.get(child_key(o)))))
    delete = tuple(sorted(k for k in observed.children if k not in wanted))
    return Plan(
        apply=apply,
        delete=delete,
        warnings=tuple(v.message for v in ip.warnings(violations)),
        adopt=foreign,
    )


def _as_dict(obj: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return dict(obj) if obj is not None else None


def compute_status(identity: MachineIdentity, outcome: Outcome, now: dt.datetime) -> dict[str, Any]:
    """Pure: the status an outcome leads to, keeping transition times that did not change."""
    old: Mapping[str, Any] = identity.status
    conds: Sequence[Mapping[str, Any]] = old.get("conditions") or []
    gen = identity.generation
    conds = cond.kstatus_conditions(
        conds,
        ready=outcome.ready,
        stalled=outcome.stalled,
        settled=outcome.settled,
        reason=outcome.reason,
        message=outcome.message,
        generation=gen,
        now=now,
    )
    phase = outcome.phase or old.get("phase") or Phase.PENDING
    if outcome.ready and phase == Phase.PENDING:
        phase = Phase.ACTIVE
    status: dict[str, Any] = {
        "observedGeneration": gen,
        "phase": phase,
        "serviceAccount": identity.spec.service_account,
        "conditions": conds,
    }
    if outcome.undeclared is not None:
        conds = cond.set_condition(
            conds,
            UNDECLARED_USERS,
            cond.TRUE if outcome.undeclared else cond.FALSE,
            "UndeclaredWorkload" if outcome.undeclared else "AllUsersDeclared",
            (
                f"{', '.join(outcome.undeclared)} run as the ServiceAccount but are not "
                "matched by spec.workloads.selector"
            )
            if outcome.undeclared
            else "every workload using the ServiceAccount is declared",
            gen,
            now,
        )
        status["conditions"] = conds
    status.update(outcome.extra)
    creds = outcome.credentials
    if creds is not None:
        status["credentials"] = creds.statuses
        status["nextRenewalTime"] = (
            min(c["renewalTime"] for c in creds.statuses) if creds.statuses else None
        )
    return status


@dataclass(frozen=True)
class Assessment:
    """The identity's workloads and whether it must be revoked, as of ``now``."""

    decision: Decision
    matched: list[str]
    undeclared: list[str]
    #: ``status.workloads`` and ``status.expiresAt`` as they follow from it.
    extra: dict[str, Any]
    #: Undeclared workloads that the stored status did not list yet (worth an Event).
    newly_undeclared: bool


def assess(
    identity: MachineIdentity, workloads: Sequence[Workload], now: dt.datetime
) -> Assessment:
    """Pure: which workloads use the identity, and what the revocation rules say of it."""
    selector = identity.spec.selector
    matched = sorted(w.ref for w in workloads if w.matched_by(selector))
    undeclared = sorted(
        w.ref
        for w in workloads
        if w.service_account == identity.spec.service_account and not w.matched_by(selector)
    )
    decision = decide_revocation(
        identity.spec,
        manual=identity.annotations.get(REVOKE_ANNOTATION) == "true",
        created=created(identity),
        status=identity.status,
        workload_count=len(matched),
        now=now,
    )
    workloads_status: dict[str, Any] = {"count": len(matched), "names": matched}
    if decision.first_seen_at:
        workloads_status["firstSeenAt"] = rfc3339(decision.first_seen_at)
    if decision.gone_since:
        workloads_status["goneSince"] = rfc3339(decision.gone_since)
    if undeclared:
        workloads_status["undeclared"] = undeclared
    known = list((identity.status.get("workloads") or {}).get("undeclared") or [])
    return Assessment(
        decision=decision,
        matched=matched,
        undeclared=undeclared,
        extra={
            "workloads": workloads_status,
            "expiresAt": rfc3339(decision.expires_at) if decision.expires_at else None,
        },
        newly_undeclared=bool(undeclared) and undeclared != known,
    )


def rollout_window(
    pending: tuple[dt.datetime, list[str]] | None,
    rotated: Sequence[str],
    now: dt.datetime,
    debounce: dt.timedelta,
) -> tuple[tuple[dt.datetime, list[str]] | None, list[str] | None]:
    """Debounce rollouts: credentials that rotate within ``debounce`` cause one.

    Returns the pending rollout to keep (due time, credentials) and, when one is due now,
    the credentials to name in it."""
    if rotated:
        due, names = pending or (now + debounce, [])
        pending = (due, sorted({*names, *rotated}))
    if pending is not None and now >= pending[0]:
        return None, pending[1]
    return pending, None


def created(identity: MachineIdentity) -> dt.datetime | None:
    return parse_time(identity.creation_timestamp) if identity.creation_timestamp else None


def same_reason(status: Mapping[str, Any], outcome: Outcome) -> bool:
    """True when the stored Ready condition already says what the outcome says."""
    ready = cond.get_condition(status.get("conditions") or [], cond.READY)
    return bool(
        ready and ready.get("reason") == outcome.reason and ready.get("message") == outcome.message
    )


def event_ref(identity: MachineIdentity) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "MachineIdentity",
        "metadata": {"namespace": identity.namespace, "name": identity.name, "uid": identity.uid},
    }

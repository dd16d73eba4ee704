"""AccessGrant decisions: what a grant may ask for, who approved it, and where it stands now.

Pure: (the grant, what was observed, the policies, ``now``) -> a verdict. The window is
derived from the grant's recorded status (``activatedAt``), so a restart in the middle of it
changes nothing: the grant expires when it would have.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from nhi.models.duration import rfc3339
from nhi.models.grant import APPROVED, DENIED, AccessGrant, GrantPhase, GrantReason
from nhi.models.identity import PolicyRule
from nhi.models.policy import IdentityPolicy
from nhi.models.usage import Access, Seen
from nhi.policies.access import AccessCheck, bind_checks, rule_checks
from nhi.policies.identity_policy import (
    forbidden_overlap,
    is_wildcard,
    resource_name,
    selecting,
    short_duration,
    wildcard_findings,
)
from nhi.policies.usage import rule_allows

#: How long an ended grant is kept as the record before the operator deletes it.
DEFAULT_RETENTION = dt.timedelta(hours=24)


# ------------------------------------------------------------------------------ policies


def violations(
    grant: AccessGrant, policies: Iterable[IdentityPolicy], namespace_labels: Mapping[str, str]
) -> list[str]:
    """Every reason a policy selecting the grant's namespace refuses it (each names the
    grant's field and the policy's rule). Policies in Warn mode refuse nothing."""
    out: list[str] = []
    for policy in selecting(policies, namespace_labels):
        if policy.enforcement != "Deny":
            continue
        limit = policy.grants.max_duration
        if limit is not None and grant.duration > limit:
            out.append(
                f"spec.duration: {short_duration(grant.duration)} is longer than IdentityPolicy "
                f"{policy.name}'s grants.maxDuration ({short_duration(limit)})"
            )
        findings = _rule_findings(grant, policy)
        out += [f"{field}: {m} (IdentityPolicy {policy.name})" for field, m in findings]
    return out


def _rule_findings(grant: AccessGrant, policy: IdentityPolicy) -> Iterable[tuple[str, str]]:
    if policy.forbid_wildcards:
        yield from wildcard_findings("spec.rules", grant.rules)
    for i, rule in enumerate(grant.rules):
        for j, forbidden in enumerate(policy.forbidden_rules):
            hit = forbidden_overlap(rule, forbidden)
            if hit is not None:
                group, resource, verb = hit
                yield (
                    f"spec.rules[{i}]",
                    f"asks for {verb} on {resource_name(group, resource)}, which forbiddenRules"
                    f"[{j}] forbids ({forbidden.describe()})",
                )
    for i, ref in enumerate(grant.role_refs):
        if ref.kind == "ClusterRole" and ref.name not in policy.allowed_cluster_roles:
            yield (
                f"spec.roleRefs[{i}]",
                f"binds ClusterRole {ref.name!r}, which allowedClusterRoles does not list",
            )


def auto_approver(
    grant: AccessGrant, policies: Iterable[IdentityPolicy], namespace_labels: Mapping[str, str]
) -> str | None:
    """``IdentityPolicy/<name>`` of the first selecting policy whose ``grants.autoApprove``
    covers the grant: only its rules (no roleRefs), only its verbs, at most its duration."""
    if grant.role_refs:
        return None
    for policy in selecting(policies, namespace_labels):
        auto = policy.grants.auto_approve
        if auto is None or grant.duration > auto.max_duration:
            continue
        if all(_within_verbs(rule, auto.verbs) for rule in grant.rules):
            return f"IdentityPolicy/{policy.name}"
    return None


def _within_verbs(rule: PolicyRule, verbs: tuple[str, ...]) -> bool:
    return all(v in verbs and not is_wildcard(v) for v in rule.verbs) and not any(
        is_wildcard(x) for x in (*rule.api_groups, *rule.resources)
    )


def requester_checks(grant: AccessGrant) -> list[AccessCheck]:
    """What the requester must hold to ask for the grant's rules (as for an identity)."""
    checks: list[AccessCheck] = []
    for i, rule in enumerate(grant.rules):
        checks += rule_checks(
            f"spec.rules[{i}]",
            rule.api_groups,
            rule.resources,
            rule.verbs,
            grant.namespace,
            rule.resource_names,
        )
    checks += bind_checks("spec.roleRefs", grant.role_refs, grant.namespace)
    return checks


#: The most requests ``status.usedFor`` lists.
MAX_USED_FOR = 20


def used_for(
    grant: AccessGrant,
    entries: Mapping[Access, Seen],
    since: dt.datetime,
    until: dt.datetime,
) -> list[str]:
    """What the grant was used for: the identity's requests, seen during its window, that its
    rules allow (``count x verb resource[/name] in namespace``), the most frequent first."""
    start, end = since.timestamp(), until.timestamp()
    used = [
        (seen.count, access)
        for access, seen in entries.items()
        if seen.last >= start
        and seen.first <= end
        and access.namespace in ("", grant.namespace)
        and any(rule_allows(rule, access) for rule in grant.rules)
    ]
    used.sort(key=lambda item: (-item[0], item[1]))
    out = []
    for count, a in used[:MAX_USED_FOR]:
        what = a.rbac_resource + (f".{a.api_group}" if a.api_group else "")
        what += f"/{a.name}" if a.name else ""
        where = f" in {a.namespace}" if a.namespace else " cluster-wide"
        out.append(f"{count} x {a.verb} {what}{where}")
    return out


# ------------------------------------------------------------------------------ lifecycle


@dataclass(frozen=True)
class Observed:
    """What the reconcile found, besides the grant."""

    #: The identity's ServiceAccount; None when the MachineIdentity does not exist.
    service_account: str | None
    #: Why the grant cannot be active (policy violations, missing authority), if anything.
    refusals: tuple[str, ...] = ()
    refusal_reason: str = GrantReason.POLICY_VIOLATION
    #: ``IdentityPolicy/<name>`` when a policy approves the grant without a person.
    auto_approver: str | None = None
    #: When the grant's Role was created, if it exists (a window begun before a crash).
    granted_since: dt.datetime | None = None


@dataclass(frozen=True)
class Verdict:
    phase: str
    reason: str
    message: str
    #: The Role and RoleBindings must exist (True) or be gone (False).
    grant_access: bool
    approved_by: str = ""
    approved_at: dt.datetime | None = None
    activated_at: dt.datetime | None = None
    expires_at: dt.datetime | None = None
    ended_at: dt.datetime | None = None
    #: Stalled: only a change of the grant, the identity or a policy can move it on.
    stalled: bool = False
    #: When to look again (the start, the expiry, the end of the record's retention).
    next_look: dt.datetime | None = None
    #: The record's retention is over: delete the grant.
    delete: bool = False


def decide(
    grant: AccessGrant,
    observed: Observed,
    now: dt.datetime,
    retention: dt.timedelta = DEFAULT_RETENTION,
) -> Verdict:
    """Where the grant stands at ``now``, and what must exist for it."""
    st = grant.status
    if st.phase in GrantPhase.ENDED:
        return _ended(grant, st.phase, st.ended_at or now, now, retention)
    if grant.revoked:
        return _ended(grant, GrantPhase.REVOKED, now, now, retention)
    if grant.approval is not None and grant.approval.decision == DENIED:
        return _ended(grant, GrantPhase.DENIED, now, now, retention)
    if observed.service_account is None:
        return _waiting(
            GrantReason.IDENTITY_NOT_FOUND,
            f"spec.identityRef: MachineIdentity {grant.namespace}/{grant.identity} does not exist",
            stalled=True,
        )
    if observed.refusals:
        return _waiting(observed.refusal_reason, "; ".join(observed.refusals), stalled=True)
    approved_by = ""
    if grant.approval is not None and grant.approval.decision == APPROVED:
        approved_by = grant.approval.approver or "an approver"
    elif observed.auto_approver is not None:
        approved_by = observed.auto_approver
    if not approved_by:
        if st.phase in (GrantPhase.ACTIVE, GrantPhase.APPROVED) or st.activated_at is not None:
            return _waiting(
                GrantReason.WITHDRAWN,
                "the approval was withdrawn (the grant's terms changed): it needs a new one",
            )
        return _waiting(
            GrantReason.AWAITING_APPROVAL,
            f"waiting for approval by someone other than {grant.requester or 'the requester'} "
            f"(nhi grant approve {grant.name} -n {grant.namespace})",
        )
    return _approved(grant, observed, approved_by, now, retention)


def _approved(
    grant: AccessGrant,
    observed: Observed,
    approved_by: str,
    now: dt.datetime,
    retention: dt.timedelta,
) -> Verdict:
    """An approved grant: scheduled, active or expired. Its window opens at the start its
    status records (or its Role's creation), else at ``startAt``, else now."""
    st = grant.status
    approved_at = st.approved_at if st.approved_by == approved_by and st.approved_at else now
    start = st.activated_at or observed.granted_since
    if start is None and grant.start_at is not None and grant.start_at > now:
        return Verdict(
            GrantPhase.APPROVED,
            GrantReason.SCHEDULED,
            f"approved by {approved_by}; starts at {rfc3339(grant.start_at)}",
            grant_access=False,
            approved_by=approved_by,
            approved_at=approved_at,
            next_look=grant.start_at,
        )
    if start is None and grant.start_at is not None:
        # Scheduled: the window opens at startAt (or at the approval, if that came later),
        # so grants scheduled together end together, however long activating them takes.
        start = max(grant.start_at, approved_at)
    # A start recorded in the future (another replica's clock) never lengthens the window.
    start = min(start or now, now)
    expires = start + grant.duration
    if now >= expires:
        return _ended(grant, GrantPhase.EXPIRED, expires, now, retention, approved_by, start)
    return Verdict(
        GrantPhase.ACTIVE,
        GrantReason.ACTIVATED,
        f"approved by {approved_by}; active until {rfc3339(expires)}",
        grant_access=True,
        approved_by=approved_by,
        approved_at=approved_at,
        activated_at=start,
        expires_at=expires,
        next_look=expires,
    )


def _waiting(reason: str, message: str, stalled: bool = False) -> Verdict:
    return Verdict(GrantPhase.PENDING, reason, message, grant_access=False, stalled=stalled)


_ENDED_REASON = {
    GrantPhase.EXPIRED: GrantReason.EXPIRED,
    GrantPhase.REVOKED: GrantReason.REVOKED,
    GrantPhase.DENIED: GrantReason.DENIED,
}


def _ended(
    grant: AccessGrant,
    phase: str,
    ended: dt.datetime,
    now: dt.datetime,
    retention: dt.timedelta,
    approved_by: str = "",
    activated: dt.datetime | None = None,
) -> Verdict:
    st = grant.status
    activated = st.activated_at or activated
    keep_until = ended + retention
    message = {
        GrantPhase.EXPIRED: f"expired at {rfc3339(ended)}",
        GrantPhase.REVOKED: f"revoked at {rfc3339(ended)}",
        GrantPhase.DENIED: "denied"
        + (f" by {grant.approval.approver}" if grant.approval and grant.approval.approver else ""),
    }[phase]
    return Verdict(
        phase,
        _ENDED_REASON[phase],
        f"{message}; the record is kept until {rfc3339(keep_until)}",
        grant_access=False,
        approved_by=st.approved_by or approved_by,
        approved_at=st.approved_at,
        activated_at=activated,
        expires_at=(activated + grant.duration) if activated else None,
        ended_at=ended,
        next_look=keep_until,
        delete=now >= keep_until,
    )

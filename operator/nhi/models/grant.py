"""The AccessGrant model: extra permissions for a MachineIdentity, for an approved window.

The CRD's schema, CEL rules and the admission policies of ``accessgrant-policy.yaml`` refuse
most bad input at admission (and record who asked and who decided); this model checks again
and names the field and the rule in every error.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nhi.models.duration import parse_time, parse_time_or_none
from nhi.models.fields import SpecError, as_duration, as_list, as_object
from nhi.models.identity import PolicyRule, RoleRef, parse_role_refs, parse_rule

KIND = "AccessGrant"
PLURAL = "accessgrants"
#: The longest grant the CRD accepts; an IdentityPolicy may set less (grants.maxDuration).
MAX_GRANT_DURATION = dt.timedelta(hours=168)
MIN_GRANT_DURATION = dt.timedelta(minutes=1)
#: The Role, RoleBindings and Events of a grant carry its name under this label.
GRANT_LABEL = "nhi.dev/grant"
#: The approval subresource and verb an approver needs (as CertificateSigningRequests have).
APPROVAL_SUBRESOURCE = "approval"
APPROVE_VERB = "approve"


class GrantPhase:
    """An AccessGrant's ``status.phase``."""

    PENDING = "Pending"
    APPROVED = "Approved"
    ACTIVE = "Active"
    EXPIRED = "Expired"
    REVOKED = "Revoked"
    DENIED = "Denied"
    #: Over: nothing is granted any more, and the grant cannot become Active again.
    ENDED = (EXPIRED, REVOKED, DENIED)


class GrantReason:
    """Condition and Event reasons of AccessGrants."""

    REQUESTED = "Requested"
    AWAITING_APPROVAL = "AwaitingApproval"
    APPROVED = "Approved"
    AUTO_APPROVED = "AutoApproved"
    DENIED = "Denied"
    SCHEDULED = "Scheduled"
    ACTIVATED = "Activated"
    EXPIRED = "Expired"
    REVOKED = "Revoked"
    WITHDRAWN = "ApprovalWithdrawn"
    INVALID_SPEC = "InvalidSpec"
    IDENTITY_NOT_FOUND = "IdentityNotFound"
    POLICY_VIOLATION = "PolicyViolation"
    ESCALATION = "PrivilegeEscalation"
    OWNERSHIP_CONFLICT = "OwnershipConflict"
    API_ERROR = "ApiError"


APPROVED = "Approved"
DENIED = "Denied"


@dataclass(frozen=True)
class Approval:
    decision: str  # Approved | Denied
    approver: str
    message: str = ""


@dataclass(frozen=True)
class GrantStatus:
    """What the operator recorded: the window is derived from it after a restart."""

    phase: str = ""
    approved_by: str = ""
    approved_at: dt.datetime | None = None
    activated_at: dt.datetime | None = None
    ended_at: dt.datetime | None = None

    @classmethod
    def from_body(cls, status: Mapping[str, Any]) -> GrantStatus:
        return cls(
            phase=str(status.get("phase") or ""),
            approved_by=str(status.get("approvedBy") or ""),
            approved_at=parse_time_or_none(status.get("approvedAt")),
            activated_at=parse_time_or_none(status.get("activatedAt")),
            ended_at=parse_time_or_none(status.get("endedAt")),
        )


@dataclass(frozen=True)
class AccessGrant:
    namespace: str
    name: str
    uid: str
    generation: int
    identity: str
    rules: tuple[PolicyRule, ...]
    role_refs: tuple[RoleRef, ...]
    duration: dt.timedelta
    reason: str
    start_at: dt.datetime | None = None
    requester: str = ""
    requester_groups: tuple[str, ...] = ()
    approval: Approval | None = None
    revoked: bool = False
    deleting: bool = False
    status: GrantStatus = field(default_factory=GrantStatus)

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> AccessGrant:
        meta = body.get("metadata") or {}
        spec = as_object(body.get("spec"), "spec")
        identity = as_object(spec.get("identityRef"), "spec.identityRef").get("name")
        if not isinstance(identity, str) or not identity:
            raise SpecError("spec.identityRef.name", "is required")
        rules = tuple(
            parse_rule(r, f"spec.rules[{i}]", namespaced=True)
            for i, r in enumerate(as_list(spec.get("rules"), "spec.rules"))
        )
        role_refs = parse_role_refs(spec.get("roleRefs"), "spec.roleRefs")
        if not rules and not role_refs:
            raise SpecError("spec.rules", "a grant must ask for at least one rule or roleRef")
        duration = as_duration(spec.get("duration"), "spec.duration")
        if not MIN_GRANT_DURATION <= duration <= MAX_GRANT_DURATION:
            raise SpecError("spec.duration", "must be between 1m and 168h (a week)")
        reason = spec.get("reason")
        if not isinstance(reason, str) or not reason.strip():
            raise SpecError("spec.reason", "must say why the grant is needed")
        start_at = None
        if spec.get("startAt") is not None:
            try:
                start_at = parse_time(spec["startAt"])
            except ValueError as err:
                raise SpecError("spec.startAt", str(err)) from None
        return cls(
            namespace=str(meta.get("namespace", "")),
            name=str(meta.get("name", "")),
            uid=str(meta.get("uid", "")),
            generation=int(meta.get("generation") or 0),
            identity=identity,
            rules=rules,
            role_refs=role_refs,
            duration=duration,
            reason=reason,
            start_at=start_at,
            requester=str(spec.get("requester") or ""),
            requester_groups=tuple(
                str(g) for g in as_list(spec.get("requesterGroups"), "spec.requesterGroups")
            ),
            approval=_approval(spec.get("approval")),
            revoked=bool(spec.get("revoked", False)),
            deleting=bool(meta.get("deletionTimestamp")),
            status=GrantStatus.from_body(body.get("status") or {}),
        )


def _approval(raw: Any) -> Approval | None:
    approval = as_object(raw, "spec.approval")
    if not approval:
        return None
    decision = approval.get("decision")
    if decision not in (APPROVED, DENIED):
        raise SpecError("spec.approval.decision", "must be Approved or Denied")
    return Approval(
        decision=str(decision),
        approver=str(approval.get("approver") or ""),
        message=str(approval.get("message") or ""),
    )

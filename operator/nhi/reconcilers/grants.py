"""AccessGrant reconcile: gather, decide (:mod:`nhi.policies.grants`), apply, status.

A grant's Role and RoleBindings exist exactly while it is Active; they are created only under
names nothing else holds and updated or deleted only when the grant's UID controls them. The
requester must hold what the grant gives (SubjectAccessReviews with the user and groups the
API server recorded at creation), checked when it activates.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from nhi import metrics
from nhi.builders.grants import build_children, differs, ref_binding_name, role_name
from nhi.k8s.client import Api, ApiError, Conflict, NotFound, path_for
from nhi.k8s.events import EventRecorder
from nhi.models.conditions import set_condition, status_changed
from nhi.models.duration import parse_time, rfc3339
from nhi.models.fields import SpecError
from nhi.models.grant import AccessGrant, GrantPhase, GrantReason
from nhi.models.identity import MachineIdentity
from nhi.models.policy import IdentityPolicy
from nhi.models.usage import UsageBook
from nhi.policies import grants as rules
from nhi.policies.access import AccessCheck, missing_by_field
from nhi.policies.ownership import controlled_by_grant, describe_owner

log = logging.getLogger("nhi.reconcilers.grants")

#: SubjectAccessReviews sent at once for one grant.
REVIEW_CONCURRENCY = 8
#: More combinations than this are refused, not reviewed.
MAX_ACCESS_CHECKS = 500

ChildKey = tuple[str, str]  # (kind, name)


@dataclass(frozen=True)
class Gathered:
    """What one reconcile of a grant reads from the watch caches."""

    body: Mapping[str, Any]
    identity: Mapping[str, Any] | None
    children: Mapping[ChildKey, Mapping[str, Any]]
    policies: Sequence[IdentityPolicy]
    namespace_labels: Mapping[str, str]


class GrantReconciler:
    def __init__(
        self,
        api: Api,
        events: EventRecorder,
        clock: Callable[[], dt.datetime],
        retention: dt.timedelta = rules.DEFAULT_RETENTION,
    ) -> None:
        self.api = api
        self.events = events
        self.clock = clock
        self.retention = retention
        #: Told every grant body this reconciler wrote (newer than the watch's, for a while).
        self.on_written: Callable[[dict[str, Any]], None] = lambda body: None
        #: The usage of a ServiceAccount (namespace, name) from audit events, when the
        #: operator ingests them (nhi.handlers.usage sets it): what a grant was used for.
        self.usage: Callable[[str, str], UsageBook | None] = lambda namespace, name: None

    async def reconcile(self, seen: Gathered) -> rules.Verdict:
        """Bring the grant's children and status to where it stands now; the verdict says
        when to look again."""
        now = self.clock()
        try:
            grant = AccessGrant.from_body(seen.body)
        except SpecError as err:
            verdict = rules.Verdict(
                GrantPhase.PENDING, GrantReason.INVALID_SPEC, str(err), False, stalled=True
            )
            await self._remove(seen, uid=str((seen.body.get("metadata") or {}).get("uid", "")))
            await self._status(seen.body, verdict, now, "")
            return verdict
        observed = self._observe(grant, seen)
        verdict = rules.decide(grant, observed, now, self.retention)
        if verdict.grant_access and not _all_present(grant, seen):
            refusals = await self.missing_authority(grant)
            if refusals:
                observed = replace(
                    observed, refusals=tuple(refusals), refusal_reason=GrantReason.ESCALATION
                )
                verdict = rules.decide(grant, observed, now, self.retention)
        if verdict.grant_access:
            conflict = await self._grant(grant, seen, observed.service_account or "")
            if conflict:
                verdict = rules.Verdict(
                    GrantPhase.PENDING,
                    GrantReason.OWNERSHIP_CONFLICT,
                    conflict,
                    grant_access=False,
                    stalled=True,
                )
        if not verdict.grant_access:
            await self._remove(seen, grant.uid)
        sa = observed.service_account if verdict.grant_access else ""
        await self._status(
            seen.body, verdict, now, sa or "", self._used_for(grant, observed, verdict, now)
        )
        if verdict.delete:
            await self.api.delete("AccessGrant", grant.namespace, grant.name, uid=grant.uid)
        return verdict

    def _observe(self, grant: AccessGrant, seen: Gathered) -> rules.Observed:
        service_account: str | None = None
        refusals: list[str] = []
        if seen.identity is not None:
            try:
                service_account = MachineIdentity.from_body(seen.identity).spec.service_account
            except SpecError as err:
                refusals.append(f"spec.identityRef: the MachineIdentity is invalid ({err})")
        refusals += rules.violations(grant, seen.policies, seen.namespace_labels)
        if not grant.requester:
            refusals.append(
                "spec.requester: empty, so nobody can be held to the request; the "
                "nhi-operator-access-grants admission policies record it (install them)"
            )
        since = [
            _created(obj)
            for obj in seen.children.values()
            if controlled_by_grant(obj, grant.uid) and _created(obj) is not None
        ]
        return rules.Observed(
            service_account=service_account,
            refusals=tuple(refusals),
            auto_approver=rules.auto_approver(grant, seen.policies, seen.namespace_labels),
            granted_since=min((s for s in since if s is not None), default=None),
        )

    def _used_for(
        self, grant: AccessGrant, observed: rules.Observed, verdict: rules.Verdict, now: dt.datetime
    ) -> list[str] | None:
        """The requests the grant allowed that its identity made in its window, when usage is
        ingested (None: no usage data, nothing is written)."""
        if verdict.activated_at is None or observed.service_account is None:
            return None
        book = self.usage(grant.namespace, observed.service_account)
        if book is None:
            return None
        until = verdict.ended_at or now
        return rules.used_for(grant, book.entries, verdict.activated_at, until)

    # ------------------------------------------------------------------ authority

    async def missing_authority(self, grant: AccessGrant) -> list[str]:
        """A message per field the requester could not have granted themselves."""
        checks = rules.requester_checks(grant)
        if len(checks) > MAX_ACCESS_CHECKS:
            return [
                f"spec.rules: {len(checks)} permission combinations are more than the "
                f"{MAX_ACCESS_CHECKS} the operator verifies; narrow the rules"
            ]
        sem = asyncio.Semaphore(REVIEW_CONCURRENCY)

        async def one(check: AccessCheck) -> bool:
            async with sem:
                return await self._allowed(grant, check)

        held = await asyncio.gather(*(one(c) for c in checks))
        missing = missing_by_field(checks, held)
        return [
            f"{field}: {grant.requester} may not grant "
            f"{', '.join(c.describe() for c in m[:5])}"
            f"{f' and {len(m) - 5} more' if len(m) > 5 else ''}: they do not hold it "
            "themselves (privilege escalation)"
            for field, m in missing.items()
        ]

    async def _allowed(self, grant: AccessGrant, check: AccessCheck) -> bool:
        spec: dict[str, Any] = {"user": grant.requester, **check.review_spec()}
        if grant.requester_groups:
            spec["groups"] = list(grant.requester_groups)
        result = await self.api.request(
            "POST",
            path_for("SubjectAccessReview"),
            body={
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview",
                "spec": spec,
            },
            kind="SubjectAccessReview",
        )
        return bool((result.get("status") or {}).get("allowed"))

    # ------------------------------------------------------------------ children

    async def _grant(self, grant: AccessGrant, seen: Gathered, service_account: str) -> str:
        """Create or correct the children; a message when a name is held by something else."""
        for desired in build_children(grant, service_account):
            kind, name = desired["kind"], desired["metadata"]["name"]
            actual = seen.children.get((kind, name))
            if actual is None:
                try:
                    await self.api.create(kind, grant.namespace, desired)
                    continue
                except Conflict:
                    actual = await self.api.get(kind, grant.namespace, name)
                    if actual is None:
                        raise
            if not controlled_by_grant(actual, grant.uid):
                return (
                    f"{kind} {grant.namespace}/{name} exists and is not this grant's "
                    f"({describe_owner(actual)}); delete or rename it"
                )
            if differs(desired, dict(actual)):
                await self.api.apply(desired)
        return ""

    async def _remove(self, seen: Gathered, uid: str) -> None:
        """Delete every child the grant controls (by UID; anything else is left alone), all at
        once: 500 grants ending in the same second must lose their permissions together."""
        namespace = str((seen.body.get("metadata") or {}).get("namespace", ""))

        async def one(kind: str, name: str, obj: Mapping[str, Any]) -> None:
            child_uid = str((obj.get("metadata") or {}).get("uid") or "") or None
            try:
                await self.api.delete(kind, namespace, name, uid=child_uid)
            except NotFound:
                pass

        await asyncio.gather(
            *(
                one(kind, name, obj)
                for (kind, name), obj in seen.children.items()
                if controlled_by_grant(obj, uid)
            )
        )

    async def remove_all(self, seen: Gathered) -> None:
        """The grant is being deleted: its children go first."""
        await self._remove(seen, str((seen.body.get("metadata") or {}).get("uid", "")))

    # ------------------------------------------------------------------ status

    async def _status(
        self,
        body: Mapping[str, Any],
        verdict: rules.Verdict,
        now: dt.datetime,
        service_account: str,
        used_for: list[str] | None = None,
    ) -> None:
        meta = body.get("metadata") or {}
        old = dict(body.get("status") or {})
        new = _status_of(old, verdict, int(meta.get("generation") or 0), now)
        new["serviceAccount"] = service_account or old.get("serviceAccount") or ""
        if used_for:
            new["usedFor"] = used_for
        ns, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        ends = verdict.expires_at.timestamp() if verdict.expires_at else None
        metrics.GRANTS.observe(ns, name, verdict.phase, ends)
        if not status_changed(old, new):
            return
        try:
            written = await self.api.patch(
                "AccessGrant", ns, name, {"status": new}, subresource="status"
            )
        except NotFound:
            metrics.GRANTS.forget(ns, name)
            return
        except ApiError as err:
            log.warning(
                "could not write an AccessGrant's status",
                extra={"namespace": ns, "grant": name, "error": str(err)},
            )
            raise
        self.on_written(written)
        await self._announce(body, old.get("phase") or "", verdict)

    async def _announce(self, body: Mapping[str, Any], was: str, verdict: rules.Verdict) -> None:
        """The audit trail: one Event (and log line) per change of phase or reason."""
        meta = body.get("metadata") or {}
        fields = {"namespace": meta.get("namespace"), "grant": meta.get("name")}
        if not was:
            spec = body.get("spec") or {}
            await self.events.normal(
                body,
                GrantReason.REQUESTED,
                f"requested by {spec.get('requester') or 'an unknown user'} for "
                f"{spec.get('duration')}: {str(spec.get('reason') or '')[:200]}",
            )
        if verdict.phase == was and not verdict.stalled:
            return
        post = self.events.warning if verdict.stalled else self.events.normal
        await post(body, verdict.reason, verdict.message)
        if verdict.phase in (GrantPhase.EXPIRED, GrantPhase.REVOKED) and was == GrantPhase.ACTIVE:
            if verdict.activated_at is not None and verdict.ended_at is not None:
                seconds = (verdict.ended_at - verdict.activated_at).total_seconds()
                metrics.grant_active_seconds.labels(str(meta.get("namespace", ""))).inc(
                    max(seconds, 0.0)
                )
        log.info(
            "access grant " + verdict.phase.lower(),
            extra={**fields, "reason": verdict.reason, "approved_by": verdict.approved_by},
        )


def _status_of(
    old: Mapping[str, Any], verdict: rules.Verdict, generation: int, now: dt.datetime
) -> dict[str, Any]:
    new: dict[str, Any] = {"phase": verdict.phase, "observedGeneration": generation}
    for key, value in (
        ("approvedBy", verdict.approved_by or None),
        ("approvedAt", verdict.approved_at),
        ("activatedAt", verdict.activated_at),
        ("expiresAt", verdict.expires_at),
        ("endedAt", verdict.ended_at),
    ):
        if value is not None:
            new[key] = rfc3339(value) if isinstance(value, dt.datetime) else value
    ready = verdict.phase == GrantPhase.ACTIVE
    conditions = set_condition(
        old.get("conditions") or [],
        "Ready",
        "True" if ready else "False",
        verdict.reason,
        verdict.message,
        generation,
        now,
    )
    conditions = set_condition(
        conditions,
        "Stalled",
        "True" if verdict.stalled else "False",
        verdict.reason if verdict.stalled else "NotStalled",
        verdict.message if verdict.stalled else "",
        generation,
        now,
    )
    new["conditions"] = conditions
    return new


def _all_present(grant: AccessGrant, seen: Gathered) -> bool:
    want = []
    if grant.rules:
        want += [("Role", role_name(grant)), ("RoleBinding", role_name(grant))]
    want += [("RoleBinding", ref_binding_name(grant, i)) for i in range(len(grant.role_refs))]
    return all(
        k in seen.children and controlled_by_grant(seen.children[k], grant.uid) for k in want
    )


def _created(obj: Mapping[str, Any]) -> dt.datetime | None:
    stamp = (obj.get("metadata") or {}).get("creationTimestamp")
    if not stamp:
        return None
    try:
        return parse_time(str(stamp))
    except ValueError:
        return None

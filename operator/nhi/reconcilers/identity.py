"""MachineIdentity reconciler: gather -> decide (pure) -> apply -> status.

Children are read from the operator's watch caches, so a reconcile that finds nothing to do
costs no API request. Writes are server-side applies; status is patched only when it changed.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from nhi import metrics
from nhi.builders.rbac import (
    ChildKey,
    adoption_snapshot,
    child_key,
    desired_access,
    differs,
    field_for,
    is_adopted,
    release_patch,
)
from nhi.crypto import parse_serial_hex
from nhi.k8s.client import Api, ApiError
from nhi.k8s.events import EventBatch, EventRecorder
from nhi.models import conditions as cond
from nhi.models.duration import parse_time, rfc3339
from nhi.models.identity import MachineIdentity, SpecError
from nhi.models.meta import (
    ADOPT_ANNOTATION,
    ADOPTED_FROM_ANNOTATION,
    CREDENTIAL_LABEL,
    RESTARTED_AT_ANNOTATION,
    REVOKE_ANNOTATION,
    Reason,
)
from nhi.models.policy import IdentityPolicy
from nhi.models.workload import Workload
from nhi.policies import identity_policy as ip
from nhi.policies.cluster import check_cluster_permissions
from nhi.policies.ownership import (
    Claim,
    OwnershipConflict,
    controller_ref,
    describe_owner,
    owned_by,
)
from nhi.policies.revocation import (
    EXPIRED,
    IDENTITY_DELETED,
    MANUAL,
    REVOKED_PHASES,
    WORKLOAD_DELETED,
    decide_revocation,
)
from nhi.policies.rotation import A_FINGERPRINT, A_ISSUER, A_SERIAL
from nhi.reconcilers.credentials import (
    CredentialManager,
    CredentialResult,
    raise_first,
    settle,
)
from nhi.reconcilers.issuers import IssuerNotReady, IssuerService
from nhi.reconcilers.owned import OwnedWriter

log = logging.getLogger("nhi.reconcilers.identity")

#: Credentials of one identity that rotate within this window cause a single rollout.
ROLLOUT_DEBOUNCE = dt.timedelta(seconds=5)

#: How often an identity blocked by an object it does not own looks again (the object may
#: have been removed or renamed meanwhile; no watch tells about every kind of object).
CONFLICT_RECHECK = dt.timedelta(seconds=60)

#: A condition beside the kstatus ones: True when undeclared workloads use the identity.
UNDECLARED_USERS = "UndeclaredUsers"

Clock = Callable[[], dt.datetime]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class ChildView(Protocol):
    """Read access to the watch caches of managed children and cluster context."""

    def children_of(self, namespace: str, name: str) -> dict[ChildKey, dict[str, Any]]: ...

    def policies(self) -> Sequence[IdentityPolicy]: ...

    def namespace_labels(self, namespace: str) -> Mapping[str, str]: ...

    def written(self, obj: Mapping[str, Any]) -> None: ...

    def deleted(self, key: ChildKey) -> None: ...

    def workloads(self, namespace: str) -> list[Workload]: ...

    def identity_written(self, obj: Mapping[str, Any]) -> None: ...

    def service_account(self, namespace: str, name: str) -> Mapping[str, Any] | None: ...


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
    # Credential Secrets are written by the credential manager; only orphans are removed here.
    wanted |= {
        ChildKey("Secret", identity.namespace, c.secret_name) for c in identity.spec.credentials
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
    phase = outcome.phase or old.get("phase") or "Pending"
    if outcome.ready and phase == "Pending":
        phase = "Active"
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


def status_changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    return any(old.get(k) != v for k, v in new.items())


class IdentityReconciler:
    def __init__(
        self,
        api: Api,
        view: ChildView,
        events: EventRecorder,
        issuers: IssuerService,
        clock: Clock = utcnow,
    ) -> None:
        self.api = api
        self.view = view
        self.events = events
        self.clock = clock
        self.issuers = issuers
        #: Rollouts waiting for the debounce window: identity -> (when, rotated credentials).
        #: Kept in memory only, so an operator restart never causes a rollout.
        self.pending_rollouts: dict[tuple[str, str], tuple[dt.datetime, list[str]]] = {}
        self.writer = OwnedWriter(api, record=view.written)
        self.credentials = CredentialManager(api, issuers, events, clock, writer=self.writer)

    # ------------------------------------------------------------------ gather

    def owned(self, identity: MachineIdentity) -> dict[ChildKey, Mapping[str, Any]]:
        children = self.view.children_of(identity.namespace, identity.name)
        return owned_children(children, identity.uid, identity.namespace, identity.name)

    async def gather(self, identity: MachineIdentity) -> Observed:
        children = self.owned(identity)
        foreign = None
        sa_name = identity.spec.service_account
        if ChildKey("ServiceAccount", identity.namespace, sa_name) not in children:
            # Not one of ours: is there a namesake we must not take over? The watch cache of
            # every ServiceAccount answers without a request.
            foreign = self.view.service_account(identity.namespace, sa_name)
            if foreign is not None and adopting(identity) and controller_ref(foreign) is None:
                # To adopt it, the whole object: its state before is kept to give it back.
                foreign = await self.api.get("ServiceAccount", identity.namespace, sa_name)
        return Observed(
            identity=identity,
            children=children,
            foreign_service_account=foreign,
            policies=self.view.policies(),
            namespace_labels=self.view.namespace_labels(identity.namespace),
        )

    # ------------------------------------------------------------------ reconcile

    async def reconcile(self, body: Mapping[str, Any]) -> Outcome:
        """Converge one identity; returns what happened (status is already written)."""
        started = self.clock()
        try:
            identity = MachineIdentity.from_body(body)
        except SpecError as err:
            outcome = Outcome(False, Reason.INVALID_SPEC, str(err), stalled=True)
            await self._write_status_raw(body, outcome)
            return outcome
        try:
            outcome = await self._converge(body, identity)
        except ApiError as err:
            if err.status in (400, 422):
                # The API server refuses what the spec makes (an object it finds malformed or
                # invalid): the same request would be refused again, so wait for a change.
                outcome = Outcome(
                    False,
                    Reason.INVALID_SPEC,
                    f"the API server refused an object made from the spec: {err}",
                    stalled=True,
                )
                await self._write_status(identity, outcome)
                return outcome
            outcome = Outcome(False, Reason.API_ERROR, str(err))
            await self._write_status(identity, outcome)
            raise
        await self._write_status(identity, outcome)
        metrics.reconcile_duration.labels("MachineIdentity").observe(
            (self.clock() - started).total_seconds()
        )
        return outcome

    async def _converge(self, body: Mapping[str, Any], identity: MachineIdentity) -> Outcome:
        now = self.clock()
        selector = identity.spec.selector
        workloads = self.view.workloads(identity.namespace)
        matched = sorted(w.ref for w in workloads if w.matched_by(selector))
        undeclared = sorted(
            w.ref
            for w in workloads
            if w.service_account == identity.spec.service_account and not w.matched_by(selector)
        )
        decision = decide_revocation(
            identity.spec,
            manual=identity.annotations.get(REVOKE_ANNOTATION) == "true",
            created=_created(identity),
            status=identity.status,
            workload_count=len(matched),
            now=now,
        )
        old_workloads = identity.status.get("workloads") or {}
        workloads_status: dict[str, Any] = {"count": len(matched), "names": matched}
        if decision.first_seen_at:
            workloads_status["firstSeenAt"] = rfc3339(decision.first_seen_at)
        if decision.gone_since:
            workloads_status["goneSince"] = rfc3339(decision.gone_since)
        if undeclared:
            workloads_status["undeclared"] = undeclared
        if undeclared and undeclared != list(old_workloads.get("undeclared") or []):
            self.events.post(
                body,
                "Warning",
                "UndeclaredWorkload",
                f"{', '.join(undeclared)} run as ServiceAccount {identity.spec.service_account} "
                "but are not matched by spec.workloads.selector",
            )
        extra: dict[str, Any] = {
            "workloads": workloads_status,
            "expiresAt": rfc3339(decision.expires_at) if decision.expires_at else None,
        }
        if decision.reason is not None:
            outcome = await self._revoke(body, identity, decision.reason, now)
        else:
            outcome = await self._provision(body, identity)
            was_revoked = identity.status.get("phase") in REVOKED_PHASES
            if outcome.ready:
                outcome.phase = "Active"
                if was_revoked:
                    extra.update(reactivatedAt=rfc3339(now), revokedAt=None, revocationReason=None)
                    self.events.post(
                        body,
                        "Normal",
                        "Reactivated",
                        f"provisioned afresh after a {identity.status.get('revocationReason')} "
                        "revocation, with new credentials",
                    )
            elif was_revoked:
                outcome.phase = "Pending"
        outcome.extra = {**extra, **outcome.extra}
        outcome.next_check = min(
            filter(None, (outcome.next_check, decision.next_check)), default=None
        )
        pending = self.pending_rollouts.get(identity.key)
        if pending is not None:
            outcome.next_check = min(filter(None, (outcome.next_check, pending[0])))
        outcome.undeclared = undeclared
        return outcome

    async def _revoke(
        self, body: Mapping[str, Any], identity: MachineIdentity, reason: str, now: dt.datetime
    ) -> Outcome:
        """Take every credential and permission away; keep the MachineIdentity as the record."""
        status = identity.status
        phase = "Expired" if reason == EXPIRED else "Revoked"
        first = status.get("phase") not in REVOKED_PHASES
        revoked_at = rfc3339(now) if first else status.get("revokedAt") or rfc3339(now)
        children = self.owned(identity)
        revoked = list(status.get("revoked") or [])
        # Tokens and bindings first: they are what an attacker could use right now.
        order = {
            "Secret": 0,
            "RoleBinding": 1,
            "ClusterRoleBinding": 1,
            "Role": 2,
            "ClusterRole": 2,
            "ServiceAccount": 3,
        }
        batch = EventBatch(self.events, body)
        try:
            for key in sorted(children, key=lambda k: (order.get(k.kind, 9), k.name)):
                obj = children[key]
                if key.kind == "Secret":
                    entry = await self._revoke_secret(identity, obj, revoked_at)
                    if entry is not None:
                        revoked.append(entry)
                verb = await self._remove_child(identity.uid, key, obj)
                if verb:
                    batch.normal("Revoked", f"{verb.lower()} {key} ({reason})")
            if first:
                metrics.revocations.labels(reason).inc()
                batch.warning(
                    phase, f"identity revoked ({reason}): credentials and permissions removed"
                )
                log.info(
                    "revoked identity",
                    extra={
                        "namespace": identity.namespace,
                        "identity": identity.name,
                        "reason": reason,
                    },
                )
        finally:
            batch.flush()
        message = {
            MANUAL: f"revoked by the {REVOKE_ANNOTATION} annotation",
            EXPIRED: "the lifetime.validFor window ended",
            WORKLOAD_DELETED: "no matching workload for spec.revocation.gracePeriod",
        }.get(reason, reason)
        metrics.forget_identity(identity.namespace, identity.name)
        return Outcome(
            False,
            phase,
            message,
            settled=True,
            phase=phase,
            extra={
                "revokedAt": revoked_at,
                "revocationReason": reason,
                "revoked": revoked[-1000:],
                "credentials": [],
                "nextRenewalTime": None,
            },
        )

    async def _revoke_secret(
        self, identity: MachineIdentity, obj: Mapping[str, Any], revoked_at: str
    ) -> dict[str, Any] | None:
        """Record a credential Secret's value as revoked; X509 serials go on the CRL."""
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        ann = meta.get("annotations") or {}
        cred = labels.get(CREDENTIAL_LABEL)
        if not cred:
            return None
        entry: dict[str, Any] = {"credential": cred, "revokedAt": revoked_at}
        if ann.get(A_FINGERPRINT):
            entry["fingerprint"] = ann[A_FINGERPRINT]
        serial, issuer = ann.get(A_SERIAL), ann.get(A_ISSUER)
        if serial and issuer:
            entry["serialNumber"] = serial
            await self._add_to_crl(identity, issuer, serial, parse_time(revoked_at))
        return entry

    async def _add_to_crl(
        self, identity: MachineIdentity, issuer: str, serial: str, when: dt.datetime
    ) -> None:
        kind, _, name = issuer.partition("/")
        try:
            signer = await self.issuers.signer(kind, name, identity.namespace)
            await self.issuers.revoke(signer, [(parse_serial_hex(serial), when)])
        except IssuerNotReady as err:
            log.warning(
                "could not add a serial to the CRL",
                extra={
                    "namespace": identity.namespace,
                    "identity": identity.name,
                    "issuer": issuer,
                    "serial": serial,
                    "error": err.message,
                },
            )

    async def _provision(self, body: Mapping[str, Any], identity: MachineIdentity) -> Outcome:
        observed = await self.gather(identity)
        plan = decide(observed)
        if plan.blocked:
            reason, message = plan.blocked
            recheck = reason in (Reason.SERVICE_ACCOUNT_CONFLICT, Reason.OWNERSHIP_CONFLICT)
            return Outcome(
                False,
                reason,
                message,
                stalled=True,
                next_check=self.clock() + CONFLICT_RECHECK if recheck else None,
            )
        batch = EventBatch(self.events, body)
        try:
            # The spec as last seen converged: a difference now is drift, which is restored.
            settled = identity.status.get(
                "observedGeneration"
            ) == identity.generation and cond.is_true(
                identity.status.get("conditions") or [], cond.READY
            )
            secrets = {k.name: v for k, v in observed.children.items() if k.kind == "Secret"}
            # A token is bound to its Secret, which must exist first: the Secrets of tokens not
            # issued yet are written (without a value) together with the other objects.
            anchors = self.credentials.anchors(identity, secrets)
            changes, written, conflicts = await self._apply_children(
                identity, observed, plan, settled, batch, anchors
            )
            secrets.update(written)
            taken = {c.name for c in conflicts if c.kind == "Secret"}
            creds = await self.credentials.ensure(identity, body, secrets, batch, taken)
            conflicts += [c for c in creds.conflicts if c not in conflicts]
            if creds.rotated and identity.spec.rollout_on_rotation:
                # Debounce: credentials that rotate within the window cause one rollout.
                due, names = self.pending_rollouts.get(identity.key, (None, []))
                self.pending_rollouts[identity.key] = (
                    due or self.clock() + ROLLOUT_DEBOUNCE,
                    sorted({*names, *creds.rotated}),
                )
            pending = self.pending_rollouts.get(identity.key)
            if pending is not None and self.clock() >= pending[0]:
                del self.pending_rollouts[identity.key]
                if identity.spec.rollout_on_rotation:
                    await self.rollout(identity, body, pending[1])
            if conflicts:
                more = f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""
                return Outcome(
                    False,
                    Reason.OWNERSHIP_CONFLICT,
                    conflicts[0].message + more,
                    stalled=True,
                    changes=changes,
                    credentials=creds,
                    next_check=self.clock() + CONFLICT_RECHECK,
                    conflicts=conflicts,
                )
            if creds.not_ready is not None:
                reason, message = creds.not_ready
                return Outcome(
                    False,
                    reason,
                    message,
                    stalled=creds.stalled,
                    changes=changes,
                    credentials=creds,
                )
            n = len(identity.spec.credentials)
            message = (
                f"ServiceAccount {identity.spec.service_account}, its permissions and "
                f"{n} credential{'s' if n != 1 else ''} are in place"
            )
            reason = Reason.CREDENTIALS_ISSUED if n else Reason.PROVISIONED
            if plan.warnings:
                note = "; ".join(plan.warnings)
                message += f"; policy warnings: {note}"
                ready = cond.get_condition(identity.status.get("conditions") or [], cond.READY)
                if ready is None or note not in str(ready.get("message", "")):
                    batch.warning(Reason.POLICY_VIOLATION, note)
            return Outcome(True, reason, message, changes=changes, credentials=creds)
        finally:
            batch.flush()

    async def _apply_children(
        self,
        identity: MachineIdentity,
        observed: Observed,
        plan: Plan,
        settled: bool,
        batch: EventBatch,
        anchors: Sequence[Mapping[str, Any]] = (),
    ) -> tuple[list[str], dict[str, dict[str, Any]], list[Claim]]:
        """Apply and delete the planned children, and write ``anchors`` (token Secrets without
        a value), all at once. Returns the changes made, in plan order, the anchors as
        written, by name, and the objects that were not written because the identity does
        not own them.

        None of these writes depends on another: a RoleBinding may name a ServiceAccount that
        does not exist yet, and binding a Role being written at the same time is allowed by
        the operator's ``bind`` permission on Roles and ClusterRoles. Every write that
        succeeded is recorded (write overlay) and reported even when another failed; then the
        first failure in plan order is raised, so the reconcile fails as before.
        """
        if not plan.apply and not plan.delete and not anchors:
            return [], {}, []
        results = await settle(
            [
                *(self._apply_child(identity, obj, observed, plan) for obj in plan.apply),
                *(
                    self._remove_child(identity.uid, key, observed.children[key])
                    for key in plan.delete
                ),
                *(self._apply_child(identity, obj, observed, plan) for obj in anchors),
            ]
        )
        n_apply, n_delete = len(plan.apply), len(plan.delete)
        changes: list[str] = []
        failures: list[BaseException] = []
        conflicts = [r.claim for r in results if isinstance(r, OwnershipConflict)]
        for obj, result in zip(plan.apply, results[:n_apply], strict=True):
            if isinstance(result, OwnershipConflict):
                continue
            if isinstance(result, BaseException):
                failures.append(result)
                continue
            key = child_key(obj)
            if settled:
                verb = Reason.RESTORED
            else:
                verb = Reason.UPDATED if key in observed.children else Reason.CREATED
            changes.append(f"{verb} {key}")
            batch.normal(verb, f"{verb.lower()} {key}")
            log.info(
                "%s child",
                verb.lower(),
                extra={
                    "child": str(key),
                    "namespace": identity.namespace,
                    "identity": identity.name,
                },
            )
        for key, removed in zip(plan.delete, results[n_apply : n_apply + n_delete], strict=True):
            if isinstance(removed, BaseException):
                failures.append(removed)
                continue
            if not removed:
                continue
            changes.append(f"{removed} {key}")
            batch.normal(str(removed), f"{str(removed).lower()} {key}")
            log.info(
                "%s child",
                str(removed).lower(),
                extra={
                    "child": str(key),
                    "namespace": identity.namespace,
                    "identity": identity.name,
                },
            )
        written: dict[str, dict[str, Any]] = {}
        for anchor in results[n_apply + n_delete :]:
            if isinstance(anchor, OwnershipConflict):
                continue
            if isinstance(anchor, BaseException):
                failures.append(anchor)
            elif isinstance(anchor, dict):
                written[anchor["metadata"]["name"]] = anchor
        raise_first(failures, "could not write a child", identity)
        return changes, written, conflicts

    async def _apply_child(
        self, identity: MachineIdentity, obj: Mapping[str, Any], observed: Observed, plan: Plan
    ) -> dict[str, Any]:
        """Create the child, or update the one the identity owns (or adopts)."""
        key = child_key(dict(obj))
        current = observed.children.get(key)
        if current is None and key.kind == "ServiceAccount":
            current = plan.adopt
        return await self.writer.write(identity, obj, current, field_for(identity, key))

    async def _remove_child(self, uid: str, key: ChildKey, obj: Mapping[str, Any]) -> str:
        """Delete an owned child, or give an adopted ServiceAccount back as it was.
        Returns what was done (a Reason), or "" when the object was already gone."""
        if key.kind == "ServiceAccount" and is_adopted(obj):
            try:
                await self.api.patch(
                    "ServiceAccount",
                    key.namespace,
                    key.name,
                    release_patch(obj, uid),
                    content_type="application/json-patch+json",
                )
            except ApiError as err:
                if err.status not in (404, 409, 422):  # gone, or not the one we adopted
                    raise
                return ""
            self.view.deleted(key)
            return Reason.RELEASED
        if not await self.writer.delete(key.kind, obj):
            return ""
        self.view.deleted(key)
        return Reason.DELETED

    async def rollout(
        self, identity: MachineIdentity, body: Mapping[str, Any], rotated: Sequence[str]
    ) -> None:
        """Restart the matching workloads once, however many credentials rotated together."""
        selector = identity.spec.selector
        if selector.empty:
            return
        stamp = rfc3339(self.clock())
        patch = {
            "spec": {"template": {"metadata": {"annotations": {RESTARTED_AT_ANNOTATION: stamp}}}}
        }
        for kind in ("Deployment", "StatefulSet", "DaemonSet"):
            found = await self.api.list(
                kind, identity.namespace, label_selector=selector.to_query()
            )
            for obj in found:
                if not selector.matches((obj.get("metadata") or {}).get("labels") or {}):
                    continue
                name = obj["metadata"]["name"]
                await self.api.patch(kind, identity.namespace, name, patch)
                metrics.rollouts.inc()
                self.events.post(
                    body,
                    "Normal",
                    "RolloutTriggered",
                    f"restarted {kind}/{name} after rotating {', '.join(rotated)}",
                )

    async def cleanup(self, body: Mapping[str, Any]) -> list[str]:
        """Remove every object the identity created, cluster-scoped ones included."""
        meta = body.get("metadata") or {}
        namespace, name = meta.get("namespace", ""), meta.get("name", "")
        removed = []
        self.pending_rollouts.pop((namespace, name), None)
        uid = str(meta.get("uid") or "")
        children = owned_children(self.view.children_of(namespace, name), uid, namespace, name)
        try:
            identity: MachineIdentity | None = MachineIdentity.from_body(body)
        except ValueError:
            identity = None  # an invalid spec: its objects go all the same
        if identity is not None and (body.get("status") or {}).get("phase") not in REVOKED_PHASES:
            revoked_at = rfc3339(self.clock())
            for key, obj in children.items():
                if key.kind == "Secret":
                    try:
                        await self._revoke_secret(identity, obj, revoked_at)
                    except ApiError:
                        raise  # transient: the clean-up is tried again
                    except Exception as err:
                        # Trying again would fail again and keep the identity (and its
                        # namespace) from ever being deleted: say so, and go on.
                        log.error(
                            "could not record a credential as revoked",
                            extra={
                                "namespace": namespace,
                                "identity": name,
                                "secret_name": key.name,
                                "error": repr(err),
                            },
                        )
            metrics.revocations.labels(IDENTITY_DELETED).inc()
        for key in sorted(children):
            if await self._remove_child(uid, key, children[key]):
                removed.append(str(key))
        metrics.forget_identity(namespace, name)
        return removed

    # ------------------------------------------------------------------ status

    async def _write_status(self, identity: MachineIdentity, outcome: Outcome) -> None:
        now = self.clock()
        status = compute_status(identity, outcome, now)
        if status_changed(identity.status, status):
            written = await self.api.patch(
                "MachineIdentity",
                identity.namespace,
                identity.name,
                {"status": status},
                subresource="status",
            )
            self.view.identity_written(written)
            if not outcome.ready and not _same_reason(identity.status, outcome):
                self.events.post(_ref(identity), "Warning", outcome.reason, outcome.message)
        metrics.observe_identity(
            identity.namespace,
            identity.name,
            identity.spec.owner,
            status["phase"],
            {c["type"]: c["status"] == cond.TRUE for c in status["conditions"]},
        )

    async def _write_status_raw(self, body: Mapping[str, Any], outcome: Outcome) -> None:
        """Status for an identity whose spec could not even be parsed."""
        meta = body.get("metadata") or {}
        old = body.get("status") or {}
        now = self.clock()
        gen = int(meta.get("generation") or 0)
        conds = cond.kstatus_conditions(
            old.get("conditions") or [],
            ready=False,
            stalled=True,
            reason=outcome.reason,
            message=outcome.message,
            generation=gen,
            now=now,
        )
        status = {
            "observedGeneration": gen,
            "phase": old.get("phase") or "Pending",
            "conditions": conds,
        }
        if status_changed(old, status):
            written = await self.api.patch(
                "MachineIdentity",
                meta.get("namespace"),
                meta.get("name", ""),
                {"status": status},
                subresource="status",
            )
            self.view.identity_written(written)
            if not _same_reason(old, outcome):
                self.events.post(body, "Warning", outcome.reason, outcome.message)
        spec = body.get("spec") or {}
        metrics.observe_identity(
            str(meta.get("namespace", "")),
            str(meta.get("name", "")),
            str(spec.get("owner") or ""),
            str(status["phase"]),
            {"Ready": False, "Reconciling": False, "Stalled": True},
        )


def _created(identity: MachineIdentity) -> dt.datetime | None:
    return parse_time(identity.creation_timestamp) if identity.creation_timestamp else None


def _same_reason(status: Mapping[str, Any], outcome: Outcome) -> bool:
    """True when the stored Ready condition already says what the outcome says."""
    ready = cond.get_condition(status.get("conditions") or [], cond.READY)
    return bool(
        ready and ready.get("reason") == outcome.reason and ready.get("message") == outcome.message
    )


def _ref(identity: MachineIdentity) -> dict[str, Any]:
    return {
        "apiVersion": "nhi.dev/v1alpha1",
        "kind": "MachineIdentity",
        "metadata": {"namespace": identity.namespace, "name": identity.name, "uid": identity.uid},
    }

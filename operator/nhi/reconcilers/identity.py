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
from nhi.builders.rbac import ChildKey, child_key, desired_access, differs
from nhi.crypto import parse_serial_hex
from nhi.k8s.client import Api, ApiError
from nhi.k8s.events import EventBatch, EventRecorder
from nhi.models import conditions as cond
from nhi.models.duration import parse_time, rfc3339
from nhi.models.identity import MachineIdentity, SpecError
from nhi.models.meta import (
    ADOPT_ANNOTATION,
    CREDENTIAL_LABEL,
    IDENTITY_LABEL,
    MANAGED_BY,
    MANAGED_BY_KEY,
    RESTARTED_AT_ANNOTATION,
    REVOKE_ANNOTATION,
    Reason,
)
from nhi.models.policy import IdentityPolicy
from nhi.models.workload import Workload
from nhi.policies import identity_policy as ip
from nhi.policies.cluster import check_cluster_permissions
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
from nhi.reconcilers.issuer import IssuerNotReady, IssuerService

log = logging.getLogger("nhi.reconcilers.identity")

#: Credentials of one identity that rotate within this window cause a single rollout.
ROLLOUT_DEBOUNCE = dt.timedelta(seconds=5)

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
    children: Mapping[ChildKey, Mapping[str, Any]]
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

    @property
    def next_due(self) -> dt.datetime | None:
        due = [t for t in (self.next_check, self.credentials and self.credentials.next_due) if t]
        return min(due) if due else None


def service_account_conflict(identity: MachineIdentity, sa: Mapping[str, Any] | None) -> str | None:
    """Why an existing ServiceAccount may not be taken over, or None."""
    if sa is None:
        return None
    labels = (sa.get("metadata") or {}).get("labels") or {}
    ours = labels.get(MANAGED_BY_KEY) == MANAGED_BY and labels.get(IDENTITY_LABEL) == identity.name
    if ours or identity.annotations.get(ADOPT_ANNOTATION) == "true":
        return None
    return (
        f"spec.serviceAccount.name: ServiceAccount {identity.spec.service_account!r} already "
        f"exists and is not managed by this identity; set the annotation "
        f'{ADOPT_ANNOTATION}: "true" to adopt it'
    )


def decide(observed: Observed) -> Plan:
    """Pure: the children to apply and delete, or why nothing may be done."""
    identity = observed.identity
    conflict = service_account_conflict(identity, observed.foreign_service_account)
    if conflict:
        return Plan(blocked=(Reason.SERVICE_ACCOUNT_CONFLICT, conflict))
    verdict = check_cluster_permissions(identity.spec, observed.policies, observed.namespace_labels)
    if not verdict.allowed:
        return Plan(blocked=(verdict.reason, verdict.message))
    violations = ip.evaluate(identity, observed.policies, observed.namespace_labels)
    denied = ip.denials(violations)
    if denied:
        return Plan(blocked=(Reason.POLICY_VIOLATION, ip.summary(denied)))
    desired = desired_access(identity)
    wanted = {child_key(o) for o in desired}
    # Credential Secrets are written by the credential manager; only orphans are removed here.
    wanted |= {
        ChildKey("Secret", identity.namespace, c.secret_name) for c in identity.spec.credentials
    }
    apply = tuple(o for o in desired if differs(o, _as_dict(observed.children.get(child_key(o)))))
    delete = tuple(sorted(k for k in observed.children if k not in wanted))
    return Plan(
        apply=apply, delete=delete, warnings=tuple(v.message for v in ip.warnings(violations))
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
        self.credentials = CredentialManager(api, issuers, events, clock, record=view.written)

    # ------------------------------------------------------------------ gather

    async def gather(self, identity: MachineIdentity) -> Observed:
        children = self.view.children_of(identity.namespace, identity.name)
        foreign = None
        sa_key = ChildKey("ServiceAccount", identity.namespace, identity.spec.service_account)
        if sa_key not in children:
            # Not in the cache of managed objects: is there a namesake we must not take over?
            # The watch cache of every ServiceAccount answers without a request.
            foreign = self.view.service_account(identity.namespace, identity.spec.service_account)
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
        outcome.next_check = decision.next_check
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
        children = self.view.children_of(identity.namespace, identity.name)
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
                if await self.api.delete(key.kind, key.namespace or None, key.name):
                    self.view.deleted(key)
                    batch.normal("Revoked", f"deleted {key} ({reason})")
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
            return Outcome(False, reason, message, stalled=True)
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
            changes, written = await self._apply_children(
                identity, observed, plan, settled, batch, anchors
            )
            secrets.update(written)
            creds = await self.credentials.ensure(identity, body, secrets, batch)
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
    ) -> tuple[list[str], dict[str, dict[str, Any]]]:
        """Apply and delete the planned children, and write ``anchors`` (token Secrets without
        a value), all at once. Returns the changes made, in plan order, and the anchors as
        written, by name.

        None of these writes depends on another: a RoleBinding may name a ServiceAccount that
        does not exist yet, and binding a Role being written at the same time is allowed by
        the operator's ``bind`` permission on Roles and ClusterRoles. Every write that
        succeeded is recorded (write overlay) and reported even when another failed; then the
        first failure in plan order is raised, so the reconcile fails as before.
        """
        if not plan.apply and not plan.delete and not anchors:
            return [], {}
        results = await settle(
            [
                *(self._apply_child(obj) for obj in plan.apply),
                *(self._delete_child(key) for key in plan.delete),
                *(self._apply_child(obj) for obj in anchors),
            ]
        )
        n_apply, n_delete = len(plan.apply), len(plan.delete)
        changes: list[str] = []
        failures: list[BaseException] = []
        for obj, result in zip(plan.apply, results[:n_apply], strict=True):
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
        for key, deleted in zip(plan.delete, results[n_apply : n_apply + n_delete], strict=True):
            if isinstance(deleted, BaseException):
                failures.append(deleted)
                continue
            changes.append(f"Deleted {key}")
            batch.normal(Reason.DELETED, f"deleted {key}")
            log.info(
                "deleted child",
                extra={
                    "child": str(key),
                    "namespace": identity.namespace,
                    "identity": identity.name,
                },
            )
        written: dict[str, dict[str, Any]] = {}
        for anchor in results[n_apply + n_delete :]:
            if isinstance(anchor, BaseException):
                failures.append(anchor)
            elif anchor is not None:
                written[anchor["metadata"]["name"]] = anchor
        raise_first(failures, "could not write a child", identity)
        return changes, written

    async def _apply_child(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        written = await self.api.apply(obj)
        self.view.written(written)
        return written

    async def _delete_child(self, key: ChildKey) -> None:
        await self.api.delete(key.kind, key.namespace or None, key.name)
        self.view.deleted(key)

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
        children = self.view.children_of(namespace, name)
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
            if await self.api.delete(key.kind, key.namespace or None, key.name):
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

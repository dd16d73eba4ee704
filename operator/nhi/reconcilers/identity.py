"""MachineIdentity reconciler: gather -> decide (pure) -> apply -> status.

Children are read from the operator's watch caches, so a reconcile that finds nothing to do
costs no API request. Writes are server-side applies; status is patched only when it changed.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from nhi import metrics
from nhi.builders.rbac import (
    ChildKey,
    child_key,
    field_for,
)
from nhi.k8s.client import Api, ApiError
from nhi.k8s.events import EventBatch, EventRecorder
from nhi.models import conditions as cond
from nhi.models.duration import rfc3339, utcnow
from nhi.models.identity import MachineIdentity, SpecError
from nhi.models.meta import (
    RESTARTED_AT_ANNOTATION,
    Phase,
    Reason,
)
from nhi.models.policy import IdentityPolicy
from nhi.models.workload import Workload
from nhi.policies.cluster import VAULT_POLICIES_NOT_ALLOWED, allowed_vault_policies
from nhi.policies.ownership import (
    Claim,
    OwnershipConflict,
    controller_ref,
)
from nhi.policies.revocation import (
    REVOKED_PHASES,
)
from nhi.reconcilers.credentials import (
    CredentialManager,
    CredentialResult,
    raise_first,
    settle,
)
from nhi.reconcilers.identity_plan import (
    Observed,
    Outcome,
    Plan,
    adopting,
    assess,
    decide,
    event_ref,
    owned_children,
    rollout_window,
)
from nhi.reconcilers.identity_revocation import Revoker
from nhi.reconcilers.identity_status import StatusWriter
from nhi.reconcilers.issuers import IssuerNotReady, IssuerService
from nhi.reconcilers.owned import OwnedWriter
from nhi.reconcilers.vault_access import VaultAccess
from nhi.reconcilers.vault_storage import DEFAULT_KV_CHECK_INTERVAL, KVStore
from nhi.vault import VaultError

log = logging.getLogger("nhi.reconcilers.identity")

#: Credentials of one identity that rotate within this window cause a single rollout.
ROLLOUT_DEBOUNCE = dt.timedelta(seconds=5)

#: How often an identity blocked by an object it does not own looks again (the object may
#: have been removed or renamed meanwhile; no watch tells about every kind of object).
CONFLICT_RECHECK = dt.timedelta(seconds=60)
#: When to try the workload's Vault access again after the server failed.
VAULT_ACCESS_RETRY = dt.timedelta(seconds=30)

#: A condition beside the kstatus ones: True when undeclared workloads use the identity.
UNDECLARED_USERS = "UndeclaredUsers"

Clock = Callable[[], dt.datetime]


def _verb(settled: bool, existed: bool) -> str:
    """How a child write is reported: drift restored, or created / updated by a spec change."""
    if settled:
        return Reason.RESTORED
    return Reason.UPDATED if existed else Reason.CREATED


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


class IdentityReconciler:
    def __init__(
        self,
        api: Api,
        view: ChildView,
        events: EventRecorder,
        issuers: IssuerService,
        clock: Clock = utcnow,
        *,
        kv_check_interval: float = DEFAULT_KV_CHECK_INTERVAL,
    ) -> None:
        self.api = api
        self.view = view
        self.events = events
        self.clock = clock
        self.issuers = issuers
        #: Rollouts waiting for the debounce window: identity -> (when, rotated credentials).
        #: Kept in memory only, so an operator restart never causes a rollout.
        self.pending_rollouts: dict[tuple[str, str], tuple[dt.datetime, list[str]]] = {}
        self.writer = OwnedWriter(api, record=view.written, forget=view.deleted)
        self.access = VaultAccess(issuers)
        #: One store of the KV copies, shared by issuing and revoking (what it remembers of
        #: each copy must not outlive a revocation).
        self.kv = KVStore(issuers, api, check_interval=kv_check_interval)
        self.revoker = Revoker(
            view.children_of, events, issuers, self.writer, clock, access=self.access, kv=self.kv
        )
        self.status = StatusWriter(api, events, view.identity_written, clock)
        self.credentials = CredentialManager(api, issuers, clock, writer=self.writer, kv=self.kv)

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
            await self.status.write_raw(body, outcome)
            return outcome
        try:
            outcome = await self._converge(identity)
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
                await self.status.write(identity, outcome)
                return outcome
            outcome = Outcome(False, Reason.API_ERROR, str(err))
            await self.status.write(identity, outcome)
            raise
        await self.status.write(identity, outcome)
        metrics.reconcile_duration.labels("MachineIdentity").observe(
            (self.clock() - started).total_seconds()
        )
        return outcome

    async def _converge(self, identity: MachineIdentity) -> Outcome:
        now = self.clock()
        seen = assess(identity, self.view.workloads(identity.namespace), now)
        ref = event_ref(identity)
        if seen.newly_undeclared:
            self.events.post(
                ref,
                "Warning",
                "UndeclaredWorkload",
                f"{', '.join(seen.undeclared)} run as ServiceAccount "
                f"{identity.spec.service_account} but are not matched by spec.workloads.selector",
            )
        extra = dict(seen.extra)
        if seen.decision.reason is not None:
            outcome = await self.revoker.revoke(identity, seen.decision.reason, now)
        else:
            outcome = await self._provision(identity)
            extra.update(self._reactivation(identity, outcome, now))
        outcome.extra = {**extra, **outcome.extra}
        pending = self.pending_rollouts.get(identity.key)
        due = (outcome.next_check, seen.decision.next_check, pending[0] if pending else None)
        outcome.next_check = min(filter(None, due), default=None)
        outcome.undeclared = seen.undeclared
        return outcome

    def _reactivation(
        self, identity: MachineIdentity, outcome: Outcome, now: dt.datetime
    ) -> dict[str, Any]:
        """The phase after provisioning; a revoked identity provisioned afresh says so."""
        was_revoked = identity.status.get("phase") in REVOKED_PHASES
        if not outcome.ready:
            if was_revoked:
                outcome.phase = Phase.PENDING
            return {}
        outcome.phase = Phase.ACTIVE
        if not was_revoked:
            return {}
        self.events.post(
            event_ref(identity),
            "Normal",
            "Reactivated",
            f"provisioned afresh after a {identity.status.get('revocationReason')} "
            "revocation, with new credentials",
        )
        return {"reactivatedAt": rfc3339(now), "revokedAt": None, "revocationReason": None}

    async def _provision(self, identity: MachineIdentity) -> Outcome:
        observed = await self.gather(identity)
        plan = decide(observed)
        if plan.blocked:
            reason, message = plan.blocked
            recheck = reason in (Reason.SERVICE_ACCOUNT_CONFLICT, Reason.OWNERSHIP_CONFLICT)
            if reason == VAULT_POLICIES_NOT_ALLOWED:
                recheck = not await self._withdraw_vault_policies(identity, observed)
            return Outcome(
                False,
                reason,
                message,
                stalled=True,
                next_check=self.clock() + CONFLICT_RECHECK if recheck else None,
            )
        batch = EventBatch(self.events, event_ref(identity))
        try:
            secrets = {k.name: v for k, v in observed.children.items() if k.kind == "Secret"}
            # A token is bound to its Secret, which must exist first: the Secrets of tokens not
            # issued yet are written (without a value) together with the other objects.
            anchors = self.credentials.anchors(identity, secrets)
            changes, written, conflicts = await self._apply_children(
                identity, observed, plan, batch, anchors
            )
            secrets.update(written)
            taken = {c.name for c in conflicts if c.kind == "Secret"}
            creds = await self.credentials.ensure(identity, secrets, batch, taken)
            await self._vault_access(identity, creds)
            conflicts += [c for c in creds.conflicts if c not in conflicts]
            await self._roll_out_if_due(identity, creds.rotated)
            return self._provisioned(identity, plan, changes, creds, conflicts, batch)
        finally:
            batch.flush()

    async def _withdraw_vault_policies(self, identity: MachineIdentity, observed: Observed) -> bool:
        """Take the Vault policies an IdentityPolicy no longer allows out of the workload's
        role (a tightened policy applies to what was granted before). False when Vault
        could not be asked: looked at again later."""
        keep = allowed_vault_policies(identity.spec, observed.policies, observed.namespace_labels)
        sa = observed.children.get(
            ChildKey("ServiceAccount", identity.namespace, identity.spec.service_account)
        )
        uid = str(((sa or {}).get("metadata") or {}).get("uid") or "")
        try:
            withdrawn = await self.access.withdraw(identity, keep, uid)
        except (VaultError, IssuerNotReady) as err:
            log.warning(
                "could not withdraw Vault policies",
                extra={"namespace": identity.namespace, "identity": identity.name,
                       "error": str(err)},
            )  # fmt: skip
            return False
        if withdrawn:
            self.events.post(
                event_ref(identity),
                "Warning",
                VAULT_POLICIES_NOT_ALLOWED,
                f"withdrew Vault policies no IdentityPolicy allows any more: "
                f"{', '.join(withdrawn)}; the workload's Vault tokens were revoked",
            )
        return True

    async def _vault_access(self, identity: MachineIdentity, creds: CredentialResult) -> None:
        """The workload's Vault policy and role (spec.vault.access); a failure makes the
        identity not Ready, naming the server and what it answered, and is tried again."""
        try:
            await self.access.ensure(identity)
        except (VaultError, IssuerNotReady) as err:
            stalled = isinstance(err, VaultError) and not err.retryable
            if creds.not_ready is None:
                creds.not_ready = (err.reason, f"spec.vault.access: {err.message}")
            creds.stalled = creds.stalled or stalled
            creds.due(self.clock() + VAULT_ACCESS_RETRY)

    async def _roll_out_if_due(self, identity: MachineIdentity, rotated: Sequence[str]) -> None:
        """Debounced: credentials that rotate within ROLLOUT_DEBOUNCE cause one rollout."""
        wanted = rotated if identity.spec.rollout_on_rotation else ()
        pending, due = rollout_window(
            self.pending_rollouts.get(identity.key), wanted, self.clock(), ROLLOUT_DEBOUNCE
        )
        if pending is None:
            self.pending_rollouts.pop(identity.key, None)
        else:
            self.pending_rollouts[identity.key] = pending
        if due is not None and identity.spec.rollout_on_rotation:
            await self.rollout(identity, due)

    def _provisioned(
        self,
        identity: MachineIdentity,
        plan: Plan,
        changes: list[str],
        creds: CredentialResult,
        conflicts: list[Claim],
        batch: EventBatch,
    ) -> Outcome:
        """What a provisioning pass came to: Ready, or why not."""
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
                False, reason, message, stalled=creds.stalled, changes=changes, credentials=creds
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

    async def _apply_children(
        self,
        identity: MachineIdentity,
        observed: Observed,
        plan: Plan,
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
                    self.writer.remove(identity.uid, key, observed.children[key])
                    for key in plan.delete
                ),
                *(self._apply_child(identity, obj, observed, plan) for obj in anchors),
            ]
        )
        n_apply, n_delete = len(plan.apply), len(plan.delete)
        conflicts = [r.claim for r in results if isinstance(r, OwnershipConflict)]
        failures = [
            r
            for r in results
            if isinstance(r, BaseException) and not isinstance(r, OwnershipConflict)
        ]
        # The spec as last seen converged: a difference now is drift, which is restored.
        settled = identity.status.get("observedGeneration") == identity.generation and (
            cond.is_true(identity.status.get("conditions") or [], cond.READY)
        )
        done = [
            (child_key(obj), _verb(settled, child_key(obj) in observed.children))
            for obj, r in zip(plan.apply, results[:n_apply], strict=True)
            if not isinstance(r, BaseException)
        ]
        done += [
            (key, str(r))
            for key, r in zip(plan.delete, results[n_apply : n_apply + n_delete], strict=True)
            if r and not isinstance(r, BaseException)
        ]
        changes = self._report(identity, done, batch)
        written = {
            a["metadata"]["name"]: a for a in results[n_apply + n_delete :] if isinstance(a, dict)
        }
        raise_first(failures, "could not write a child", identity)
        return changes, written, conflicts

    def _report(
        self, identity: MachineIdentity, done: list[tuple[ChildKey, str]], batch: EventBatch
    ) -> list[str]:
        """One Event reason per verb, one log line per change; the changes, in order."""
        for key, verb in done:
            batch.normal(verb, f"{verb.lower()} {key}")
            log.info(
                "%s child",
                verb.lower(),
                extra={"child": str(key), "namespace": identity.namespace,
                       "identity": identity.name},
            )  # fmt: skip
        return [f"{verb} {key}" for key, verb in done]

    async def _apply_child(
        self, identity: MachineIdentity, obj: Mapping[str, Any], observed: Observed, plan: Plan
    ) -> dict[str, Any]:
        """Create the child, or update the one the identity owns (or adopts)."""
        key = child_key(dict(obj))
        current = observed.children.get(key)
        if current is None and key.kind == "ServiceAccount":
            current = plan.adopt
        return await self.writer.write(identity, obj, current, field_for(identity, key))

    async def rollout(self, identity: MachineIdentity, rotated: Sequence[str]) -> None:
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
                    event_ref(identity),
                    "Normal",
                    "RolloutTriggered",
                    f"restarted {kind}/{name} after rotating {', '.join(rotated)}",
                )

    async def cleanup(self, body: Mapping[str, Any]) -> list[str]:
        """Remove every object the identity created, cluster-scoped ones included."""
        meta = body.get("metadata") or {}
        self.pending_rollouts.pop((meta.get("namespace", ""), meta.get("name", "")), None)
        return await self.revoker.cleanup(body)

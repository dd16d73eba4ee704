"""The operator's composition: which controller runs which reconciler, fed by which caches.

Created once at start-up (:func:`get`), from :mod:`nhi.runtime`'s parts and one clock:

- the watch caches (:class:`~nhi.runtime.caches.WatchCaches`), consumed by the
  :class:`~nhi.handlers.identity_cache.IdentityCache`; no reconcile runs before every cache
  has its first listing, so a restart sees every child that exists and re-creates nothing;
- the MachineIdentity controller: its finalizer, then :class:`IdentityReconciler`; with
  peering, the :class:`~nhi.runtime.peering.PeeringGate` holds it on a standby replica;
- the IdentityPolicy status controller (:mod:`nhi.handlers.policy_status`), when the
  operator watches every namespace;
- the inventory controller (:mod:`nhi.handlers.inventory`), with ``--discovery`` only:
  watch caches of its own over the namespaces discovered, the MachineIdentities from ours;
- the issuer controller (:class:`~nhi.reconcilers.issuers.IssuerService`), fed by the
  watch caches of IdentityIssuers and ClusterIdentityIssuers, held like the others until the
  caches are listed and while this replica is a standby;
- the AccessGrant controller (:mod:`nhi.handlers.grants`), unless grants are off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from nhi import IDENTITY_FINALIZER, metrics
from nhi.handlers.grants import GrantController
from nhi.handlers.identity_cache import IdentityCache
from nhi.handlers.inventory import Discovery
from nhi.handlers.policy_status import PolicyStatus
from nhi.k8s.client import Api, NotFound, load_connection
from nhi.k8s.events import EventRecorder
from nhi.models.duration import parse_duration
from nhi.reconcilers.identity import IdentityReconciler
from nhi.reconcilers.identity_plan import Outcome
from nhi.reconcilers.issuers import IssuerService
from nhi.runtime import finalizers
from nhi.runtime.caches import WatchCaches
from nhi.runtime.clock import Clock, SystemClock
from nhi.runtime.controller import Controller, Result
from nhi.runtime.informer import Key
from nhi.runtime.overlay import WriteOverlay
from nhi.runtime.peering import PeeringGate
from nhi.runtime.store import without_managed_fields
from nhi.settings import Settings
from nhi.settings import current as current_settings

log = logging.getLogger("nhi.runtime")

#: How soon an identity waiting on something outside (an issuer) is looked at again.
WAITING_RECHECK = 10.0


class Runtime:
    def __init__(self, api: Api, workers: int = 32, clock: Clock | None = None) -> None:
        settings = current_settings()
        self.api = api
        self.clock: Clock = clock or SystemClock()
        self.events = EventRecorder(api, clock=self.clock.now)
        self.overlay = WriteOverlay(self.clock.monotonic)
        self.caches = WatchCaches(api, self.clock, settings.namespaces)
        self.issuers = IssuerService(
            api,
            self.events,
            operator_namespace=settings.operator_namespace,
            clock=self.clock,
            namespaces=settings.namespaces,
        )
        #: Open while this replica may reconcile (always, without peering).
        self.gate = self._peering_gate(settings)
        self.controller: Controller[Key] = Controller(
            "MachineIdentity",
            self.reconcile,
            clock=self.clock,
            workers=workers,
            ready=self.caches.synced,
            active=self.gate.active,
            on_error=_count_failure,
        )
        self.view = IdentityCache(
            self.controller,
            self.issuers,
            self.overlay,
            self.caches.synced,
            namespaces=settings.namespaces,
            operator_namespace=settings.operator_namespace,
        )
        self.issuers.on_change = self.view.issuer_changed
        self.issuers.users = self.view.issuers_used
        # Trust bundles are computed from every identity's issuers: not before all are listed.
        self.issuers.bundles.synced = lambda: self.synced.is_set() and self.gate.active.is_set()
        self.identities = IdentityReconciler(
            api,
            self.view,
            self.events,
            self.issuers,
            self.clock.now,
            kv_check_interval=settings.vault_kv_check_interval,
        )
        self.policy_status = self._policy_status(settings)
        self.discovery = self._discovery(settings)
        self.grants = self._grants(settings)

    def _peering_gate(self, settings: Settings) -> PeeringGate:
        """With ``--peering``, which replica reconciles; everything is looked at again when
        this one becomes the active one (``_requeue_all``)."""
        return PeeringGate(
            self.api,
            enabled=settings.peering,
            name=settings.peering_name,
            namespaces=tuple(settings.namespaces),
            identity=settings.peering_identity,
            priority=settings.peering_priority,
            clock=self.clock.now,
            on_active=self._requeue_all,
        )

    # ------------------------------------------------------------------ optional controllers

    def _policy_status(self, settings: Settings) -> PolicyStatus | None:
        # A namespace-scoped operator sees only some identities: its counts would fight with
        # another installation's, so only a cluster-wide operator writes the policies' status.
        if not settings.namespaces and settings.policy_status_interval > 0:
            return PolicyStatus(
                self.api, self.view, self.clock, settings.policy_status_interval, self.caches.synced
            )
        return None

    def _discovery(self, settings: Settings) -> Discovery | None:
        """The inventory's controller, with ``--discovery`` only."""
        if not settings.discovery:
            return None
        return Discovery(
            self.api,
            self.clock,
            namespaces=settings.discovery_namespaces,
            config=settings.inventory,
            interval=settings.discovery_interval,
            provenance=self.issuers.provenance,
            identities_ready=self.caches.synced,
            active=self.gate.active,
        )

    def _grants(self, settings: Settings) -> GrantController | None:
        """The AccessGrant controller, unless grants are off."""
        if not settings.access_grants:
            return None
        return GrantController(
            self.api,
            self.events,
            self.view,
            self.clock,
            retention=parse_duration(settings.grant_retention),
            ready=self.caches.synced,
            active=self.gate.active,
        )

    @property
    def synced(self) -> asyncio.Event:
        """Set once every watch cache has its first listing."""
        return self.caches.synced

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the watch caches, the peering gate and the controllers."""
        if self.caches.informers:
            return
        self.view.watch(self.caches)
        self.issuers.watch(self.caches, ready=self.caches.synced, active=self.gate.active)
        if self.policy_status is not None:
            self.policy_status.watch(self.caches)
        if self.discovery is not None:
            self.discovery.watch(self.caches)
        if self.grants is not None:
            self.grants.watch(self.caches)
        self.caches.start(on_synced=self.issuers.sweep_bundles)
        self.gate.start()
        self.issuers.start()
        self.controller.start()
        if self.policy_status is not None:
            self.policy_status.controller.start()
        if self.discovery is not None:
            self.discovery.start()
        if self.grants is not None:
            self.grants.controller.start()

    async def stop(self) -> None:
        await self.controller.stop()
        await self.issuers.stop()
        if self.policy_status is not None:
            await self.policy_status.controller.stop()
        if self.discovery is not None:
            await self.discovery.stop()
        if self.grants is not None:
            await self.grants.controller.stop()
        await self.gate.stop()
        await self.caches.stop()
        # Events still being posted in the background: give them a moment before the client goes.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.events.drain(), timeout=5)
        await self.api.close()

    def _requeue_all(self) -> None:
        """This replica became the active one: look at every identity (as kopf would, on
        resuming, by listing again)."""
        self.controller.requeue(self.view.store.keys())
        self.issuers.requeue_all()
        if self.grants is not None:
            self.grants.controller.requeue(k for k, _ in self.grants.bodies())

    # ------------------------------------------------------------------ MachineIdentity

    async def reconcile(self, key: Key) -> Result:
        body = self.view.store.get(key)
        if body is None:
            return Result()
        if finalizers.deleting(body):
            if finalizers.has(body, IDENTITY_FINALIZER):
                await self._finalize(key, body)
            return Result()
        if not finalizers.has(body, IDENTITY_FINALIZER):
            # Cluster-scoped children and revocations need a word before the identity
            # goes: hold its deletion until the clean-up ran.
            written = await self._patch(key, finalizers.add(body, IDENTITY_FINALIZER))
            if written is None:
                return Result()
            self.view.store.written(written)
            body = without_managed_fields(written)
        outcome = await self.identities.reconcile(body)
        self.view.store.reconciled(key, body)
        return _next_look(outcome)

    async def _finalize(self, key: Key, body: Mapping[str, Any]) -> None:
        """The identity is being deleted: remove what it made, then let it go."""
        # A failure (an API error) is raised: the queue retries with its backoff, from 0.5 s
        # up to 5 min, rather than every few seconds for ever.
        removed = await self.identities.cleanup(body)
        log.info(
            "removed the identity's objects",
            extra={"namespace": key[0], "identity": key[1], "removed": removed},
        )
        await self._patch(key, finalizers.remove(body, IDENTITY_FINALIZER))

    async def _patch(self, key: Key, patch: finalizers.Patch) -> dict[str, Any] | None:
        """A finalizer patch of the identity. None when the identity is gone.

        A refusal (409, or 422 when a ``test`` op found the identity changed meanwhile) is
        raised: the change's own watch event runs the identity again at once (its finalizers
        are among its inputs), and a refusal that lasts backs off instead of being retried
        every 200 ms for ever.
        """
        try:
            return await self.api.patch(
                "MachineIdentity", key[0], key[1], patch, content_type=finalizers.JSON_PATCH
            )
        except NotFound:
            return None


def _next_look(outcome: Outcome) -> Result:
    if outcome.next_due is not None:
        return Result(requeue_at=outcome.next_due)
    if not outcome.ready and not outcome.stalled and not outcome.settled:
        # Waiting on something outside (an issuer): look again soon.
        return Result(requeue_after=WAITING_RECHECK)
    return Result()


def _count_failure(key: Key) -> None:
    metrics.reconcile_errors.labels("MachineIdentity").inc()


_runtime: Runtime | None = None


def get() -> Runtime:
    global _runtime
    if _runtime is None:
        _runtime = Runtime(Api(load_connection()), workers=current_settings().workers)
    return _runtime


def set_runtime(rt: Runtime | None) -> None:
    global _runtime
    _runtime = rt

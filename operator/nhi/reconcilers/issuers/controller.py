"""The issuer controller: its work queue, one reconcile per issuer, and the status.

``reconcile(key)`` converges one IdentityIssuer or ClusterIdentityIssuer: its CA source
(:mod:`.sources`) makes or loads the CA (gather), the CRL publisher keeps the CRL current
(decide in :mod:`nhi.policies.ca`, apply only if changed), the result is installed for
identities (:class:`SignerCache`) and trust bundles (:class:`TrustBundleDistribution`), and
the status is patched only when it changed. It returns when to look again
(:class:`Result`). A :class:`~nhi.runtime.controller.Controller` drives it, as every kind:
the runtime's watch caches of the issuers queue a key (:meth:`IssuerController.changed`),
and a ClusterIdentityIssuer being deleted is finalized here (:meth:`IssuerController.cleanup`).

Everything that changes an issuer's published state (a reconcile, a revocation, the clean-up
of a deleted ClusterIdentityIssuer) runs under that issuer's lock, here. Identities never
reconcile an issuer: for one not seen yet, they wait for this controller (:meth:`prepare`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nhi import FINALIZER, metrics
from nhi.builders.issuer import crl_summary
from nhi.crypto import Certificate, CryptoError, RevokedSerial, load_cert_chain, serial_hex
from nhi.k8s.client import Api, ApiError, NotFound
from nhi.k8s.events import EventRecorder
from nhi.models.identity import SpecError
from nhi.models.issuer import (
    CLUSTER_ISSUER_KIND,
    Issuer,
    IssuerKey,
    IssuerReason,
    issuer_key,
)
from nhi.policies.ca import next_look
from nhi.reconcilers.issuers.converge import Converger
from nhi.reconcilers.issuers.crl import CrlPublisher
from nhi.reconcilers.issuers.distribution import TrustBundleDistribution
from nhi.reconcilers.issuers.index import IssuerIndex
from nhi.reconcilers.issuers.signers import (
    IssuerNotReady,
    RemoteCA,
    Signer,
    SignerCache,
    changed,
    not_found,
)
from nhi.reconcilers.issuers.sources import CASources, SecretWatch
from nhi.reconcilers.issuers.status import IssuerOutcome, Result, StatusWriter, event_ref
from nhi.runtime import finalizers
from nhi.runtime.clock import Clock
from nhi.runtime.controller import Controller
from nhi.runtime.controller import Result as Next
from nhi.runtime.informer import Key
from nhi.runtime.locks import KeyedLocks

# The logger name the issuer's log lines have always carried (docs/observability.md).
log = logging.getLogger("nhi.reconcilers.issuer")

#: Seconds between checks of an issuer that waits for something outside (its CA Secret).
RETRY_INTERVAL = 10.0
#: Seconds between checks of a Ready issuer (a changed CA Secret, a deleted CRL).
RESYNC_INTERVAL = 60.0


@dataclass
class _State:
    """What the controller knows of one issuer."""

    issuer: Issuer | None = None  # its last valid spec
    generation: int | None = None  # the generation last reconciled


def key_of(body: Mapping[str, Any]) -> IssuerKey:
    meta = body.get("metadata") or {}
    return issuer_key(
        str(body.get("kind") or ""), str(meta.get("name") or ""), meta.get("namespace")
    )


def _count_failure(key: IssuerKey) -> None:
    metrics.reconcile_errors.labels(key[0]).inc()


class IssuerController:
    def __init__(
        self,
        api: Api,
        events: EventRecorder,
        clock: Clock,
        *,
        sources: CASources,
        crl: CrlPublisher,
        distribution: TrustBundleDistribution,
        secrets: SecretWatch,
        workers: int = 4,
        retry_interval: float = RETRY_INTERVAL,
        resync_interval: float = RESYNC_INTERVAL,
    ) -> None:
        self.api = api
        self.events = events
        self.clock = clock.now
        self.sources = sources
        self.crl = crl
        self.distribution = distribution
        self.secrets = secrets
        self.retry_interval = retry_interval
        self.resync_interval = resync_interval
        #: Called with the issuer's key whenever its signing material or readiness changed,
        #: so identities that use it can be re-queued.
        self.on_change: Callable[[IssuerKey], None] = lambda key: None
        self.controller: Controller[IssuerKey] = Controller(
            "IdentityIssuer", self._run, clock=clock, workers=workers, on_error=_count_failure
        )
        self.queue = self.controller.queue
        self.index = IssuerIndex(api)
        self.signers = SignerCache(
            clock.now, prepare=self.prepare, absent=self.index.absent, look_again=self.queue.add
        )
        self.converger = Converger(sources, crl)
        self.status = StatusWriter(api, events, clock.now)
        self._states: dict[IssuerKey, _State] = {}
        self._lock: KeyedLocks[IssuerKey] = KeyedLocks()
        self._running: set[IssuerKey] = set()
        self._waiters: dict[IssuerKey, list[asyncio.Future[None]]] = {}

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.controller.start()

    async def stop(self) -> None:
        await self.controller.stop()
        self._running.clear()
        for key in list(self._waiters):
            self._release(
                key, IssuerNotReady(IssuerReason.API_ERROR, "the operator is shutting down")
            )

    def issuers(self) -> list[Issuer]:
        """The issuers reconciled so far with a valid spec, in the order first seen."""
        return [s.issuer for s in self._states.values() if s.issuer is not None]

    # ------------------------------------------------------------------ watch input

    def changed(self, kind: str) -> Callable[[Key, Any, Any], None]:
        """The watch cache's consumer for issuers of ``kind``: a change queues the issuer,
        unless only its status or metadata changed (our own status patch, a label)."""

        def changed(key: Key, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> None:
            ikey = issuer_key(kind, key[1], key[0] or None)
            if new is None:
                self.forget(ikey)
                return
            meta = new.get("metadata") or {}
            state = self._states.get(ikey)
            generation = int(meta.get("generation") or 0)
            if (
                state is not None
                and not meta.get("deletionTimestamp")
                and state.generation == generation
                and self.signers.settled(ikey)
                and finalizers.names(old) == finalizers.names(new)
            ):
                return
            # A new generation is someone's edit: it runs now, even if the last run failed.
            edited = state is not None and state.generation != generation
            self.queue.add(ikey, fresh=edited)

        return changed

    def watches_secret(self, namespace: str | None, name: str | None) -> bool:
        """True for a Secret an issuer reads (its CA Secret, or its self-signed root)."""
        return self.secrets.watches((namespace or "", name or ""))

    def secret_changed(self, namespace: str | None, name: str | None, version: str) -> None:
        """A watched Secret changed: re-check the issuers that read it (not our own writes)."""
        for key in self.secrets.readers((namespace or "", name or ""), version):
            self.queue.add(key)

    def forget(self, key: IssuerKey) -> None:
        """The issuer is gone: drop what is kept about it and tell the identities."""
        self.secrets.track(key, set())
        self._states.pop(key, None)
        self._lock.forget(key)
        self.controller.forget(key)
        kind, namespace, name = key
        for gauge in (metrics.issuer_ready, metrics.issuer_ca_expiration):
            try:
                gauge.remove(kind, namespace, name)
            except KeyError:
                pass
        self.converger.forget(key)
        if self.signers.drop(key):
            self._notify(key)
        # Its roots leave the trust bundles it was in.
        self.distribution.forgotten(key)

    def _notify(self, key: IssuerKey) -> None:
        try:
            self.on_change(key)
        except Exception as err:
            log.warning(
                "issuer change callback failed", extra={"issuer": str(key), "error": str(err)}
            )

    # ------------------------------------------------------------------ waiting for a run

    async def prepare(self, key: IssuerKey) -> None:
        """Have an issuer this controller never settled reconciled, and wait for that run.

        IssuerNotReady when it does not exist or is being deleted; the run's error (an
        ApiError) when it failed.
        """
        body = await self.index.fetch(key)
        if body is None:
            raise IssuerNotReady(IssuerReason.ISSUER_NOT_FOUND, not_found(key))
        if (body.get("metadata") or {}).get("deletionTimestamp"):
            kind, _, name = key
            raise IssuerNotReady(IssuerReason.ISSUER_NOT_FOUND, f"{kind} {name} is being deleted")
        await self._wait_settled(key)

    async def loaded(self, key: IssuerKey) -> Issuer:
        """The issuer's model, once this controller reconciled it (waiting for that first)."""
        state = self._states.get(key)
        if state is None or state.issuer is None:
            if await self.index.fetch(key) is None:
                raise IssuerNotReady(IssuerReason.ISSUER_NOT_FOUND, not_found(key))
            await self._wait_settled(key)
            state = self._states.get(key)
            if state is None or state.issuer is None:
                problem = self.signers.problem(key)
                if problem is not None:
                    raise IssuerNotReady(problem.reason, problem.message)
                raise IssuerNotReady(IssuerReason.ISSUER_NOT_FOUND, not_found(key))
        return state.issuer

    async def _wait_settled(self, key: IssuerKey) -> None:
        """Return once the issuer has a signer or a problem, queueing it first if need be."""
        if self.signers.settled(key):
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, []).append(waiter)
        if key not in self._running:
            self.queue.add(key, fresh=True)  # asked for now: no backoff of an earlier run
        await waiter

    def _release(self, key: IssuerKey, error: BaseException | None) -> None:
        for waiter in self._waiters.pop(key, []):
            if waiter.done():
                continue
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)

    # ------------------------------------------------------------------ work queue

    async def _run(self, key: IssuerKey) -> Next:
        """One run of the controller: reconcile, release who waits for it, plan the next."""
        self._running.add(key)
        try:
            result = await self.reconcile(key)
        except Exception as err:
            self._running.discard(key)
            self._release(key, err)
            raise
        self._running.discard(key)
        self._release(key, None)
        return self.next_look(result)

    def next_look(self, result: Result) -> Next:
        """The controller's plan for ``result``: a retry keeps the failure backoff."""
        if result.requeue_at is None:
            return Next()
        if result.retry:
            return Next(requeue_after=max(0.0, (result.requeue_at - self.clock()).total_seconds()))
        return Next(requeue_at=result.requeue_at)

    def requeue(self, key: IssuerKey, result: Result) -> None:
        """Plan the next look at ``key`` that ``result`` asks for (a run outside the queue)."""
        plan = self.next_look(result)
        if plan.requeue_at is not None:
            delay = (plan.requeue_at - self.clock()).total_seconds()
            # A due time already past backs off (schedule_next) rather than spinning.
            self.queue.schedule_next(key, delay)
        elif plan.requeue_after is not None:
            self.queue.add_after(key, plan.requeue_after)

    # ------------------------------------------------------------------ reconcile

    async def reconcile(self, key: IssuerKey) -> Result:
        """Converge one issuer from its current body and write its status."""
        body = await self.index.fetch(key)
        if body is None:
            self.forget(key)
            return Result()
        if finalizers.deleting(body):
            if finalizers.has(body, FINALIZER):
                await self.cleanup(body)
                await self._patch(key, finalizers.remove(body, FINALIZER))
            return Result()
        if key[0] == CLUSTER_ISSUER_KIND and not finalizers.has(body, FINALIZER):
            # Its root Secret, CRL and trust bundles live outside any namespace it could own:
            # hold its deletion until they are removed. (A namespaced issuer's objects carry
            # an owner reference: the garbage collector removes them.)
            written = await self._patch(key, finalizers.add(body, FINALIZER))
            if written is None:
                return Result()
            body = written
        return await self.reconcile_body(body)

    async def _patch(self, key: IssuerKey, patch: finalizers.Patch) -> dict[str, Any] | None:
        """A finalizer patch of the issuer; None when it is gone. A refusal is raised: the
        queue retries with its backoff, or the change's own watch event runs it again."""
        kind, namespace, name = key
        try:
            written = await self.api.patch(
                kind, namespace or None, name, patch, content_type=finalizers.JSON_PATCH
            )
        except NotFound:
            return None
        written.setdefault("kind", kind)
        return written

    async def reconcile_body(self, body: Mapping[str, Any]) -> Result:
        """Converge one issuer from ``body`` and write its status."""
        key = key_of(body)
        async with self._lock(key):
            state = self._states.setdefault(key, _State())
            started = self.clock()
            outcome = await self._reconcile(key, state, body)
        now = self.clock()
        result = Result(
            outcome,
            next_look(
                ready=outcome.ready,
                retry=outcome.retry,
                due=outcome.next_due,
                now=now,
                resync=self.resync_interval,
                retry_interval=self.retry_interval,
            ),
            retry=outcome.retry,
        )
        metrics.reconcile_duration.labels(key[0]).observe((now - started).total_seconds())
        return result

    async def _reconcile(
        self, key: IssuerKey, state: _State, body: Mapping[str, Any]
    ) -> IssuerOutcome:
        now = self.clock()
        meta = body.get("metadata") or {}
        generation = int(meta.get("generation") or 0)
        try:
            issuer = Issuer.from_body(body)
        except SpecError as err:
            outcome = IssuerOutcome(False, IssuerReason.INVALID_SPEC, str(err), stalled=True)
            self._settle(key, state, None, outcome, generation)
            await self.status.write(body, generation, outcome)
            return outcome
        state.issuer = issuer
        try:
            current = self.signers.get(key)
            outcome, signer = await self.converger.converge(
                issuer, body, now, current.ca_cert if current is not None else None
            )
        except CryptoError as err:
            # An input the crypto layer refuses (a commonName too long in bytes...): the same
            # spec fails the same way, so it is Stalled until it changes.
            outcome = IssuerOutcome(
                False,
                IssuerReason.INVALID_SPEC,
                f"{self.converger.field(issuer)}: the CA cannot be made as specified: {err}",
                stalled=True,
            )
            self._settle(key, state, None, outcome, generation)
            await self.status.write(body, generation, outcome, self._crl_counts(key))
            return outcome
        except ApiError as err:
            outcome = IssuerOutcome(False, IssuerReason.API_ERROR, str(err))
            state.generation = generation
            await self.status.write(body, generation, outcome, self._crl_counts(key))
            raise
        self._settle(key, state, signer, outcome, generation)
        await self.status.write(body, generation, outcome, self._crl_counts(key))
        if outcome.backoff:
            # The server failed (Vault unreachable, sealed...): the queue retries with its
            # growing delay; who waits for the issuer hears why.
            raise IssuerNotReady(outcome.reason, outcome.message)
        return outcome

    def _crl_counts(self, key: IssuerKey) -> tuple[int, int] | None:
        published = self.crl.last(key)
        return published.counts if published is not None else None

    def _settle(
        self,
        key: IssuerKey,
        state: _State,
        signer: Signer | None,
        outcome: IssuerOutcome,
        generation: int,
    ) -> None:
        """Install the reconcile's result for identities and trust bundles; notify identities
        when it changed."""
        before = (self.signers.get(key), self.signers.problem(key))
        state.generation = generation
        if signer is not None and outcome.ready:
            self.signers.put(key, signer)
            roots: tuple[Certificate, ...] | None = tuple(load_cert_chain(signer.bundle_pem))
        else:
            self.signers.put(key, IssuerNotReady(outcome.reason, outcome.message))
            roots = None
        # A CA rotation, an expired previous root or a renamed bundle: every namespace that
        # has its bundle gets the new one.
        self.distribution.settled(key, state.issuer, roots)
        if changed(before, (self.signers.get(key), self.signers.problem(key))):
            self._notify(key)

    # ------------------------------------------------------------------ commands

    async def revoke(self, signer: Signer, serials: Sequence[tuple[int, dt.datetime]]) -> None:
        """Add (serial, revokedAt) entries to the issuer's CRL and publish it, signed by its CA.

        The published CRL is the state: its entries are read back, the new ones added (a
        serial already listed keeps one entry), the CRL number incremented and the CRL
        re-signed. Revoking only serials already listed changes nothing.
        """
        key = signer.key
        await self.loaded(key)
        async with self._lock(key):
            issuer = self._require(key)
            current = self.signers.get(key) or signer
            new = [RevokedSerial(int(s), at.astimezone(dt.UTC)) for s, at in serials]
            if isinstance(current.ca, RemoteCA):
                published, added = await self.crl.revoke_remote(
                    issuer, current.ca, new, self.clock()
                )
            else:
                published, added = await self.crl.publish(issuer, current, self.clock(), new=new)
        if added:
            await self.events.normal(
                event_ref(issuer),
                IssuerReason.REVOKED,
                f"revoked {len(added)} serial(s): {crl_summary(added)} (CRL number "
                f"{published.number}, {len(published.entries)} listed)",
            )
            log.info(
                "revoked serials",
                extra={
                    "issuer": issuer.ref,
                    "serials": [serial_hex(e.serial) for e in added],
                    "crl_number": published.number,
                },
            )
            self.queue.add(key)

    def _require(self, key: IssuerKey) -> Issuer:
        """The issuer's model, or IssuerNotFound (call with the issuer's lock held)."""
        state = self._states.get(key)
        if state is None or state.issuer is None:
            raise IssuerNotReady(IssuerReason.ISSUER_NOT_FOUND, not_found(key))
        return state.issuer

    async def cleanup(self, body: Mapping[str, Any]) -> list[str]:
        """A ClusterIdentityIssuer is being deleted: remove what the operator created for it.

        Its root Secret and its CRL, and its roots from the trust bundles (a bundle left with
        no issuer is deleted). Only objects the operator created are touched. (A namespaced
        issuer's Secret and CRL carry an owner reference: the garbage collector removes them;
        its roots leave the bundles when the operator sees it gone.)
        """
        key = key_of(body)
        try:
            issuer = Issuer.from_body(body)
        except ValueError:
            self.forget(key)  # an invalid spec made nothing that needs removing here
            return []
        self.distribution.leaving.add(key)
        async with self._lock(key):
            secret = await self.sources.self_signed.remove(issuer)
            crl = await self.crl.remove(issuer)
        removed = [r for r in (secret, crl) if r is not None]
        # Without the issuer's lock: a bundle's sync may load other issuers.
        removed += await self.distribution.remove(issuer)
        self.forget(key)
        self.distribution.leaving.discard(key)
        return removed

"""Usage per ServiceAccount, kept in memory, persisted in ConfigMaps, weighed against the
declared rules of each MachineIdentity.

- :meth:`UsageStore.ingest` counts a parsed batch in one step (no ``await`` inside, so a batch
  is applied whole or not at all) and skips events whose auditID it already counted. The IDs
  are remembered in memory only: a batch is acknowledged long before it is persisted, so a
  batch the API server sends again after a restart was never persisted, and counting it then
  is right.
- :meth:`UsageStore.flush` writes one ConfigMap per ServiceAccount that changed, in the
  operator's namespace (tenants cannot edit or erase the evidence of their own use; its form is
  :mod:`nhi.builders.usage`'s). Run every ``flush_interval`` (60 s by default): a restart
  loses at most that much usage.
- :meth:`UsageStore.assess` writes ``status.usage`` and the UnusedPermissions condition of
  every MachineIdentity whose rules' verdict changed (:mod:`nhi.reconcilers.usage_status`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from nhi import metrics_usage as metrics
from nhi.builders.usage import (
    LOG_CHECKPOINT,
    PERSON_MINTS,
    STATE_CONFIGMAP,
    USAGE_LABEL,
    book_of,
    build_configmap,
    build_state_configmap,
)
from nhi.k8s.client import Api, ApiError
from nhi.k8s.events import EventRecorder
from nhi.models import conditions as cond
from nhi.models.identity import MachineIdentity
from nhi.models.usage import (
    AuditError,
    Mint,
    Observation,
    UsageBook,
    mints_from_json,
    mints_to_json,
)
from nhi.policies import usage as policy
from nhi.reconcilers import usage_findings, usage_status
from nhi.reconcilers.usage_status import PolicyScope

log = logging.getLogger("nhi.usage")

#: Most tokens minted by a person kept in the state ConfigMap (the most recent ones).
MAX_PERSON_MINTS = 1_000
#: How many auditIDs are remembered to recognise a replayed batch.
SEEN_IDS = 200_000
#: Most new behaviours reported as Events per pass (all are counted in the metric).
MAX_NOVELTIES = 100
#: Seconds between two attempts to read the persisted usage back.
LOAD_RETRY = 2.0
#: Most minted tokens remembered (their lineage: who minted them, when, from where).
MAX_MINTS = 50_000

BookKey = tuple[str, str]  # the ServiceAccount's (namespace, name)


class IdentityScope(PolicyScope, Protocol):
    """What the store reads of the identity cache (nhi.handlers.identity_cache)."""

    def identity_bodies(self) -> list[dict[str, Any]]: ...


class UsageStore:
    def __init__(
        self,
        api: Api,
        operator_namespace: str,
        clock: Callable[[], dt.datetime],
        *,
        unused_after: dt.timedelta = policy.DEFAULT_UNUSED_AFTER,
        flush_interval: float = 60.0,
        learning_window: dt.timedelta = policy.DEFAULT_LEARNING_WINDOW,
        events: EventRecorder | None = None,
        namespaces: Iterable[str] = (),
    ) -> None:
        self.api = api
        #: The operator's namespaces (--namespace); empty: every namespace. The usage of a
        #: ServiceAccount elsewhere is not this operator's to count nor to report on.
        self.scope = frozenset(namespaces)
        self.namespace = operator_namespace
        self.clock = clock
        self.unused_after = unused_after
        self.flush_interval = flush_interval
        self.learning_window = learning_window
        self.events = events
        #: New behaviours seen since the last pass, reported as Events by it (bounded).
        self.novelties: list[Observation] = []
        #: Tokens minted by a TokenRequest, by credential ID (the oldest forgotten first).
        self.mints: dict[str, Mint] = {}
        #: The operator's own user names: the tokens it mints are not a person's.
        self.own_users: set[str] = set()
        #: Uses of tokens minted by a person since the last pass, reported as Events by it.
        self.human_uses: list[tuple[Observation, Mint]] = []
        #: Uses of pod-bound tokens from an address not yet checked against the pod's.
        self.pod_uses: dict[tuple[str, str], Observation] = {}
        self.pod_checked: set[tuple[str, str]] = set()
        self._reported: set[str] = set()
        #: A token minted by a person (or its report) not persisted yet.
        self._mints_dirty = False
        self.books: dict[BookKey, UsageBook] = {}
        self.dirty: set[BookKey] = set()
        #: Hashes of the auditIDs counted (in this process: the hash is per process), oldest
        #: first in ``order``: 200,000 of them take about 15 MB, as strings about 45.
        self.seen: set[int] = set()
        self.order: deque[int] = deque()
        #: Since when usage is observed (kept in a ConfigMap across restarts).
        self.since: dt.datetime = clock()
        self._task: asyncio.Task[None] | None = None
        #: Set while this replica is the active one (peering); None: always active.
        self.active: asyncio.Event | None = None
        #: The persisted usage is read back: flushing before would overwrite it with less.
        self.loaded = False
        #: Where the file-tailing source stopped (nhi.reconcilers.usage_log), persisted with
        #: the usage; and what was persisted last.
        self.log_checkpoint = ""
        self._log_checkpoint_written = ""

    # ------------------------------------------------------------------ ingestion

    def ingest(
        self, observations: Sequence[Observation], mints: Sequence[Mint] = ()
    ) -> tuple[int, int]:
        """Count a whole batch; returns (counted, replayed). Synchronous on purpose."""
        if self.scope:
            observations = [o for o in observations if o.namespace in self.scope]
            mints = [m for m in mints if m.namespace in self.scope]
        for mint in mints:
            self.mints[mint.credential_id] = mint
            if len(self.mints) > MAX_MINTS:
                del self.mints[next(iter(self.mints))]
            if mint.by_person:
                self._mints_dirty = True
        counted = replayed = 0
        for obs in observations:
            audit = hash(obs.audit_id)
            if audit in self.seen:
                replayed += 1
                continue
            self.seen.add(audit)
            self.order.append(audit)
            if len(self.order) > SEEN_IDS:
                self.seen.discard(self.order.popleft())
            key = (obs.namespace, obs.service_account)
            book = self.books.get(key)
            if book is None:
                book = self.books[key] = UsageBook(*key)
            if book.record(obs) and policy.after_learning(book.since, obs.at, self.learning_window):
                metrics.usage_new_behaviours.labels(obs.namespace).inc()
                if len(self.novelties) < MAX_NOVELTIES:
                    self.novelties.append(obs)
            self.dirty.add(key)
            counted += 1
            if obs.credential_id:
                self._lineage(obs)
                self._pod_use(obs)
            if obs.denied:
                metrics.usage_denied_requests.labels(obs.namespace).inc()
            else:
                metrics.usage_events.inc()
        metrics.usage_replayed_events.inc(replayed)
        return counted, replayed

    def _pod_use(self, obs: Observation) -> None:
        """A pod-bound token used from an address: checked against the pod's once (per pass)."""
        if not obs.pod or not obs.source_ip:
            return
        key = (obs.credential_id, obs.source_ip)
        if key in self.pod_checked or key in self.pod_uses:
            return
        if len(self.pod_uses) < MAX_NOVELTIES:
            self.pod_uses[key] = obs

    def last_seen(self) -> dict[BookKey, dt.datetime]:
        """Each ServiceAccount's last request seen (for the inventory's unused rule)."""
        return {
            key: dt.datetime.fromtimestamp(book.last, dt.UTC)
            for key, book in self.books.items()
            if book.last
        }

    async def check_pods(self, managers: Mapping[BookKey, Mapping[str, Any]]) -> int:
        """See :func:`nhi.reconcilers.usage_findings.check_pods`."""
        return await usage_findings.check_pods(self, managers)

    def _lineage(self, obs: Observation) -> None:
        """A token a person minted, used: a finding, once per credential."""
        mint = self.mints.get(obs.credential_id)
        if mint is None or not mint.by_person or mint.minted_by in self.own_users:
            return
        if obs.credential_id in self._reported:
            return
        self._reported.add(obs.credential_id)
        self._mints_dirty = True
        if len(self._reported) > MAX_MINTS:
            self._reported.clear()  # at worst a credential is reported once more
        metrics.usage_person_minted_tokens.labels(obs.namespace).inc()
        if len(self.human_uses) < MAX_NOVELTIES:
            self.human_uses.append((obs, mint))

    # ------------------------------------------------------------------ persistence

    async def whoami(self) -> None:
        """The operator's own user name (a SelfSubjectReview): tokens it mints are not a
        person's. Without an answer, its tokens may be reported as minted by a person."""
        try:
            review = await self.api.request(
                "POST",
                "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
            )
            name = ((review.get("status") or {}).get("userInfo") or {}).get("username")
        except ApiError as err:
            log.error("could not tell who the operator is", extra={"error": str(err)})
            return
        if name:
            self.own_users.add(str(name))

    async def load(self) -> None:
        """Read back every persisted book and the time observation began."""
        await self.whoami()
        state = await self.api.get("ConfigMap", self.namespace, STATE_CONFIGMAP)
        if state is None:
            since = self.clock().strftime("%Y-%m-%dT%H:%M:%SZ")
            await self.api.apply(build_state_configmap(self.namespace, since))
        else:
            since = str((state.get("data") or {}).get("since") or "")
            self.log_checkpoint = str((state.get("data") or {}).get(LOG_CHECKPOINT) or "")
            self._log_checkpoint_written = self.log_checkpoint
            self._load_mints(str((state.get("data") or {}).get(PERSON_MINTS) or ""))
        try:
            self.since = dt.datetime.fromisoformat(since)
        except ValueError:
            self.since = self.clock()
        persisted: list[UsageBook] = []
        async for cm in self.api.iterate(
            "ConfigMap", self.namespace, label_selector=f"{USAGE_LABEL}=serviceaccount"
        ):
            book = book_of(cm)
            if book is not None:
                persisted.append(book)
        # All read: merged in one step, so a failed read above merges nothing twice.
        for book in persisted:
            key = (book.namespace, book.service_account)
            fresh = self.books.get(key)
            if fresh is not None:  # counted while loading: add the persisted counts
                fresh.merge(book)
            else:
                self.books[key] = book
        self.loaded = True
        log.info("loaded usage", extra={"serviceAccounts": len(self.books)})

    def _load_mints(self, text: str) -> None:
        """Where the tokens minted by a person came from, as persisted (what arrived since
        loading is kept as it is)."""
        try:
            mints, reported = mints_from_json(text)
        except AuditError as err:
            log.error("the persisted minted tokens are unreadable", extra={"error": str(err)})
            return
        for mint in mints:
            self.mints.setdefault(mint.credential_id, mint)
        self._reported |= reported

    def _person_mints(self) -> str:
        person = [m for m in self.mints.values() if m.by_person][-MAX_PERSON_MINTS:]
        return mints_to_json(person, self._reported)

    async def flush(self) -> int:
        """Persist every book that changed since the last flush; returns how many. Nothing
        before the persisted books are loaded: that would overwrite them with less."""
        if not self.loaded:
            return 0
        keys, self.dirty = self.dirty, set()
        written = 0
        for key in sorted(keys):
            book = self.books.get(key)
            if book is None:
                continue
            try:
                await self.api.apply(build_configmap(book, self.namespace))
            except ApiError as err:
                self.dirty.add(key)
                metrics.usage_flushes.labels("failure").inc()
                log.error(
                    "could not persist usage",
                    extra={"serviceAccount": f"{key[0]}/{key[1]}", "error": str(err)},
                )
                continue
            metrics.usage_flushes.labels("success").inc()
            written += 1
        await self._write_checkpoint()
        return written

    async def _write_checkpoint(self) -> None:
        """After the books: a crash between the two reads some lines again (at most one
        flush interval); the other order would lose them."""
        data: dict[str, str] = {}
        if self.log_checkpoint != self._log_checkpoint_written and not self.dirty:
            data[LOG_CHECKPOINT] = self.log_checkpoint
        if self._mints_dirty:
            data[PERSON_MINTS] = self._person_mints()
        if not data:
            return
        try:
            await self.api.patch("ConfigMap", self.namespace, STATE_CONFIGMAP, {"data": data})
        except ApiError as err:
            log.error("could not persist the usage state", extra={"error": str(err)})
            return
        self._mints_dirty = False
        self._log_checkpoint_written = data.get(LOG_CHECKPOINT, self._log_checkpoint_written)

    # ------------------------------------------------------------------ verdicts

    def verdict(
        self, identity: MachineIdentity, now: dt.datetime, after: dt.timedelta | None = None
    ) -> tuple[dict[str, object], list[cond.Condition]]:
        """See :func:`nhi.reconcilers.usage_status.verdict`."""
        return usage_status.verdict(self, identity, now, after)

    async def assess(
        self, bodies: Iterable[Mapping[str, Any]], scope: PolicyScope | None = None
    ) -> int:
        """See :func:`nhi.reconcilers.usage_status.assess`."""
        return await usage_status.assess(self, bodies, scope)

    def report_novelties(self, bodies: Iterable[Mapping[str, Any]]) -> int:
        """See :func:`nhi.reconcilers.usage_findings.report`."""
        return usage_findings.report(self, bodies)

    # ------------------------------------------------------------------ loop

    def is_active(self) -> bool:
        """May this replica count and write (always, without peering)?"""
        return self.active is None or self.active.is_set()

    def _forget(self) -> None:
        """A standby keeps nothing: what it knew goes stale while the active replica counts;
        it loads the persisted usage again when it becomes active."""
        if self.loaded or self.books:
            log.info("usage set aside: this replica is a standby")
        self.books, self.dirty, self.loaded = {}, set(), False
        self.seen, self.order = set(), deque()
        self.novelties, self.human_uses, self.pod_uses = [], [], {}
        self.log_checkpoint = self._log_checkpoint_written = ""

    def start(self, scope: IdentityScope, active: asyncio.Event | None = None) -> None:
        self.active = active
        self._task = asyncio.create_task(self._run(scope), name="nhi-usage-flush")

    async def _run(self, scope: IdentityScope) -> None:
        while True:
            try:
                if not self.is_active():
                    self._forget()
                elif not self.loaded:
                    await self.load()
                else:
                    await self.flush()
                    bodies = scope.identity_bodies()
                    self.report_novelties(bodies)
                    await self.check_pods(usage_findings.managers_of(bodies))
                    await self.assess(bodies, scope)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log.error("usage pass failed", extra={"error": repr(err)})
            await asyncio.sleep(self.flush_interval if self.loaded else LOAD_RETRY)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        try:
            await self.flush()
        except Exception as err:
            log.error("could not persist usage at shut-down", extra={"error": repr(err)})

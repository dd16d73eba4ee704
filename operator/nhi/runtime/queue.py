"""A controller work queue: deduplicated keys, one worker per key at a time, timed requeues.

Many events about one identity (its own changes, its children's, a due renewal) collapse into
one reconcile. A key being processed is never processed twice at once; if it is added again
meanwhile, it runs once more after the current run. Timed work (renewals, grace periods) sits
in one heap ordered by due time, so idle identities cost no timer and no request.

Nothing makes a key run faster than its backoff: a key whose last run failed waits for its
retry (0.5 s doubled at each failure, up to ``max_backoff``) whatever adds it meanwhile (the
events of its own writes, a timed look), unless its inputs changed (``add(key, fresh=True)``:
someone edited it). A next look planned for a time already past (:meth:`schedule_next`) backs
off the same way instead of running again at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

log = logging.getLogger("nhi.workqueue")


class WorkQueue(Generic[K]):
    def __init__(
        self,
        process: Callable[[K], Awaitable[None]],
        *,
        workers: int = 32,
        max_backoff: float = 300.0,
        monotonic: Callable[[], float] = time.monotonic,
        on_retry: Callable[[K], None] = lambda key: None,
    ) -> None:
        self._process = process
        #: Told about every failed run (e.g. to count it), before its retry is scheduled.
        self._on_retry = on_retry
        self._workers = workers
        self._max_backoff = max_backoff
        self._monotonic = monotonic
        self._ready: asyncio.Queue[K] = asyncio.Queue()
        self._queued: set[K] = set()
        self._active: set[K] = set()
        self._dirty: set[K] = set()
        self._heap: list[tuple[float, int, K]] = []
        self._due: dict[K, float] = {}
        self._seq = 0
        self._failures: dict[K, int] = {}
        #: Keys whose last run failed: until their retry runs, nothing else runs them.
        self._backing_off: set[K] = set()
        #: Consecutive next looks planned in the past, by key (see schedule_next).
        self._overdue: dict[K, int] = {}
        #: Keys added with fresh=True while they ran: they run again at once, failed or not.
        self._fresh: set[K] = set()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._idle = asyncio.Event()
        self._idle.set()

    # ------------------------------------------------------------------ API

    def add(self, key: K, *, fresh: bool = False) -> None:
        """Process ``key`` as soon as a worker is free (deduplicated), or when its retry is
        due if its last run failed. ``fresh``: its inputs changed, so its failure history is
        dropped and it runs at once."""
        if fresh:
            self._reset(key)
            self._due.pop(key, None)
        elif key in self._backing_off and key in self._due:
            return  # its retry is scheduled: no sooner
        if key in self._active:
            self._dirty.add(key)
            if fresh:
                self._fresh.add(key)
            return
        if key in self._queued:
            return
        self._queued.add(key)
        self._idle.clear()
        self._ready.put_nowait(key)

    def add_after(self, key: K, delay: float) -> None:
        """Process ``key`` after ``delay`` seconds; an earlier due time for it wins."""
        if delay <= 0:
            self.add(key)
            return
        due = self._monotonic() + delay
        current = self._due.get(key)
        if current is not None and (current <= due or key in self._backing_off):
            return  # an earlier look is planned, or a retry that must not come sooner
        self._due[key] = due
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, key))
        self._wake.set()

    def schedule_next(self, key: K, delay: float) -> None:
        """Plan the next look at ``key`` after a run that succeeded, ``delay`` seconds on.

        A delay that is not positive (the run planned a time already past, e.g. a renewal
        time before its issuance) must not make the key spin: it backs off like a failure,
        until a run plans a time in the future again.
        """
        if delay > 0:
            self._overdue.pop(key, None)
            self.add_after(key, delay)
            return
        n = self._overdue.get(key, 0) + 1
        self._overdue[key] = n
        backoff = self._backoff(n)
        log.warning(
            "next look was planned in the past; backing off",
            extra={"item": str(key), "overdue_by": -delay, "retry_in": backoff},
        )
        self.add_after(key, backoff)

    def forget(self, key: K) -> None:
        """Drop timed work and failure history of a key (e.g. when its object is gone)."""
        self._due.pop(key, None)
        self._reset(key)

    def _reset(self, key: K) -> None:
        self._fresh.discard(key)
        self._failures.pop(key, None)
        self._backing_off.discard(key)
        self._overdue.pop(key, None)

    def _backoff(self, n: int) -> float:
        return min(self._max_backoff, 0.5 * 2.0 ** min(n, 20))

    def scheduled(self) -> int:
        return len(self._due)

    def pending(self) -> int:
        return len(self._queued) + len(self._active)

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def start(self) -> None:
        if self._tasks:
            return
        self._tasks = [
            asyncio.create_task(self._worker(), name=f"nhi-worker-{i}")
            for i in range(self._workers)
        ]
        self._tasks.append(asyncio.create_task(self._timer(), name="nhi-scheduler"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    # ------------------------------------------------------------------ internals

    async def _timer(self) -> None:
        while True:
            now = self._monotonic()
            while self._heap and self._heap[0][0] <= now:
                due, _, key = heapq.heappop(self._heap)
                if self._due.get(key) == due:
                    del self._due[key]
                    self.add(key)
            timeout = self._heap[0][0] - now if self._heap else None
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _worker(self) -> None:
        while True:
            key = await self._ready.get()
            self._queued.discard(key)
            self._active.add(key)
            try:
                await self._process(key)
                self._failures.pop(key, None)
                self._backing_off.discard(key)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                n = self._failures.get(key, 0) + 1
                self._failures[key] = n
                delay = self._backoff(n)
                log.warning(
                    "reconcile failed, retrying",
                    extra={"item": str(key), "error": str(err), "retry_in": delay},
                )
                try:
                    self._on_retry(key)
                except Exception as hook_err:
                    log.warning("retry hook failed", extra={"error": str(hook_err)})
                # Whatever was planned for it (a timed look, the events of its own writes
                # while it ran) waits for the retry; an edit made while it ran does not.
                self._due.pop(key, None)
                if key not in self._fresh:
                    self._dirty.discard(key)
                self.add_after(key, delay)
                self._backing_off.add(key)
            finally:
                self._active.discard(key)
                fresh = key in self._fresh
                self._fresh.discard(key)
                if key in self._dirty:
                    self._dirty.discard(key)
                    self.add(key, fresh=fresh)
                if not self._queued and not self._active:
                    self._idle.set()

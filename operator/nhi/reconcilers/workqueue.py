"""A controller work queue: deduplicated keys, one worker per key at a time, timed requeues.

Many events about one identity (its own changes, its children's, a due renewal) collapse into
one reconcile. A key being processed is never processed twice at once; if it is added again
meanwhile, it runs once more after the current run. Timed work (renewals, grace periods) sits
in one heap ordered by due time, so idle identities cost no timer and no request.
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
    ) -> None:
        self._process = process
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
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._idle = asyncio.Event()
        self._idle.set()

    # ------------------------------------------------------------------ API

    def add(self, key: K) -> None:
        """Process ``key`` as soon as a worker is free (deduplicated)."""
        if key in self._active:
            self._dirty.add(key)
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
        if current is not None and current <= due:
            return
        self._due[key] = due
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, key))
        self._wake.set()

    def forget(self, key: K) -> None:
        """Drop timed work and failure history of a key (e.g. when its object is gone)."""
        self._due.pop(key, None)
        self._failures.pop(key, None)

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
            except asyncio.CancelledError:
                raise
            except Exception as err:
                n = self._failures.get(key, 0) + 1
                self._failures[key] = n
                delay = min(self._max_backoff, 0.5 * 2 ** min(n, 20))
                log.warning(
                    "reconcile failed, retrying",
                    extra={"item": str(key), "error": str(err), "retry_in": delay},
                )
                self.add_after(key, delay)
            finally:
                self._active.discard(key)
                if key in self._dirty:
                    self._dirty.discard(key)
                    self.add(key)
                if not self._queued and not self._active:
                    self._idle.set()

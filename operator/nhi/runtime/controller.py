"""One controller: watch caches -> deduplicated work queue with a timer heap -> reconcile(key).

A :class:`Controller` is given its reconcile function (``key -> Result``), so nothing here
knows what it reconciles. Watch events become keys (:meth:`Controller.watch`, or the caller's
own consumers calling :meth:`Controller.add`); the :class:`~nhi.runtime.queue.WorkQueue`
runs each key on one worker at a time, retries a failure with backoff and keeps timed work
in one heap. No reconcile starts before the watch caches are ``ready`` nor while ``active``
is clear (a standby replica). The :class:`Result` says when to look at the key again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from nhi.runtime.clock import Clock
from nhi.runtime.informer import Informer, Key
from nhi.runtime.queue import WorkQueue

K = TypeVar("K", bound=Hashable)

#: A planned look runs this long after its due time, so the reconcile then finds it past.
DUE_SLACK = 0.05


@dataclass(frozen=True)
class Result:
    """When to reconcile the key again: at ``requeue_at`` (a time already past backs off
    instead of running again at once), else ``requeue_after`` seconds on, else on its next
    event only."""

    requeue_at: dt.datetime | None = None
    requeue_after: float | None = None


def _ignore(key: Any) -> None:
    return None


class Controller(Generic[K]):
    def __init__(
        self,
        kind: str,
        reconcile: Callable[[K], Awaitable[Result]],
        *,
        clock: Clock,
        workers: int = 32,
        ready: asyncio.Event | None = None,
        active: asyncio.Event | None = None,
        on_error: Callable[[K], None] = _ignore,
        max_backoff: float = 300.0,
    ) -> None:
        self.kind = kind
        self.clock = clock
        self._reconcile = reconcile
        self._ready = ready
        self._active = active
        self.queue: WorkQueue[K] = WorkQueue(
            self._process,
            workers=workers,
            max_backoff=max_backoff,
            monotonic=clock.monotonic,
            on_retry=on_error,
        )

    # ------------------------------------------------------------------ input

    def add(self, key: K, *, fresh: bool = False) -> None:
        """Reconcile ``key`` (``fresh``: its inputs changed, so at once even after a failure)."""
        self.queue.add(key, fresh=fresh)

    def add_after(self, key: K, delay: float) -> None:
        """Reconcile ``key`` in ``delay`` seconds, or sooner if so planned already."""
        self.queue.add_after(key, delay)

    def requeue(self, keys: Iterable[K]) -> None:
        for key in keys:
            self.queue.add(key)

    def forget(self, key: K) -> None:
        """The key's object is gone: drop its timed work and failure history."""
        self.queue.forget(key)

    def watch(
        self,
        informers: Sequence[Informer],
        keys: Callable[[Key, Any, Any], Iterable[K]],
        *,
        delay: float = 0.0,
    ) -> None:
        """Reconcile ``keys(key, old, new)`` on every change the informers report; with a
        ``delay``, that long after the first change (later ones fold into the same run)."""

        def changed(key: Key, old: Any, new: Any) -> None:
            for k in keys(key, old, new):
                if delay > 0:
                    self.queue.add_after(k, delay)
                else:
                    self.queue.add(k)

        for informer in informers:
            informer.subscribe(changed)

    def gate(
        self, *, ready: asyncio.Event | None = None, active: asyncio.Event | None = None
    ) -> None:
        """Hold reconciles until ``ready`` and while ``active`` is clear (for a controller
        built before the caches and the peering gate it waits for)."""
        self._ready = ready
        self._active = active

    # ------------------------------------------------------------------ running

    def start(self) -> None:
        self.queue.start()

    async def stop(self) -> None:
        await self.queue.stop()

    async def _process(self, key: K) -> None:
        if self._ready is not None and not self._ready.is_set():
            await self._ready.wait()  # never decide on half-listed caches
        if self._active is not None and not self._active.is_set():
            await self._active.wait()  # a standby replica (peering): wait for our turn
        result = await self._reconcile(key)
        if result.requeue_at is not None:
            delay = (result.requeue_at - self.clock.now()).total_seconds()
            # A due time already past backs off instead of running again at once.
            self.queue.schedule_next(key, delay + DUE_SLACK if delay > 0 else delay)
        elif result.requeue_after is not None:
            self.queue.add_after(key, result.requeue_after)

"""The watch caches of one operator: its informers, listed a few at a time, ready together.

No reconcile may decide on half-listed caches (a restart would re-create every child not
listed yet): :attr:`WatchCaches.synced` is set once every informer has its first listing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from nhi.k8s.client import Api
from nhi.runtime.clock import Clock
from nhi.runtime.informer import Informer, scopes

log = logging.getLogger("nhi.runtime")

#: Informers listing at the same time (start-up, or a relist after 410 Gone). A parsed page of
#: 500 objects is several MB of small Python objects; listing every resource at once at
#: start-up multiplies that peak, which the process then keeps as fragmented heap. Two at a
#: time list about as fast (the API server is the limit).
LIST_CONCURRENCY = 2


class WatchCaches:
    def __init__(
        self,
        api: Api,
        clock: Clock,
        namespaces: Sequence[str] = (),
        list_concurrency: int = LIST_CONCURRENCY,
    ) -> None:
        self.api = api
        self.clock = clock
        #: The namespaces served (empty: all); namespaced kinds are watched only there.
        self.namespaces = tuple(namespaces)
        self.list_concurrency = list_concurrency
        self.informers: list[Informer] = []
        self.synced = asyncio.Event()
        self._slots: asyncio.Semaphore | None = None
        self._sync_task: asyncio.Task[None] | None = None

    def add(
        self, kind: str, *, namespaced: bool = True, also: str = "", **kw: Any
    ) -> list[Informer]:
        """Watch ``kind`` (in the namespaces served and ``also``, unless cluster-scoped);
        ``kw`` are :class:`Informer`'s (transform, on_change, label_selector...)."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.list_concurrency)
        where, keep = scopes(self.namespaces, also) if namespaced else ([None], ())
        added = [
            Informer(
                self.api,
                kind,
                namespace=ns,
                namespaces=keep,
                list_slots=self._slots,
                monotonic=self.clock.monotonic,
                **kw,
            )
            for ns in where
        ]
        self.informers += added
        return added

    def of(self, kind: str) -> list[Informer]:
        return [i for i in self.informers if i.kind == kind]

    def start(self, on_synced: Callable[[], None] = lambda: None) -> None:
        """Start every informer; once all have listed, set :attr:`synced`, then ``on_synced``."""
        for informer in self.informers:
            informer.start()
        self._sync_task = asyncio.create_task(self._wait(on_synced), name="nhi-caches-synced")

    async def _wait(self, on_synced: Callable[[], None]) -> None:
        started = self.clock.monotonic()
        await asyncio.gather(*(i.synced.wait() for i in self.informers))
        self.synced.set()
        on_synced()
        log.info(
            "watch caches ready",
            extra={
                "informers": len(self.informers),
                "objects": sum(len(i.objects) for i in self.informers),
                "seconds": round(self.clock.monotonic() - started, 2),
            },
        )

    async def stop(self) -> None:
        if self._sync_task is not None:
            self._sync_task.cancel()
        await asyncio.gather(*(i.stop() for i in self.informers))
        self.informers = []

"""The IdentityPolicy status controller: what drives it, and its reconcile.

A policy is reconciled when it changes, and at most ``interval`` seconds after any
MachineIdentity or namespace changed (a burst of changes folds into one run per policy).
Its status is computed from the watch caches and patched only when it changed, so a run
that finds nothing new costs no request; identities are parsed again only when one changed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from nhi.handlers.identity_cache import IdentityCache
from nhi.k8s.client import Api
from nhi.reconcilers.policy_status import Identities, PolicyStatusWriter
from nhi.runtime.caches import WatchCaches
from nhi.runtime.clock import Clock
from nhi.runtime.controller import Controller, Result
from nhi.runtime.informer import Key

#: Policies reconciled at the same time (each run is computed from memory, then one patch).
WORKERS = 4


class PolicyStatus:
    def __init__(
        self,
        api: Api,
        cache: IdentityCache,
        clock: Clock,
        interval: float,
        ready: asyncio.Event,
    ) -> None:
        self.cache = cache
        self.clock = clock
        self.interval = interval
        self.writer = PolicyStatusWriter(api, clock.now)
        self.controller: Controller[Key] = Controller(
            "IdentityPolicy", self.reconcile, clock=clock, workers=WORKERS, ready=ready
        )
        self._identities: Identities | None = None
        self._version = -1

    def watch(self, caches: WatchCaches) -> None:
        self.controller.watch(caches.of("IdentityPolicy"), self._itself)
        self.controller.watch(
            [*caches.of("MachineIdentity"), *caches.of("Namespace")],
            self._every_policy,
            delay=self.interval,
        )

    def _itself(self, key: Key, old: Any, new: Any) -> Iterable[Key]:
        return (key,)

    def _every_policy(self, key: Key, old: Any, new: Any) -> Iterable[Key]:
        return self.cache.policy_keys()

    async def reconcile(self, key: Key) -> Result:
        body = self.cache.policy_body(key)
        if body is None:
            self.controller.forget(key)
            if not self.cache.policy_keys():
                # Nothing to write: do not keep every identity parsed for nothing.
                self.writer.forget()
                self._identities = None
            return Result()
        written = await self.writer.write(
            body, self._current(), self.cache.namespace_labels, self.clock.now()
        )
        # Refused by the API server: try again as a change would (nothing else may come).
        return Result(requeue_after=self.interval) if written is None else Result()

    def _current(self) -> Identities:
        """The identities as parsed for the last run, unless one changed since."""
        version = self.cache.store.version
        if self._identities is None or version != self._version:
            self._identities = self.writer.identities(self.cache.identity_bodies())
            self._version = version
        return self._identities

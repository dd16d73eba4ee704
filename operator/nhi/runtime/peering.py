"""Which replica reconciles: kopf's peering rule, read from kopf's peering objects.

With ``--peering`` several replicas run and one is active. kopf decides that for its own
handlers (the issuers) from a ``ClusterKopfPeering`` (or a ``KopfPeering`` per served
namespace) whose ``status`` maps each replica's identity to its priority and when it was last
seen. The operator's own controllers do not go through kopf (their watch caches are
:mod:`nhi.runtime.informer` s), so :class:`PeeringGate` applies kopf's rule to the same
objects: a replica is active while no other live replica has a priority as high as
its own. The operator gives kopf its identity, so both read the same entry as "us".
"""

from __future__ import annotations

import asyncio
import datetime as dt
import getpass
import logging
import os
import secrets
import socket
from collections.abc import Callable, Mapping
from typing import Any

from nhi.k8s.client import Api
from nhi.runtime.clock import SystemClock
from nhi.runtime.informer import Informer, Key, scopes

log = logging.getLogger("nhi.peering")

#: How often the gate looks again without an event: a peer that stops renewing its entry
#: changes nothing in the object, it only becomes too old.
RECHECK_SECONDS = 2.0


def own_identity() -> str:
    """This replica's peering identity, as kopf would make it (the pod's name in a pod)."""
    pod = os.environ.get("POD_ID")
    if pod:
        return pod
    now = SystemClock().now().strftime("%Y%m%d%H%M%S")
    return f"{getpass.getuser()}@{socket.gethostname()}/{now}/{secrets.token_hex(3)}"


def _when(text: Any) -> dt.datetime | None:
    try:
        when = dt.datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def blockers(
    status: Mapping[str, Any], identity: str, priority: int, now: dt.datetime
) -> list[str]:
    """The live peers (other than ``identity``) whose priority is at least ``priority``:
    while there is one, kopf pauses this replica (a tie pauses both)."""
    out = []
    for peer, info in status.items():
        if peer == identity or not isinstance(info, Mapping):
            continue
        seen = _when(info.get("lastseen"))
        try:
            lifetime = float(info.get("lifetime", 60))
            their = int(info.get("priority", 0))
        except (TypeError, ValueError):
            continue
        if seen is None or seen + dt.timedelta(seconds=lifetime) <= now:
            continue  # dead
        if their >= priority:
            out.append(peer)
    return sorted(out)


class PeeringGate:
    """``active`` is set while this replica may reconcile; ``on_active`` runs when it becomes
    so (again). Without peering the gate is open from the start."""

    def __init__(
        self,
        api: Api,
        *,
        enabled: bool,
        name: str,
        namespaces: tuple[str, ...],
        identity: str,
        priority: int,
        clock: Callable[[], dt.datetime],
        on_active: Callable[[], None] | None = None,
    ) -> None:
        self.enabled = enabled
        self.name = name
        self.identity = identity
        self.priority = priority
        self.on_active = on_active
        self.clock = clock
        self.active = asyncio.Event()
        self._blocked_by: list[str] = []
        self._task: asyncio.Task[None] | None = None
        # kopf peers in a ClusterKopfPeering when cluster-wide, else in a KopfPeering in each
        # namespace it serves (globs: every namespace that matches).
        kind = "KopfPeering" if namespaces else "ClusterKopfPeering"
        where, keep = scopes(namespaces) if namespaces else ([None], ())
        self.informers = (
            [
                Informer(api, kind, namespace=ns, namespaces=keep, transform=self._status)
                for ns in where
            ]
            if enabled
            else []
        )

    def _status(self, obj: Mapping[str, Any]) -> Any:
        if (obj.get("metadata") or {}).get("name") != self.name:
            return None  # another operator's peering object
        return dict(obj.get("status") or {})

    def start(self) -> None:
        if not self.enabled:
            self.active.set()
            return
        for informer in self.informers:
            informer.on_change = self._changed
            informer.start()
        self._task = asyncio.create_task(self._recheck(), name="nhi-peering-gate")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await asyncio.gather(*(i.stop() for i in self.informers))

    def _changed(self, key: Key, old: Any, new: Any) -> None:
        self.evaluate()

    async def _recheck(self) -> None:
        while True:
            self.evaluate()
            await asyncio.sleep(RECHECK_SECONDS)

    def evaluate(self) -> None:
        if not all(i.synced.is_set() for i in self.informers):
            return  # not listed yet: stay as we are (closed at start)
        now = self.clock()
        blocked: list[str] = []
        for informer in self.informers:
            for status in informer.objects.values():
                blocked += blockers(status, self.identity, self.priority, now)
        if blocked:
            if self.active.is_set() or blocked != self._blocked_by:
                log.info(
                    "pausing: a peer with a priority as high is active", extra={"peers": blocked}
                )
            self.active.clear()
        elif not self.active.is_set():
            log.info("active: no peer with a priority as high", extra={"identity": self.identity})
            self.active.set()
            if self.on_active is not None:
                self.on_active()
        self._blocked_by = blocked

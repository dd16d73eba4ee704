"""Kubernetes Events about the operator's objects: the audit trail users read with kubectl.

Messages carry identifiers only (names, serials, fingerprints, expiry), never a value.

A reconcile does not wait for its Events: :meth:`EventRecorder.post` builds the Event at the
moment of the change and sends it from a background task, a few at a time, so posting never
adds latency to a reconcile and a burst of reconciles cannot flood the API server with Events.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from nhi.k8s.client import Api, ApiError
from nhi.models.duration import rfc3339

log = logging.getLogger("nhi.events")

COMPONENT = "nhi-operator"

#: Events sent at the same time from the background.
CONCURRENCY = 8
#: Events waiting to be sent; beyond this, new ones are dropped (and logged): Events are best
#: effort, and an API server that cannot keep up should not also make the operator grow.
BACKLOG = 10_000


def involved(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body.get("metadata") or {}
    ref = {
        "apiVersion": body.get("apiVersion", ""),
        "kind": body.get("kind", ""),
        "name": meta.get("name", ""),
        "uid": meta.get("uid", ""),
        "resourceVersion": meta.get("resourceVersion", ""),
    }
    if meta.get("namespace"):
        ref["namespace"] = meta["namespace"]
    return ref


class EventRecorder:
    def __init__(
        self,
        api: Api,
        *,
        namespace_fallback: str = "default",
        concurrency: int = CONCURRENCY,
        backlog: int = BACKLOG,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.api = api
        #: Stamps an Event built without a ``now`` of its own.
        self.clock = clock
        self.namespace_fallback = namespace_fallback
        self.backlog = backlog
        self._slots = asyncio.Semaphore(concurrency)
        self._pending: set[asyncio.Task[None]] = set()
        self.dropped = 0

    def build(
        self,
        body: Mapping[str, Any],
        type_: str,
        reason: str,
        message: str,
        now: dt.datetime | None = None,
    ) -> dict[str, Any]:
        """The Event about ``body``, stamped ``now`` (the moment of the change), unsent."""
        now = now or self.clock()
        ref = involved(body)
        namespace = ref.get("namespace") or self.namespace_fallback
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{ref['name']}.{uuid.uuid4().hex[:16]}", "namespace": namespace},
            "involvedObject": ref,
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": COMPONENT,
            "firstTimestamp": rfc3339(now),
            "lastTimestamp": rfc3339(now),
            "count": 1,
        }

    async def record(
        self,
        body: Mapping[str, Any],
        type_: str,
        reason: str,
        message: str,
        now: dt.datetime | None = None,
    ) -> None:
        """Post an Event and wait for it; failures are logged, never raised."""
        await self._send(self.build(body, type_, reason, message, now))

    def post(
        self,
        body: Mapping[str, Any],
        type_: str,
        reason: str,
        message: str,
        now: dt.datetime | None = None,
    ) -> None:
        """Post an Event from the background; the caller goes on at once."""
        if len(self._pending) >= self.backlog:
            self.dropped += 1
            log.warning("dropped an event: too many waiting", extra={"reason": reason})
            return
        task = asyncio.get_running_loop().create_task(
            self._send(self.build(body, type_, reason, message, now)), name="nhi-event"
        )
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _send(self, event: dict[str, Any]) -> None:
        async with self._slots:
            try:
                await self.api.create("Event", event["metadata"]["namespace"], event)
            except Exception as err:
                # Best effort, and a background task has nobody to raise to: logged only.
                error = str(err) if isinstance(err, ApiError) else repr(err)
                log.warning(
                    "could not post event", extra={"reason": event["reason"], "error": error}
                )

    def pending(self) -> int:
        """Events posted in the background and not sent yet."""
        return len(self._pending)

    async def drain(self) -> None:
        """Wait until the Events posted so far are sent (e.g. before closing the client)."""
        if self._pending:
            await asyncio.wait(set(self._pending))

    async def normal(self, body: Mapping[str, Any], reason: str, message: str) -> None:
        await self.record(body, "Normal", reason, message)

    async def warning(self, body: Mapping[str, Any], reason: str, message: str) -> None:
        await self.record(body, "Warning", reason, message)


class EventBatch:
    """Events of one reconcile, posted together: one Event per reason, listing each change.

    Provisioning an identity creates several children and issues several credentials; one
    Event per reason ("created ServiceAccount/a; created Role/b") keeps every change in the
    audit trail at a fraction of the API requests. :meth:`flush` hands them to the recorder's
    background poster and returns at once.
    """

    def __init__(self, recorder: EventRecorder, body: Mapping[str, Any]) -> None:
        self.recorder = recorder
        self.body = body
        self._items: dict[tuple[str, str], list[str]] = {}

    def normal(self, reason: str, message: str) -> None:
        self._items.setdefault(("Normal", reason), []).append(message)

    def warning(self, reason: str, message: str) -> None:
        self._items.setdefault(("Warning", reason), []).append(message)

    def flush(self) -> None:
        items, self._items = self._items, {}
        for (type_, reason), messages in items.items():
            self.recorder.post(self.body, type_, reason, "; ".join(messages))

"""Kubernetes Events about the operator's objects: the audit trail users read with kubectl.

Messages carry identifiers only (names, serials, fingerprints, expiry), never a value.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Mapping
from typing import Any

from nhi.k8s.client import Api, ApiError
from nhi.models.duration import rfc3339

log = logging.getLogger("nhi.events")

COMPONENT = "nhi-operator"


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
    def __init__(self, api: Api, *, namespace_fallback: str = "default") -> None:
        self.api = api
        self.namespace_fallback = namespace_fallback

    async def record(
        self,
        body: Mapping[str, Any],
        type_: str,
        reason: str,
        message: str,
        now: dt.datetime | None = None,
    ) -> None:
        """Post an Event; failures are logged, never raised (Events are best effort)."""
        now = now or dt.datetime.now(dt.UTC)
        ref = involved(body)
        namespace = ref.get("namespace") or self.namespace_fallback
        name = f"{ref['name']}.{uuid.uuid4().hex[:16]}"
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
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
        try:
            await self.api.create("Event", namespace, event)
        except (ApiError, OSError) as err:
            log.warning("could not post event", extra={"reason": reason, "error": str(err)})

    async def normal(self, body: Mapping[str, Any], reason: str, message: str) -> None:
        await self.record(body, "Normal", reason, message)

    async def warning(self, body: Mapping[str, Any], reason: str, message: str) -> None:
        await self.record(body, "Warning", reason, message)


class EventBatch:
    """Events of one reconcile, posted together: one Event per reason, listing each change.

    Provisioning an identity creates several children and issues several credentials; one
    Event per reason ("created ServiceAccount/a; created Role/b") keeps every change in the
    audit trail at a fraction of the API requests.
    """

    def __init__(self, recorder: EventRecorder, body: Mapping[str, Any]) -> None:
        self.recorder = recorder
        self.body = body
        self._items: dict[tuple[str, str], list[str]] = {}

    def normal(self, reason: str, message: str) -> None:
        self._items.setdefault(("Normal", reason), []).append(message)

    def warning(self, reason: str, message: str) -> None:
        self._items.setdefault(("Warning", reason), []).append(message)

    async def flush(self) -> None:
        items, self._items = self._items, {}
        for (type_, reason), messages in items.items():
            await self.recorder.record(self.body, type_, reason, "; ".join(messages))

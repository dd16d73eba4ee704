"""Writing a MachineIdentity's status: only when it changed, with a Warning Event when the
identity is not ready for a new reason, and the per-identity metrics."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from nhi import metrics
from nhi.k8s.client import Api
from nhi.k8s.events import EventRecorder
from nhi.models import conditions as cond
from nhi.models.identity import MachineIdentity
from nhi.models.meta import Phase
from nhi.reconcilers.identity_plan import Outcome, compute_status, event_ref, same_reason


class Written(Protocol):
    def __call__(self, obj: Mapping[str, Any]) -> None: ...


class StatusWriter:
    def __init__(
        self,
        api: Api,
        events: EventRecorder,
        written: Written,
        clock: Callable[[], dt.datetime],
    ) -> None:
        self.api = api
        self.events = events
        #: Told about every status written, so the identity cache knows before the watch.
        self.written = written
        self.clock = clock

    async def write(self, identity: MachineIdentity, outcome: Outcome) -> None:
        now = self.clock()
        status = compute_status(identity, outcome, now)
        if cond.status_changed(identity.status, status):
            written = await self.api.patch(
                "MachineIdentity",
                identity.namespace,
                identity.name,
                {"status": status},
                subresource="status",
            )
            self.written(written)
            if not outcome.ready and not same_reason(identity.status, outcome):
                self.events.post(event_ref(identity), "Warning", outcome.reason, outcome.message)
        metrics.observe_identity(
            identity.namespace,
            identity.name,
            identity.spec.owner,
            status["phase"],
            {c["type"]: c["status"] == cond.TRUE for c in status["conditions"]},
        )

    async def write_raw(self, body: Mapping[str, Any], outcome: Outcome) -> None:
        """Status for an identity whose spec could not even be parsed."""
        meta = body.get("metadata") or {}
        old = body.get("status") or {}
        now = self.clock()
        gen = int(meta.get("generation") or 0)
        conds = cond.kstatus_conditions(
            old.get("conditions") or [],
            ready=False,
            stalled=True,
            reason=outcome.reason,
            message=outcome.message,
            generation=gen,
            now=now,
        )
        status = {
            "observedGeneration": gen,
            "phase": old.get("phase") or Phase.PENDING,
            "conditions": conds,
        }
        if cond.status_changed(old, status):
            written = await self.api.patch(
                "MachineIdentity",
                meta.get("namespace"),
                meta.get("name", ""),
                {"status": status},
                subresource="status",
            )
            self.written(written)
            if not same_reason(old, outcome):
                self.events.post(body, "Warning", outcome.reason, outcome.message)
        spec = body.get("spec") or {}
        metrics.observe_identity(
            str(meta.get("namespace", "")),
            str(meta.get("name", "")),
            str(spec.get("owner") or ""),
            str(status["phase"]),
            {"Ready": False, "Reconciling": False, "Stalled": True},
        )

"""kopf handlers for MachineIdentity: turn its watch events into queued work.

Only the identities come through kopf (so a standby replica, paused by kopf's peering,
reconciles nothing). Their children, workloads and the rest of the context are watched by
the runtime's own caches (:mod:`nhi.k8s.informer`), and the clean-up on deletion runs from
the work queue under the operator's own finalizer (``nhi.dev/cleanup``): kopf writes nothing
to a MachineIdentity.
"""

from __future__ import annotations

from typing import Any

import kopf

from nhi.handlers import runtime

GROUP, VERSION = "nhi.dev", "v1alpha1"


@kopf.on.event(GROUP, VERSION, "machineidentities", id="nhi_identity_event")
async def identity_event(event: kopf.RawEvent, body: kopf.Body, **kwargs: Any) -> None:
    rt = runtime.get()
    rt.issuers.capture(kwargs)
    rt.identity_observed(body, deleted=event.get("type") == "DELETED")

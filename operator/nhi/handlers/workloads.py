"""Watch the workloads that may use identities and re-check identities when they change."""

from __future__ import annotations

from typing import Any

import kopf

from nhi.handlers import runtime
from nhi.models.workload import workload_from_body

WORKLOADS = (
    ("Deployment", "apps", "v1", "deployments"),
    ("StatefulSet", "apps", "v1", "statefulsets"),
    ("DaemonSet", "apps", "v1", "daemonsets"),
    ("Job", "batch", "v1", "jobs"),
    ("CronJob", "batch", "v1", "cronjobs"),
    ("Pod", "", "v1", "pods"),
)


def _register(kind: str, group: str, version: str, plural: str) -> None:
    index_id = f"nhi_workloads_{plural}"

    def index(body: kopf.Body, namespace: str | None, **_: Any) -> dict[str, Any] | None:
        workload = workload_from_body(kind, body)
        return {namespace or "": workload} if workload is not None else None

    async def on_event(namespace: str | None, **kwargs: Any) -> None:
        rt = runtime.get()
        rt.capture(kwargs)
        rt.requeue_namespace(namespace or "")

    kopf.index(group, version, plural, id=index_id)(index)
    kopf.on.event(group, version, plural, id=f"{index_id}_event")(on_event)


for _kind, _group, _version, _plural in WORKLOADS:
    _register(_kind, _group, _version, _plural)

"""Workloads that may use an identity: Deployments, StatefulSets, DaemonSets, Jobs, CronJobs
and bare Pods, reduced to what matching needs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nhi.models.identity import LabelSelector

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod")


@dataclass(frozen=True)
class Workload:
    kind: str
    namespace: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    template_labels: Mapping[str, str] = field(default_factory=dict)
    service_account: str = "default"

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.name}"

    def matched_by(self, selector: LabelSelector) -> bool:
        """The workload's own labels or its pod template's labels match the selector."""
        return selector.matches(self.labels) or selector.matches(self.template_labels)


def _pod_spec(kind: str, body: Mapping[str, Any]) -> Mapping[str, Any]:
    spec = body.get("spec") or {}
    if kind == "Pod":
        return spec
    if kind == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec")) or {}
    return ((spec.get("template") or {}).get("spec")) or {}


def _template_labels(kind: str, body: Mapping[str, Any]) -> Mapping[str, str]:
    spec = body.get("spec") or {}
    if kind == "Pod":
        return {}
    if kind == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec")) or {}
    return dict((((spec.get("template") or {}).get("metadata")) or {}).get("labels") or {})


def workload_from_body(kind: str, body: Mapping[str, Any]) -> Workload | None:
    """The workload, or None for objects another workload already represents (a Pod of a
    ReplicaSet, a Job of a CronJob)."""
    meta = body.get("metadata") or {}
    owners = meta.get("ownerReferences") or []
    if kind in ("Pod", "Job") and any(o.get("controller") for o in owners):
        return None
    pod = _pod_spec(kind, body)
    return Workload(
        kind=kind,
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        labels=dict(meta.get("labels") or {}),
        template_labels=_template_labels(kind, body),
        service_account=str(pod.get("serviceAccountName") or "default"),
    )

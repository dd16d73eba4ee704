"""What kstatus (Flux, Helm 4 `--wait`, kpt) says about the objects the operator writes.

Runs sigs.k8s.io/cli-utils' ``status.Compute`` (through the hack/kstatus helper) on
MachineIdentities the operator really reconciled on the local control plane, and on constructed
IdentityPolicy and issuer objects whose controllers are newer than these tests.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml

from tests.conftest import Cluster, OperatorProcess, wait_for
from tests.kstatus import kstatus

pytestmark = pytest.mark.integration

RULE = {
    "apiGroups": [""],
    "resources": ["configmaps"],
    "resourceNames": ["app-config"],
    "verbs": ["get"],
}
NODES = {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]}


def identity(namespace: str, name: str, permissions: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "nhi.dev/v1alpha1",
        "kind": "MachineIdentity",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"owner": "team-a", "permissions": permissions},
    }


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return dict(c)
    return None


def settled(cluster: Cluster, namespace: str, name: str, type_: str) -> dict[str, Any]:
    """The identity once the operator has set ``type_``=True for its current generation."""

    def check() -> dict[str, Any] | None:
        obj = cluster.get("machineidentity", name, namespace)
        c = condition(obj or {}, type_)
        if obj and c and c["status"] == "True":
            if obj["status"].get("observedGeneration") == obj["metadata"]["generation"]:
                return obj
        return None

    return wait_for(check, timeout=30, message=f"{namespace}/{name} {type_}=True")


def dry_run_apply(cluster: Cluster, manifest: dict[str, Any]) -> dict[str, Any]:
    """The object as the API server would store it after this apply, without storing it."""
    out = cluster.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "--dry-run=server",
        "-o",
        "json",
        "-f",
        "-",
        input=yaml.safe_dump(manifest),
    )
    return dict(json.loads(out.stdout))


def one(cluster: Cluster, obj: dict[str, Any]) -> dict[str, str]:
    results = kstatus(cluster, obj)
    assert len(results) == 1, results
    return results[0]


def test_ready_identity_is_current(operator: OperatorProcess, namespace: str) -> None:
    cluster = _cluster(operator)
    cluster.apply(identity(namespace, "app", {"rules": [RULE]}))
    obj = settled(cluster, namespace, "app", "Ready")

    assert one(cluster, obj) == {
        "kind": "MachineIdentity",
        "namespace": namespace,
        "name": "app",
        "status": "Current",
        "message": "Resource is Ready",
    }


def test_refused_identity_is_failed(operator: OperatorProcess, namespace: str) -> None:
    cluster = _cluster(operator)
    # Cluster-wide rules with no IdentityPolicy allowing them: refused, Stalled.
    cluster.apply(identity(namespace, "wide", {"clusterRules": [NODES]}))
    obj = settled(cluster, namespace, "wide", "Stalled")
    stalled = condition(obj, "Stalled")
    assert stalled is not None and stalled["reason"] == "ClusterPermissionsNotAllowed"

    result = one(cluster, obj)
    assert result["status"] == "Failed"
    # kstatus carries the Stalled message, which names the field.
    assert result["message"] == stalled["message"]
    assert "spec.permissions.clusterRules" in result["message"]


def test_a_list_from_kubectl_gives_one_result_per_object(
    operator: OperatorProcess, namespace: str
) -> None:
    cluster = _cluster(operator)
    cluster.apply(identity(namespace, "good", {"rules": [RULE]}))
    cluster.apply(identity(namespace, "wide", {"clusterRules": [NODES]}))
    settled(cluster, namespace, "good", "Ready")
    settled(cluster, namespace, "wide", "Stalled")

    listed = json.loads(
        cluster.kubectl("get", "machineidentities", "-n", namespace, "-o", "json").stdout
    )
    assert listed["kind"] == "List"
    by_name = {r["name"]: r["status"] for r in kstatus(cluster, listed)}
    assert by_name == {"good": "Current", "wide": "Failed"}
    # A plain sequence of objects works the same.
    assert [r["status"] for r in kstatus(cluster, listed["items"])] == [
        by_name[o["metadata"]["name"]] for o in listed["items"]
    ]


def test_status_older_than_the_spec_is_in_progress(
    operator: OperatorProcess, namespace: str
) -> None:
    cluster = _cluster(operator)
    cluster.apply(identity(namespace, "app", {"rules": [RULE]}))
    ready = settled(cluster, namespace, "app", "Ready")
    generation = ready["metadata"]["generation"]

    # What a watcher sees between a spec change and the operator's next status write: a
    # server-side dry run of the change returns the object as the API server would store it,
    # generation bumped and the old status kept (the status subresource is not written by a
    # spec update). Deterministic, unlike racing the operator with a real update.
    changed = identity(namespace, "app", {"rules": [{**RULE, "verbs": ["get", "watch"]}]})
    pending = dry_run_apply(cluster, changed)
    assert pending["metadata"]["generation"] == generation + 1
    assert pending["status"]["observedGeneration"] == generation
    assert condition(pending, "Ready")["status"] == "True"  # type: ignore[index]
    result = one(cluster, pending)
    assert result["status"] == "InProgress"
    assert result["message"] == (
        f"MachineIdentity generation is {generation + 1}, "
        f"but latest observed generation is {generation}"
    )

    # The same object JSON with only metadata.generation bumped by hand computes the same.
    bumped = copy.deepcopy(ready)
    bumped["metadata"]["generation"] = generation + 1
    assert one(cluster, bumped)["status"] == "InProgress"

    # Once the operator catches up with the real change, it is Current again.
    cluster.apply(changed)

    def current_again() -> bool:
        obj = cluster.get("machineidentity", "app", namespace)
        if not obj or obj["metadata"]["generation"] != generation + 1:
            return False
        return one(cluster, obj)["status"] == "Current"

    wait_for(current_again, timeout=30, message="kstatus Current for the new generation")


def test_unreconciled_identity_is_current_to_kstatus(
    operator: OperatorProcess, namespace: str
) -> None:
    """A known kstatus limitation, pinned so docs/gitops.md stays true.

    An object with no status at all has nothing kstatus recognizes, and kstatus calls it
    Current. A server-side dry-run create shows the object as the API server stores it before
    the operator's first status write. Flux users close the gap with healthCheckExprs (see
    docs/gitops.md); the Argo CD health check calls it Progressing.
    """
    cluster = _cluster(operator)
    fresh = dry_run_apply(cluster, identity(namespace, "fresh", {"rules": [RULE]}))
    assert "status" not in fresh
    assert one(cluster, fresh) == {
        "kind": "MachineIdentity",
        "namespace": namespace,
        "name": "fresh",
        "status": "Current",
        "message": "Resource is current",
    }


# IdentityPolicy and the issuers: constructed objects, in the status shape their CRDs define.


def constructed(
    kind: str, name: str, conditions: list[dict[str, Any]], **status: Any
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "generation": 4}
    if kind == "IdentityIssuer":
        meta["namespace"] = "team-a"
    return {
        "apiVersion": "nhi.dev/v1alpha1",
        "kind": kind,
        "metadata": meta,
        "spec": {},
        "status": {"observedGeneration": 4, "conditions": conditions, **status},
    }


def cond(type_: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": 4,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }


READY = [
    cond("Ready", "True", "Ready", "ready"),
    cond("Reconciling", "False", "Ready"),
    cond("Stalled", "False", "Ready"),
]
STALLED = [
    cond("Ready", "False", "InvalidSpec", "spec.ca.secretName: Secret ca-key not found"),
    cond("Reconciling", "False", "InvalidSpec"),
    cond("Stalled", "True", "InvalidSpec", "spec.ca.secretName: Secret ca-key not found"),
]
RECONCILING = [
    cond("Ready", "False", "Provisioning", "issuing the CA"),
    cond("Reconciling", "True", "Provisioning", "issuing the CA"),
    cond("Stalled", "False", "Provisioning"),
]


@pytest.mark.parametrize("kind", ["IdentityPolicy", "ClusterIdentityIssuer", "IdentityIssuer"])
def test_constructed_policy_and_issuer_status(kind: str) -> None:
    # No cluster needed: the objects are built here, and kstatus only reads them.
    extra: dict[str, Any] = (
        {"identitiesCovered": 3, "identitiesViolating": 0}
        if kind == "IdentityPolicy"
        else {"caFingerprint": "sha256:ab", "crlNumber": 1, "revokedCount": 0}
    )
    objs = [
        constructed(kind, "ready", READY, **extra),
        constructed(kind, "stalled", STALLED, **extra),
        constructed(kind, "reconciling", RECONCILING, **extra),
    ]
    behind = constructed(kind, "behind", READY, **extra)
    behind["metadata"]["generation"] = 5
    objs.append(behind)

    results = {r["name"]: (r["status"], r["message"]) for r in kstatus(None, objs)}
    assert results == {
        "ready": ("Current", "Resource is Ready"),
        "stalled": ("Failed", "spec.ca.secretName: Secret ca-key not found"),
        "reconciling": ("InProgress", "issuing the CA"),
        "behind": ("InProgress", f"{kind} generation is 5, but latest observed generation is 4"),
    }


def _cluster(op: OperatorProcess) -> Cluster:
    from tests import conftest

    assert conftest._CLUSTER is not None
    return conftest._CLUSTER

"""The Argo CD health check on MachineIdentities the operator really reconciled.

The objects come from the local control plane with the operator running; the Lua script runs
on them exactly as Argo CD would (tests/argocd/run_health.lua). Constructed objects for every
kind, and the generated argocd-cm patch, are in tests/unit/test_argocd_health.py.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from tests.argocd import CM_PATCH, run_health
from tests.conftest import Cluster, OperatorProcess, wait_for
from tests.integration.test_kstatus import condition, dry_run_apply, settled

pytestmark = pytest.mark.integration

KIND = "MachineIdentity"
RULE = {
    "apiGroups": [""],
    "resources": ["configmaps"],
    "resourceNames": ["app-config"],
    "verbs": ["get"],
}


def identity(namespace: str, name: str, permissions: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "nhi.dev/v1alpha1",
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"owner": "team-a", "permissions": permissions},
    }


def test_ready_identity_is_healthy(operator: OperatorProcess, namespace: str) -> None:
    cluster = _cluster(operator)
    cluster.apply(identity(namespace, "app", {"rules": [RULE]}))
    obj = settled(cluster, namespace, "app", "Ready")
    assert obj["status"]["phase"] == "Active"

    status, message = run_health(KIND, obj)
    assert status == "Healthy"
    assert message == condition(obj, "Ready")["message"]  # type: ignore[index]


def test_refused_identity_is_degraded_with_the_stalled_message(
    operator: OperatorProcess, namespace: str
) -> None:
    cluster = _cluster(operator)
    # Cluster-wide rules and no IdentityPolicy allowing them: refused, Stalled.
    wide = {"clusterRules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]}]}
    cluster.apply(identity(namespace, "wide", wide))
    obj = settled(cluster, namespace, "wide", "Stalled")
    stalled = condition(obj, "Stalled")
    assert stalled is not None and stalled["reason"] == "ClusterPermissionsNotAllowed"

    status, message = run_health(KIND, obj)
    assert status == "Degraded"
    assert message == stalled["message"]
    assert "spec.permissions.clusterRules" in message


def test_status_behind_the_spec_is_progressing(operator: OperatorProcess, namespace: str) -> None:
    cluster = _cluster(operator)
    cluster.apply(identity(namespace, "app", {"rules": [RULE]}))
    ready = settled(cluster, namespace, "app", "Ready")
    generation = ready["metadata"]["generation"]
    expected = (
        "Progressing",
        f"Waiting for the operator to observe generation {generation + 1} "
        f"(status is for generation {generation})",
    )

    # The real Ready object's JSON with metadata.generation bumped by one: exactly what Argo CD
    # sees between a sync that changes the spec and the operator's next status write. (The
    # operator is watching, so a real update would race it; bumping the number is the same
    # object as the API server would hand out during that window.)
    bumped = copy.deepcopy(ready)
    bumped["metadata"]["generation"] = generation + 1
    assert run_health(KIND, bumped) == expected

    # The API server's own answer to that change, without storing it: a server-side dry run
    # bumps the generation and keeps the old status (Ready=True for the old spec).
    changed = identity(namespace, "app", {"rules": [{**RULE, "verbs": ["get", "watch"]}]})
    pending = dry_run_apply(cluster, changed)
    assert condition(pending, "Ready")["status"] == "True"  # type: ignore[index]
    assert run_health(KIND, pending) == expected

    # And once the operator has observed the real change, Healthy again.
    cluster.apply(changed)
    obj = wait_for(
        lambda: (
            (o := cluster.get("machineidentity", "app", namespace))
            and o["status"].get("observedGeneration") == generation + 1
            and o
        ),
        timeout=30,
        message="the operator to observe the new generation",
    )
    assert run_health(KIND, obj)[0] == "Healthy"


def test_identity_without_status_yet_is_progressing(
    operator: OperatorProcess, namespace: str
) -> None:
    # A server-side dry-run create: the object exactly as stored before the operator's first
    # status write. (kstatus calls the same object Current; see tests/integration/test_kstatus.py.)
    cluster = _cluster(operator)
    fresh = dry_run_apply(cluster, identity(namespace, "fresh", {"rules": [RULE]}))
    assert "status" not in fresh
    assert run_health(KIND, fresh) == ("Progressing", "Waiting for the operator to report status")


def test_argocd_cm_patch_merges_into_an_existing_configmap(cluster: Cluster) -> None:
    # What docs/gitops.md tells users to run, against a stand-in argocd-cm that has other keys.
    if cluster.get("namespace", "argocd") is not None:
        pytest.skip("this cluster has an argocd namespace: not touching a real Argo CD")
    cluster.kubectl("create", "namespace", "argocd")
    try:
        cluster.kubectl(
            "create", "configmap", "argocd-cm", "-n", "argocd", "--from-literal=url=https://cd.test"
        )
        cluster.kubectl(
            "patch", "configmap", "argocd-cm", "-n", "argocd", "--patch-file", str(CM_PATCH)
        )
        cm = cluster.get("configmap", "argocd-cm", "argocd")
        assert cm is not None
        want = yaml.safe_load(CM_PATCH.read_text())["data"]
        assert cm["data"] == {"url": "https://cd.test", **want}
    finally:
        cluster.kubectl("delete", "namespace", "argocd", "--wait=false", check=False)


def _cluster(op: OperatorProcess) -> Cluster:
    from tests import conftest

    assert conftest._CLUSTER is not None
    return conftest._CLUSTER

"""The local control plane is a real Kubernetes: version, tokens, GC, RBAC."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import ROOT, Cluster, wait_for

pytestmark = pytest.mark.integration


def pinned_version() -> str:
    text = (ROOT / "hack" / "versions.env").read_text()
    match = re.search(r"^KUBERNETES_VERSION=(\S+)$", text, re.M)
    assert match
    return match.group(1)


def token_review(cluster: Cluster, token: str) -> dict[str, object]:
    review = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token},
    }
    out = cluster.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(review))
    return dict(json.loads(out.stdout)["status"])


def test_version_is_the_pinned_release(cluster: Cluster) -> None:
    if cluster.control_plane is None:
        pytest.skip("an external cluster reports its own version")
    version = cluster.control_plane.version()
    assert version["gitVersion"] == f"v{pinned_version()}"
    assert version["major"] == pinned_version().split(".")[0]


def test_bound_token_passes_review_until_its_secret_is_deleted(
    cluster: Cluster, namespace: str
) -> None:
    cluster.kubectl("create", "serviceaccount", "robot", "-n", namespace)
    cluster.kubectl("create", "secret", "generic", "robot-binding", "-n", namespace)
    token = cluster.kubectl(
        "create",
        "token",
        "robot",
        "-n",
        namespace,
        "--duration=10m",
        "--bound-object-kind=Secret",
        "--bound-object-name=robot-binding",
    ).stdout.strip()
    status = token_review(cluster, token)
    assert status.get("authenticated") is True
    assert status["user"]["username"] == f"system:serviceaccount:{namespace}:robot"  # type: ignore[index]

    cluster.kubectl("delete", "secret", "robot-binding", "-n", namespace)
    wait_for(
        lambda: not token_review(cluster, token).get("authenticated"),
        timeout=30,
        message="the token to fail TokenReview after its Secret was deleted",
    )


def test_deleting_an_owner_garbage_collects_its_dependent(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("create", "configmap", "owner", "-n", namespace)
    owner = cluster.get("configmap", "owner", namespace)
    assert owner is not None
    dependent = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "dependent",
            "namespace": namespace,
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "name": "owner",
                    "uid": owner["metadata"]["uid"],
                }
            ],
        },
    }
    cluster.apply(dependent)
    cluster.kubectl("delete", "configmap", "owner", "-n", namespace)
    wait_for(
        lambda: cluster.get("configmap", "dependent", namespace) is None,
        timeout=60,
        message="the garbage collector to delete the dependent",
    )


def test_auth_can_i_answers_from_rbac(cluster: Cluster, namespace: str) -> None:
    sa = f"system:serviceaccount:{namespace}:reader"
    cluster.kubectl("create", "serviceaccount", "reader", "-n", namespace)

    def can(verb: str, resource: str) -> str:
        return cluster.kubectl(
            "auth", "can-i", verb, resource, "-n", namespace, f"--as={sa}", check=False
        ).stdout.strip()

    assert can("get", "configmaps") == "no"
    cluster.kubectl(
        "create", "role", "cm-reader", "-n", namespace, "--verb=get", "--resource=configmaps"
    )
    cluster.kubectl(
        "create",
        "rolebinding",
        "cm-reader",
        "-n",
        namespace,
        "--role=cm-reader",
        f"--serviceaccount={namespace}:reader",
    )
    wait_for(
        lambda: can("get", "configmaps") == "yes",
        timeout=10,
        message="RBAC to grant get configmaps",
    )
    assert can("delete", "configmaps") == "no"
    assert can("get", "secrets") == "no"


def test_controllers_run_workloads_and_service_accounts(cluster: Cluster, namespace: str) -> None:
    # The serviceaccount controller creates `default`; the deployment controller a ReplicaSet.
    wait_for(
        lambda: cluster.get("serviceaccount", "default", namespace),
        timeout=30,
        message="the default ServiceAccount",
    )
    cluster.kubectl(
        "create", "deployment", "web", "-n", namespace, "--image=registry.k8s.io/pause:3.10"
    )
    wait_for(
        lambda: json.loads(
            cluster.kubectl("get", "replicasets", "-n", namespace, "-o", "json").stdout
        )["items"],
        timeout=30,
        message="the deployment controller to create a ReplicaSet",
    )


@pytest.mark.parametrize("role", ["view", "edit", "admin"])
def test_built_in_roles_are_aggregated(cluster: Cluster, role: str) -> None:
    """The clusterrole-aggregation controller runs, as in a real cluster: without it admin,
    edit and view stay empty, and a test that binds them proves nothing."""

    def rules() -> list[dict[str, list[str]]]:
        out = cluster.kubectl("get", "clusterrole", role, "-o", "json").stdout
        return list(json.loads(out).get("rules") or [])

    found = wait_for(rules, timeout=30, message=f"aggregated rules in ClusterRole {role}")
    granted = {
        (group, resource)
        for rule in found
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
    }
    assert ("", "configmaps") in granted
    assert ("apps", "deployments") in granted


def test_a_view_binding_grants_what_view_grants(cluster: Cluster, namespace: str) -> None:
    sa = f"system:serviceaccount:{namespace}:viewer"
    cluster.kubectl("create", "serviceaccount", "viewer", "-n", namespace)
    cluster.kubectl(
        "create",
        "rolebinding",
        "viewer",
        "-n",
        namespace,
        "--clusterrole=view",
        f"--serviceaccount={namespace}:viewer",
    )

    def can(verb: str, resource: str) -> str:
        return cluster.kubectl(
            "auth", "can-i", verb, resource, "-n", namespace, f"--as={sa}", check=False
        ).stdout.strip()

    wait_for(lambda: can("list", "pods") == "yes", timeout=30, message="view to grant list pods")
    assert can("get", "secrets") == "no"  # view never grants Secrets
    assert can("delete", "pods") == "no"

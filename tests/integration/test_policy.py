"""IdentityPolicy against the real control plane: its status and the reconcile-time check.

Uses the session operator (cluster-wide, no webhook). Every policy selects only the test's
namespace and is deleted when the test ends.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Cluster, OperatorProcess, wait_for
from tests.integration.test_identity import _cluster, condition, events, wait_condition

pytestmark = pytest.mark.integration

TOKEN = {"name": "api", "type": "ServiceAccountToken"}
CM_RULE = {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}


def identity(ns: str, name: str, ttl: str = "1h", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "owner": "team-a",
        "permissions": {"rules": [CM_RULE]},
        "credentials": [{**TOKEN, "ttl": ttl}],
    }
    body.update(spec)
    return {
        "apiVersion": "nhi.dev/v1alpha1",
        "kind": "MachineIdentity",
        "metadata": {"name": name, "namespace": ns},
        "spec": body,
    }


@pytest.fixture
def policy(operator: OperatorProcess, namespace: str) -> Iterator[str]:
    cluster = _cluster(operator)
    name = f"pol-{namespace}-{uuid.uuid4().hex[:4]}"
    yield name
    cluster.kubectl("delete", "identitypolicy", name, "--wait=false", check=False)


def apply_policy(cluster: Cluster, name: str, namespace: str, **spec: Any) -> None:
    cluster.apply(
        {
            "apiVersion": "nhi.dev/v1alpha1",
            "kind": "IdentityPolicy",
            "metadata": {"name": name},
            "spec": {
                "namespaceSelector": {"matchLabels": {"nhi-policy-test": namespace}},
                **spec,
            },
        }
    )


def wait_status(
    cluster: Cluster, name: str, covered: int, violating: int, timeout: float = 40
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = cluster.get("identitypolicy", name) or {}
        status = obj.get("status") or {}
        ready = condition(obj, "Ready")
        if (
            status.get("identitiesCovered") == covered
            and status.get("identitiesViolating") == violating
            and status.get("observedGeneration") == obj["metadata"]["generation"]
            and ready
            and ready["status"] == "True"
        ):
            return obj
        return None

    return wait_for(
        check, timeout=timeout, message=f"{name}: covered={covered} violating={violating}"
    )


def test_status_counts_covered_and_violating_identities(
    operator: OperatorProcess, namespace: str, policy: str
) -> None:
    cluster = _cluster(operator)
    cluster.kubectl("label", "namespace", namespace, f"nhi-policy-test={namespace}")
    apply_policy(
        cluster, policy, namespace, enforcement="Warn", maxTTL={"ServiceAccountToken": "2h"}
    )
    wait_status(cluster, policy, 0, 0)

    cluster.apply(identity(namespace, "ok"))
    cluster.apply(identity(namespace, "too-long", ttl="3h"))
    obj = wait_status(cluster, policy, 2, 1)
    ready = condition(obj, "Ready")
    assert ready and "covers 2 MachineIdentities; 1 breaks the policy" in ready["message"]
    # The printer columns show the counts.
    out = cluster.kubectl("get", "identitypolicy", policy, "--no-headers").stdout.split()
    assert out[1:4] == ["Warn", "2", "1"], out

    # Fixing the identity, changing the policy, deleting an identity: all recounted.
    cluster.apply(identity(namespace, "too-long", ttl="2h"))
    wait_status(cluster, policy, 2, 0)
    apply_policy(
        cluster, policy, namespace, enforcement="Warn", maxTTL={"ServiceAccountToken": "30m"}
    )
    wait_status(cluster, policy, 2, 2)
    cluster.kubectl("delete", "machineidentity", "ok", "-n", namespace, "--timeout=30s")
    wait_status(cluster, policy, 1, 1)
    # The namespace leaves the selector: nothing covered.
    cluster.kubectl("label", "namespace", namespace, "nhi-policy-test-")
    wait_status(cluster, policy, 0, 0)


def test_deny_policy_stalls_an_identity_at_reconcile_time(
    operator: OperatorProcess, namespace: str, policy: str
) -> None:
    cluster = _cluster(operator)
    cluster.kubectl("label", "namespace", namespace, f"nhi-policy-test={namespace}")
    apply_policy(cluster, policy, namespace, maxTTL={"ServiceAccountToken": "2h"})
    wait_status(cluster, policy, 0, 0)
    # The session operator has no webhook: the identity is stored, then refused.
    cluster.apply(identity(namespace, "app", ttl="3h"))
    obj = wait_condition(cluster, namespace, "app", "Stalled", "True", reason="PolicyViolation")
    ready = condition(obj, "Ready")
    assert ready and ready["status"] == "False"
    assert (
        f'IdentityPolicy "{policy}" (maxTTL): spec.credentials[0].ttl 3h exceeds the maximum '
        "2h for ServiceAccountToken"
    ) in ready["message"]
    assert cluster.get("serviceaccount", "app", namespace) is None  # nothing applied
    # A policy change that allows it lets it through.
    apply_policy(cluster, policy, namespace, maxTTL={"ServiceAccountToken": "4h"})
    wait_condition(cluster, namespace, "app", "Ready", "True")


def test_warn_policy_keeps_an_identity_ready_with_a_warning_event(
    operator: OperatorProcess, namespace: str, policy: str
) -> None:
    cluster = _cluster(operator)
    cluster.kubectl("label", "namespace", namespace, f"nhi-policy-test={namespace}")
    apply_policy(
        cluster, policy, namespace, enforcement="Warn", maxTTL={"ServiceAccountToken": "2h"}
    )
    wait_status(cluster, policy, 0, 0)
    cluster.apply(identity(namespace, "app", ttl="3h"))
    wait_condition(cluster, namespace, "app", "Ready", "True")

    def warned() -> list[dict[str, Any]]:
        return [
            e
            for e in events(cluster, namespace, "app")
            if e["type"] == "Warning" and f'IdentityPolicy "{policy}" (maxTTL)' in e["message"]
        ]

    wait_for(warned, timeout=30, message="a Warning event naming the policy")

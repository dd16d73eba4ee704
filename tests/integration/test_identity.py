"""MachineIdentity against the real control plane: RBAC, drift, spec changes, deletion."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, Cluster, OperatorProcess, wait_for

pytestmark = pytest.mark.integration

RULE = {
    "apiGroups": [""],
    "resources": ["configmaps"],
    "resourceNames": ["app-config"],
    "verbs": ["get", "watch"],
}


def identity(namespace: str, name: str = "app", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"owner": "team-a", "permissions": {"rules": [RULE]}}
    body.update(spec)
    return {
        "apiVersion": "nhi.dev/v1alpha1",
        "kind": "MachineIdentity",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return dict(c)
    return None


def wait_condition(
    cluster: Cluster,
    namespace: str,
    name: str,
    type_: str,
    status: str,
    reason: str | None = None,
    timeout: float = 30,
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = cluster.get("machineidentity", name, namespace)
        c = condition(obj, type_)
        if c and c["status"] == status and (reason is None or c["reason"] == reason):
            if obj and obj["status"].get("observedGeneration") == obj["metadata"]["generation"]:
                return obj
        return None

    return wait_for(
        check, timeout=timeout, message=f"{name} {type_}={status}{f' ({reason})' if reason else ''}"
    )


def can(cluster: Cluster, namespace: str, sa: str, verb: str, resource: str) -> bool:
    out = cluster.kubectl(
        "auth",
        "can-i",
        verb,
        resource,
        "-n",
        namespace,
        f"--as=system:serviceaccount:{namespace}:{sa}",
        check=False,
    )
    return out.stdout.strip() == "yes"


def events(
    cluster: Cluster, namespace: str, name: str, *, reasons: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """The identity's Events. The operator posts them in the background, right after the
    changes they report: with ``reasons``, wait until Events with each of them exist."""

    def read() -> list[dict[str, Any]]:
        out = cluster.kubectl(
            "get",
            "events",
            "-n",
            namespace,
            "-o",
            "json",
            "--field-selector",
            f"involvedObject.kind=MachineIdentity,involvedObject.name={name}",
        )
        return list(json.loads(out.stdout)["items"])

    wanted = set(reasons)
    if not wanted:
        return read()
    return wait_for(
        lambda: (items := read()) and wanted <= {e["reason"] for e in items} and items,
        timeout=10,
        message=f"Events with the reasons {sorted(wanted)}",
    )


def test_identity_gets_a_service_account_and_exactly_its_permissions(
    operator: OperatorProcess, namespace: str
) -> None:
    cluster = _cluster(operator)
    cluster.apply(identity(namespace))
    obj = wait_condition(cluster, namespace, "app", "Ready", "True")
    assert obj["status"]["phase"] == "Active"
    assert obj["status"]["serviceAccount"] == "app"
    assert condition(obj, "Stalled")["status"] == "False"  # type: ignore[index]

    sa = cluster.get("serviceaccount", "app", namespace)
    assert sa is not None
    assert sa["automountServiceAccountToken"] is False
    assert sa["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "nhi-operator"
    assert sa["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]

    # SubjectAccessReview answers from the Role the operator wrote: exactly what was declared.
    assert can(cluster, namespace, "app", "get", "configmaps/app-config")
    assert can(cluster, namespace, "app", "watch", "configmaps/app-config")
    assert not can(cluster, namespace, "app", "get", "configmaps/other-config")
    assert not can(cluster, namespace, "app", "update", "configmaps/app-config")
    assert not can(cluster, namespace, "app", "list", "configmaps")
    assert not can(cluster, namespace, "app", "get", "secrets")
    reasons = {e["reason"] for e in events(cluster, namespace, "app", reasons=["Created"])}
    assert "Created" in reasons

    # kubectl wait works on the Ready condition.
    cluster.kubectl(
        "wait", "--for=condition=Ready", "--timeout=10s", "-n", namespace, "machineidentity/app"
    )


def test_drift_is_restored_from_watches(operator: OperatorProcess, namespace: str) -> None:
    cluster = _cluster(operator)
    cluster.apply(identity(namespace))
    wait_condition(cluster, namespace, "app", "Ready", "True")

    cluster.kubectl("delete", "rolebinding", "nhi-app", "-n", namespace)
    wait_for(
        lambda: cluster.get("rolebinding", "nhi-app", namespace),
        timeout=10,
        message="the RoleBinding to be restored",
    )
    wait_for(
        lambda: can(cluster, namespace, "app", "get", "configmaps/app-config"),
        timeout=10,
        message="the permission to come back",
    )

    cluster.kubectl(
        "patch",
        "role",
        "nhi-app",
        "-n",
        namespace,
        "--type=json",
        "-p",
        '[{"op":"replace","path":"/rules/0/verbs","value":["*"]}]',
    )

    def verbs_restored() -> bool:
        role = cluster.get("role", "nhi-app", namespace)
        return bool(role and role["rules"][0]["verbs"] == ["get", "watch"])

    wait_for(verbs_restored, timeout=10, message="the Role's verbs to be restored")
    assert not can(cluster, namespace, "app", "delete", "configmaps/app-config")

    cluster.kubectl(
        "patch",
        "serviceaccount",
        "app",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"automountServiceAccountToken": true}',
    )
    wait_for(
        lambda: (
            cluster.get("serviceaccount", "app", namespace)["automountServiceAccountToken"] is False
        ),  # type: ignore[index]
        timeout=10,
        message="automount to be switched off again",
    )
    restored = [e for e in events(cluster, namespace, "app") if e["reason"] == "Restored"]
    assert {e["message"] for e in restored} >= {
        "restored RoleBinding/nhi-app",
        "restored Role/nhi-app",
    }


def test_spec_changes_converge_children_exactly(operator: OperatorProcess, namespace: str) -> None:
    cluster = _cluster(operator)
    cluster.kubectl(
        "create", "role", "pod-reader", "-n", namespace, "--verb=get", "--resource=pods"
    )
    cluster.apply(identity(namespace))
    wait_condition(cluster, namespace, "app", "Ready", "True")

    # Add a roleRef and drop the rules: the Role and its binding go, a new binding comes.
    cluster.apply(
        identity(namespace, permissions={"roleRefs": [{"kind": "Role", "name": "pod-reader"}]})
    )
    wait_condition(cluster, namespace, "app", "Ready", "True")
    wait_for(
        lambda: cluster.get("role", "nhi-app", namespace) is None,
        timeout=10,
        message="the Role to be removed",
    )
    assert cluster.get("rolebinding", "nhi-app", namespace) is None
    binding = cluster.get("rolebinding", "nhi:app:role:pod-reader", namespace)
    assert binding is not None
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "pod-reader",
    }
    wait_for(
        lambda: can(cluster, namespace, "app", "get", "pods"),
        timeout=10,
        message="the roleRef to grant get pods",
    )
    assert not can(cluster, namespace, "app", "get", "configmaps/app-config")
    out = cluster.kubectl(
        "get", "role,rolebinding", "-n", namespace, "-o", "name", "-l", "nhi.dev/identity=app"
    )
    assert sorted(out.stdout.split()) == [
        "rolebinding.rbac.authorization.k8s.io/nhi:app:role:pod-reader"
    ]


def test_deletion_removes_everything_including_cluster_scoped(
    operator: OperatorProcess, namespace: str
) -> None:
    cluster = _cluster(operator)
    policy = f"allow-{namespace}"
    cluster.apply(
        {
            "apiVersion": "nhi.dev/v1alpha1",
            "kind": "IdentityPolicy",
            "metadata": {"name": policy},
            "spec": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "allowClusterRules": True,
            },
        }
    )
    try:
        cluster.apply(
            identity(
                namespace,
                permissions={
                    "rules": [RULE],
                    "clusterRules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}],
                },
            )
        )
        wait_condition(cluster, namespace, "app", "Ready", "True")
        name = f"nhi:{namespace}:app"
        assert cluster.get("clusterrole", name) is not None
        assert cluster.get("clusterrolebinding", name) is not None
        assert can(cluster, namespace, "app", "get", "nodes")

        cluster.kubectl("delete", "machineidentity", "app", "-n", namespace, "--timeout=30s")
        assert cluster.get("clusterrole", name) is None
        assert cluster.get("clusterrolebinding", name) is None
        wait_for(
            lambda: cluster.get("serviceaccount", "app", namespace) is None,
            timeout=30,
            message="the ServiceAccount to be garbage-collected",
        )
        wait_for(
            lambda: cluster.get("role", "nhi-app", namespace) is None,
            timeout=30,
            message="the Role to be garbage-collected",
        )
    finally:
        cluster.kubectl("delete", "identitypolicy", policy, check=False)


def test_cluster_permissions_are_refused_without_a_policy(
    operator: OperatorProcess, namespace: str
) -> None:
    cluster = _cluster(operator)
    cluster.apply(
        identity(
            namespace,
            permissions={
                "clusterRules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]}]
            },
        )
    )
    obj = wait_condition(
        cluster, namespace, "app", "Stalled", "True", reason="ClusterPermissionsNotAllowed"
    )
    ready = condition(obj, "Ready")
    assert ready and ready["status"] == "False"
    assert "spec.permissions.clusterRules" in ready["message"]
    assert cluster.get("clusterrole", f"nhi:{namespace}:app") is None
    assert cluster.get("serviceaccount", "app", namespace) is None

    cluster.apply(
        identity(namespace, permissions={"roleRefs": [{"kind": "ClusterRole", "name": "view"}]})
    )
    obj = wait_condition(
        cluster, namespace, "app", "Stalled", "True", reason="ClusterPermissionsNotAllowed"
    )
    assert "spec.permissions.roleRefs[0]" in condition(obj, "Ready")["message"]  # type: ignore[index]


def test_foreign_service_account_is_not_taken_over(
    operator: OperatorProcess, namespace: str
) -> None:
    cluster = _cluster(operator)
    cluster.kubectl("create", "serviceaccount", "app", "-n", namespace)
    cluster.apply(identity(namespace))
    obj = wait_condition(
        cluster, namespace, "app", "Stalled", "True", reason="ServiceAccountConflict"
    )
    assert "spec.serviceAccount.name" in condition(obj, "Ready")["message"]  # type: ignore[index]
    sa = cluster.get("serviceaccount", "app", namespace)
    assert sa is not None and "labels" not in sa["metadata"]
    found = events(cluster, namespace, "app", reasons=["ServiceAccountConflict"])
    warnings = [e for e in found if e["type"] == "Warning"]
    assert any(e["reason"] == "ServiceAccountConflict" for e in warnings)

    cluster.kubectl("annotate", "machineidentity", "app", "-n", namespace, "nhi.dev/adopt=true")
    wait_condition(cluster, namespace, "app", "Ready", "True")
    sa = cluster.get("serviceaccount", "app", namespace)
    assert sa is not None
    assert sa["metadata"]["labels"]["nhi.dev/identity"] == "app"


def _cluster(op: OperatorProcess) -> Cluster:
    from tests import conftest

    assert conftest._CLUSTER is not None
    return conftest._CLUSTER


def _finalizer_policy(namespace: str) -> list[dict[str, Any]]:
    """manifests/base/admissionpolicy.yaml, renamed and bound to ``namespace`` only (the
    cluster is shared: identities elsewhere must not get a finalizer nobody removes)."""
    path = ROOT / "manifests" / "base" / "admissionpolicy.yaml"
    policy, binding = [d for d in yaml.safe_load_all(path.read_text()) if d]
    name = f"nhi-finalizer-{namespace}"
    policy["metadata"]["name"] = binding["metadata"]["name"] = name
    binding["spec"]["policyName"] = name
    policy["spec"]["matchConstraints"]["namespaceSelector"] = {
        "matchLabels": {"kubernetes.io/metadata.name": namespace}
    }
    return [policy, binding]


def _finalizer_writers(cluster: Cluster, namespace: str, name: str) -> list[str]:
    """The field managers that wrote the identity's metadata.finalizers."""
    out = cluster.kubectl(
        "get", "machineidentity", name, "-n", namespace, "-o", "json", "--show-managed-fields"
    ).stdout
    fields = json.loads(out)["metadata"]["managedFields"]
    assert fields  # every stored object has at least its creator's entry
    return [
        str(m.get("manager"))
        for m in fields
        if "f:finalizers" in ((m.get("fieldsV1") or {}).get("f:metadata") or {})
    ]


def test_the_admission_policy_adds_the_finalizer_so_the_operator_need_not(
    operator: OperatorProcess, namespace: str
) -> None:
    """With the chart's MutatingAdmissionPolicy an identity is created with nhi.dev/cleanup
    (beside the user's own finalizers); the operator provisions it without patching its
    metadata, and the clean-up on deletion still runs."""
    cluster = _cluster(operator)
    policy, binding = _finalizer_policy(namespace)
    try:
        cluster.apply(policy)
        cluster.apply(binding)
        probe = identity(namespace, "probe")
        probe["metadata"]["finalizers"] = ["example.com/keep"]

        def admitted() -> dict[str, Any] | None:
            # A server-side dry run shows what admission makes of a new identity without
            # storing it; the policy takes effect a moment after it is written.
            out = cluster.kubectl(
                "create", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(probe)
            ).stdout
            obj: dict[str, Any] = json.loads(out)
            return obj if "nhi.dev/cleanup" in obj["metadata"].get("finalizers", []) else None

        obj = wait_for(admitted, timeout=30, message="the policy to add the finalizer")
        assert obj["metadata"]["finalizers"] == ["example.com/keep", "nhi.dev/cleanup"]

        cluster.apply(identity(namespace))
        ready = wait_condition(cluster, namespace, "app", "Ready", "True")
        assert ready["metadata"]["finalizers"] == ["nhi.dev/cleanup"]
        # Nobody patched the finalizers in: the policy set them at creation, which no field
        # manager records (the operator's own patch would show as its Update entry).
        assert _finalizer_writers(cluster, namespace, "app") == []

        cluster.kubectl("delete", "machineidentity", "app", "-n", namespace, "--timeout=30s")
        assert cluster.get("machineidentity", "app", namespace) is None
    finally:
        for kind, made in (
            ("mutatingadmissionpolicybinding", binding),
            ("mutatingadmissionpolicy", policy),
        ):
            cluster.kubectl("delete", kind, made["metadata"]["name"], check=False)


def test_without_the_admission_policy_the_operator_adds_the_finalizer(
    operator: OperatorProcess, namespace: str
) -> None:
    cluster = _cluster(operator)
    cluster.apply(identity(namespace))
    ready = wait_condition(cluster, namespace, "app", "Ready", "True")
    assert ready["metadata"]["finalizers"] == ["nhi.dev/cleanup"]
    assert _finalizer_writers(cluster, namespace, "app") != []  # the operator's patch

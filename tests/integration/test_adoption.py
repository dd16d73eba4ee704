"""``nhi adopt`` against the real control plane: an unmanaged ServiceAccount is taken over by
the MachineIdentity the command writes, and its workload never loses a permission: asked with
``kubectl auth can-i`` before, all along the takeover, and after, even once the old binding
is removed (the operator's own Role then grants it)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.conftest import OperatorProcess, wait_for
from tests.integration.test_identity import _cluster, condition

pytestmark = pytest.mark.integration


def test_adoption_keeps_every_permission(operator: OperatorProcess, namespace: str) -> None:
    cluster = _cluster(operator)
    ns = namespace
    me = f"system:serviceaccount:{ns}:legacy-app"
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "legacy-app", "namespace": ns},
        }
    )
    cluster.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "cm-reader", "namespace": ns},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
        }
    )
    cluster.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "cm-reader", "namespace": ns},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "cm-reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "legacy-app", "namespace": ns}],
        }
    )
    cluster.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "legacy-app", "namespace": ns},
            "spec": {
                "selector": {"matchLabels": {"app": "legacy-app"}},
                "template": {
                    "metadata": {"labels": {"app": "legacy-app"}},
                    "spec": {
                        "serviceAccountName": "legacy-app",
                        "containers": [{"name": "a", "image": "x.invalid/a"}],
                    },
                },
            },
        }
    )

    def can(verb: str = "get") -> bool:
        proc = cluster.kubectl(
            "auth", "can-i", verb, "configmaps", "-n", ns, "--as", me, check=False
        )
        return proc.stdout.strip() == "yes"

    assert can() and can("list") and not can("delete")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "nhi.cli.main",
            "adopt",
            "serviceaccount/legacy-app",
            "-n",
            ns,
            "--owner",
            "team-legacy",
            "--apply",
        ],
        env=cluster.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"kubectl delete rolebinding cm-reader -n {ns}" in proc.stderr

    # During the takeover: asked again and again until the identity is Ready.
    deadline = time.monotonic() + 60
    while True:
        assert can() and can("list"), "a permission was lost during the takeover"
        body = cluster.get("machineidentity", "legacy-app", ns)
        ready = condition(body, "Ready")
        if ready and ready["status"] == "True":
            break
        assert time.monotonic() < deadline, f"not Ready: {body and body.get('status')}"
        time.sleep(0.2)
    sa = cluster.get("serviceaccount", "legacy-app", ns)
    assert sa is not None
    assert any(
        r.get("kind") == "MachineIdentity" for r in sa["metadata"].get("ownerReferences", [])
    )
    # After: the old binding is still there (never touched), then removed by the user.
    assert cluster.get("rolebinding", "cm-reader", ns) is not None
    cluster.kubectl("delete", "rolebinding", "cm-reader", "-n", ns)
    wait_for(lambda: cluster.get("rolebinding", "cm-reader", ns) is None, message="deleted")
    assert can() and can("list") and not can("delete")

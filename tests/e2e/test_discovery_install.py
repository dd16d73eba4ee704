"""Discovery as a user installs it: ``helm upgrade --set discovery.enabled=true`` on a
namespace-scoped release, then the operator run with the Deployment's own arguments and the
token of the chart's ServiceAccount. Its inventory is complete and its reports are written
with exactly the RBAC the chart grants (no request refused), and the ServiceAccount can read
nothing outside the namespaces discovered."""

# ruff: noqa: F811 - the fixtures imported from test_packaging are the test's parameters
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nhi.testenv.manifests import install_report_crds
from tests.conftest import Cluster, OperatorProcess, start_operator, wait_for
from tests.e2e.test_packaging import (  # noqa: F401 - the fixtures helm, release, chart_crds
    CHART,
    SYSTEM,
    Helm,
    assert_no_forbidden,
    can_i,
    chart_crds,
    helm,
    release,
    service_account_kubeconfig,
    session_operator_paused,
    system_namespace,
)


def run_deployed(
    cluster: Cluster, container: dict[str, Any], kubeconfig: Path, config: Path, log: Path
) -> OperatorProcess:
    """The Deployment's container as a local process, as its ServiceAccount; the inventory
    settings from the ConfigMap's content written to ``config`` (the pod mounts it)."""
    args = []
    for a in container["args"]:
        if a.startswith(("--health-port", "--metrics-port", "--webhook-")):
            continue
        args.append(f"--inventory-config={config}" if a.startswith("--inventory-config=") else a)
    env = dict(cluster.env(), KUBECONFIG=str(kubeconfig))
    downward = {"metadata.name": "nhi-operator-0", "metadata.namespace": SYSTEM}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            env[var["name"]] = downward[var["valueFrom"]["fieldRef"]["fieldPath"]]
    return start_operator(cluster, log, *args, env=env)


pytestmark = pytest.mark.e2e


def test_discovery_works_with_the_charts_rbac_and_nothing_more(
    cluster: Cluster, helm: Helm, release: str, namespace: str, tmp_path: Path
) -> None:
    install_report_crds(cluster.kubectl)
    config = json.dumps({"bounds": {"unusedAfter": "1s"}})
    helm(
        "upgrade",
        release,
        str(CHART),
        "-n",
        SYSTEM,
        "--timeout=2m",
        f"--set=watchNamespaces={{{namespace}}}",
        "--set=replicaCount=1",
        "--set=rbac.clusterScopedGrants=false",
        "--set=discovery.enabled=true",
        f"--set=discovery.namespaces={{{namespace}}}",
        f"--set-json=discovery.config={config}",
    )
    deploy = cluster.get("deployment", release, SYSTEM)
    assert deploy is not None
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert "--discovery" in container["args"]
    assert f"--discovery-namespace={namespace}" in container["args"]
    # The config file is mounted from a ConfigMap; here it is written where the args say.
    cm = cluster.get("configmap", f"{release}-inventory", SYSTEM)
    assert cm is not None and "unusedAfter: 1s" in cm["data"]["inventory.yaml"]

    # Read-only in the namespace discovered, its reports, and nothing elsewhere.
    assert can_i(cluster, "list", "secrets", "-n", namespace)
    assert can_i(cluster, "create", "policyreports.wgpolicyk8s.io", "-n", namespace)
    assert can_i(cluster, "create", "clusterpolicyreports.wgpolicyk8s.io")
    assert can_i(cluster, "create", "reports.openreports.io", "-n", namespace)
    assert can_i(cluster, "create", "clusterreports.openreports.io")
    assert can_i(cluster, "list", "clusterrolebindings.rbac.authorization.k8s.io")
    assert not can_i(cluster, "list", "secrets", "-n", "default")
    assert not can_i(cluster, "create", "policyreports.wgpolicyk8s.io", "-n", "default")

    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "forgotten", "namespace": namespace},
        }
    )
    config_file = tmp_path / "inventory.yaml"
    config_file.write_text(cm["data"]["inventory.yaml"])
    kubeconfig = service_account_kubeconfig(cluster, tmp_path / "sa.kubeconfig")
    with session_operator_paused():
        op = run_deployed(cluster, container, kubeconfig, config_file, tmp_path / "op.log")
        try:

            def found(kind: str) -> bool:
                body = cluster.get(kind, "nhi-inventory", namespace) or {}
                return any(
                    r["rule"] == "unused-service-account"
                    and r["resources"][0]["name"] == "forgotten"
                    for r in body.get("results") or []
                )

            # In both report APIs installed: the policy working group's and OpenReports'.
            for kind in ("policyreports.wgpolicyk8s.io", "reports.openreports.io"):
                wait_for(lambda k=kind: found(k), timeout=45,
                         message=f"the finding in {namespace}'s {kind}")  # fmt: skip
            assert cluster.get("clusterpolicyreport", "nhi-inventory") is not None
            assert cluster.get("clusterreports.openreports.io", "nhi-inventory") is not None
            assert_no_forbidden(op)
        finally:
            op.stop()

"""Discovery against the real control plane: each situation of issue 17 is created, its
finding appears in the namespace's PolicyReport (or the cluster's), and goes when fixed.

The operator runs with ``--discovery`` over the test's namespaces only (``inv-*``) and serves
no MachineIdentity (``-n`` names a namespace that does not exist), so it runs beside the
operator the other tests share without either acting on the other's objects. Its reports
are created and patched with ``fieldValidation=Strict``: a report that exists fits its CRD;
each one read is also checked again with a strict server-side dry run.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from nhi.crypto import build_self_signed_ca, cert_pem, generate_key, private_key_pem
from nhi.testenv.manifests import install_report_crds
from tests.conftest import Cluster, OperatorProcess, start_operator, wait_for

pytestmark = pytest.mark.integration

CONFIG = """\
bounds:
  unusedAfter: 1s
  maxSecretAge: 10s
ownerKeys: [owner]
"""
TIMEOUT = 30.0


@pytest.fixture(scope="module")
def inventory(crds: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    install_report_crds(crds.kubectl)
    tmp = tmp_path_factory.mktemp("inventory")
    config = tmp / "inventory.yaml"
    config.write_text(CONFIG)
    op = start_operator(
        crds,
        tmp / "operator.log",
        "--namespace=inv-operator-serves-none",
        "--discovery",
        "--discovery-namespace=inv-*",
        "--discovery-interval=0.3",
        f"--inventory-config={config}",
    )
    try:
        yield op
    finally:
        op.stop()


@pytest.fixture
def ns(crds: Cluster) -> Iterator[str]:
    name = f"inv-{uuid.uuid4().hex[:8]}"
    crds.kubectl("create", "namespace", name)
    yield name
    crds.kubectl("delete", "namespace", name, "--wait=false", check=False)


def report(cluster: Cluster, namespace: str) -> dict[str, Any] | None:
    if namespace:
        return cluster.get("policyreport", "nhi-inventory", namespace)
    return cluster.get("clusterpolicyreport", "nhi-inventory")


def findings(cluster: Cluster, namespace: str) -> set[tuple[str, str]]:
    """(rule, first resource as Kind/ns/name) of every result of the report."""
    body = report(cluster, namespace) or {}
    out = set()
    for r in body.get("results") or []:
        first = r["resources"][0]
        where = f"{first['namespace']}/" if first.get("namespace") else ""
        out.add((r["rule"], f"{first['kind']}/{where}{first['name']}"))
    return out


def appears(cluster: Cluster, namespace: str, finding: tuple[str, str]) -> None:
    wait_for(
        lambda: finding in findings(cluster, namespace),
        timeout=TIMEOUT,
        message=f"{finding} in the report of {namespace or 'the cluster'}",
    )


def goes(cluster: Cluster, namespace: str, finding: tuple[str, str]) -> None:
    wait_for(
        lambda: finding not in findings(cluster, namespace),
        timeout=TIMEOUT,
        message=f"{finding} gone from the report of {namespace or 'the cluster'}",
    )


def sa(namespace: str, name: str, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
    }


def deployment(namespace: str, name: str, service_account: str | None = None) -> dict[str, Any]:
    pod: dict[str, Any] = {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}
    if service_account:
        pod["serviceAccountName"] = service_account
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod},
        },
    }


def role_binding(
    namespace: str, name: str, subject_ns: str, subject: str, role: str = "view"
) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": subject, "namespace": subject_ns}],
    }


def validate_strictly(cluster: Cluster, body: dict[str, Any]) -> None:
    """The report as read, created again under another name by a strict server-side dry
    run: every field it holds is one its CRD knows, with a value the schema accepts."""
    copy = {k: v for k, v in body.items() if k != "metadata"}
    meta = body["metadata"]
    copy["metadata"] = {"name": f"check-{uuid.uuid4().hex[:6]}"}
    if meta.get("namespace"):
        copy["metadata"]["namespace"] = meta["namespace"]
    cluster.kubectl(
        "create", "--dry-run=server", "--validate=strict", "-f", "-", input=json.dumps(copy)
    )


# ------------------------------------------------------------------------------ NHI1


def test_an_unused_service_account_then_used(
    inventory: OperatorProcess, crds: Cluster, ns: str
) -> None:
    crds.apply(sa(ns, "idle"))
    finding = ("unused-service-account", f"ServiceAccount/{ns}/idle")
    appears(crds, ns, finding)
    body = report(crds, ns)
    assert body is not None
    validate_strictly(crds, body)
    [result] = [r for r in body["results"] if r["rule"] == "unused-service-account"]
    assert result["category"] == "NHI1 Improper Offboarding"
    assert result["properties"]["risk"] == "NHI1" and result["result"] == "fail"
    assert "Fix:" in result["message"]
    crds.apply(deployment(ns, "worker", "idle"))
    goes(crds, ns, finding)
    # The report was patched, not dropped: the worker's automounted token is still reported.
    assert ("automounted-token-without-permissions", f"ServiceAccount/{ns}/idle") in findings(
        crds, ns
    )


def test_the_cli_lists_the_same_inventory(crds: Cluster, ns: str) -> None:
    crds.apply(sa(ns, "ci", owner="team-ci"))
    crds.apply(deployment(ns, "builder", "ci"))
    proc = subprocess.run(
        [sys.executable, "-m", "nhi.cli.main", "inventory", "-n", ns, "-o", "json"],
        env=crds.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    data = {i["name"]: i for i in json.loads(proc.stdout)}
    assert data["ci"]["owner"] == "team-ci" and data["ci"]["workloads"] == [
        f"Deployment/{ns}/builder"
    ]
    assert data["ci"]["state"] == "unmanaged"


def test_a_binding_to_a_missing_service_account(
    inventory: OperatorProcess, crds: Cluster, ns: str
) -> None:
    crds.apply(role_binding(ns, "left-over", ns, "ghost"))
    finding = ("binding-to-missing-service-account", f"RoleBinding/{ns}/left-over")
    appears(crds, ns, finding)
    crds.kubectl("delete", "rolebinding", "left-over", "-n", ns)
    goes(crds, ns, finding)


# ------------------------------------------------------------------------------ NHI4 / NHI7


def test_a_legacy_token_secret(inventory: OperatorProcess, crds: Cluster, ns: str) -> None:
    crds.apply(sa(ns, "legacy"))
    crds.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/service-account-token",
            "metadata": {
                "name": "legacy-token",
                "namespace": ns,
                "annotations": {"kubernetes.io/service-account.name": "legacy"},
            },
        }
    )
    finding = ("legacy-token-secret", f"Secret/{ns}/legacy-token")
    appears(crds, ns, finding)
    # The token controller filled it: its value is nowhere in the report nor the log.
    token = wait_for(
        lambda: ((crds.get("secret", "legacy-token", ns) or {}).get("data") or {}).get("token"),
        message="the legacy token's value",
    )
    value = base64.b64decode(token).decode()
    assert value not in json.dumps(report(crds, ns)) and value not in inventory.log()
    crds.kubectl("delete", "secret", "legacy-token", "-n", ns)
    goes(crds, ns, finding)


def _tls_secret(ns: str, crt: bytes, key: bytes) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": "web-tls", "namespace": ns},
        "data": {
            "tls.crt": base64.b64encode(crt).decode(),
            "tls.key": base64.b64encode(key).decode(),
        },
    }


def test_an_opaque_secret_nothing_rotates_then_rotated(
    inventory: OperatorProcess, crds: Cluster, ns: str
) -> None:
    value = "opaque-secret-value-" + uuid.uuid4().hex
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
              "metadata": {"name": "db-password", "namespace": ns},
              "stringData": {"password": value}}  # fmt: skip
    crds.apply(secret)
    finding = ("old-secret", f"Secret/{ns}/db-password")
    appears(crds, ns, finding)  # unchanged for longer than maxSecretAge (10s here)
    # Rotated: changed now, so no longer old (until the bound passes again).
    crds.apply({**secret, "stringData": {"password": value + "-2"}})
    goes(crds, ns, finding)
    # Only metadata is read: the value is neither in the report nor in the operator's log.
    assert value not in json.dumps(report(crds, ns)) and value not in inventory.log()


def test_a_malformed_tls_secret_then_a_real_certificate(
    inventory: OperatorProcess, crds: Cluster, ns: str
) -> None:
    crds.apply(_tls_secret(ns, b"not a certificate", b"not a key"))
    finding = ("malformed-tls-secret", f"Secret/{ns}/web-tls")
    appears(crds, ns, finding)
    key = generate_key()
    now = dt.datetime.now(dt.UTC)
    cert = build_self_signed_ca("web", key, now, dt.timedelta(days=30))
    crds.apply(_tls_secret(ns, cert_pem(cert), private_key_pem(key)))
    goes(crds, ns, finding)
    assert ("long-lived-certificate", f"Secret/{ns}/web-tls") not in findings(crds, ns)
    # The key is nowhere: the Secret's data was dropped once the certificate was read.
    assert private_key_pem(key).decode().splitlines()[1] not in inventory.log()


# ------------------------------------------------------------------------------ NHI5


def test_cluster_admin_bound_to_a_service_account(
    inventory: OperatorProcess, crds: Cluster, ns: str
) -> None:
    crds.apply(sa(ns, "boss"))
    name = f"{ns}-boss"
    crds.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "cluster-admin",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "boss", "namespace": ns}],
        }
    )
    finding = ("cluster-admin-binding", f"ServiceAccount/{ns}/boss")
    try:
        appears(crds, ns, finding)
        [r] = [r for r in (report(crds, ns) or {})["results"] if r["rule"] == finding[0]]
        assert r["properties"]["severity"] == "critical" and r["severity"] == "high"
        assert {"kind": "ClusterRoleBinding", "name": name} in [
            {k: v for k, v in x.items() if k in ("kind", "name")} for x in r["resources"]
        ]

        # OpenReports, installed too, gets the same finding with its critical severity.
        def open_report() -> dict[str, Any] | None:
            body = crds.get("reports.openreports.io", "nhi-inventory", ns) or {}
            hits = [x for x in body.get("results") or [] if x["rule"] == finding[0]]
            return body if hits else None

        body = wait_for(open_report, timeout=TIMEOUT, message="the finding in the OpenReport")
        validate_strictly(crds, body)
        [o] = [x for x in body["results"] if x["rule"] == finding[0]]
        assert o["severity"] == "critical" and o["message"] == r["message"]
        assert body["metadata"]["annotations"].get("nhi.dev/provenance")
    finally:
        crds.kubectl("delete", "clusterrolebinding", name, check=False)
    goes(crds, ns, finding)


# ------------------------------------------------------------------------------ NHI8 / NHI9


def test_a_service_account_bound_in_another_namespace(
    inventory: OperatorProcess, crds: Cluster, ns: str
) -> None:
    other = f"{ns}-b"
    crds.kubectl("create", "namespace", other)
    try:
        crds.apply(sa(ns, "roamer"))
        crds.apply(role_binding(other, "from-afar", ns, "roamer"))
        finding = ("cross-namespace-binding", f"RoleBinding/{other}/from-afar")
        appears(crds, other, finding)
        crds.kubectl("delete", "rolebinding", "from-afar", "-n", other)
        goes(crds, other, finding)
    finally:
        crds.kubectl("delete", "namespace", other, "--wait=false", check=False)


def test_default_used_by_two_deployments(
    inventory: OperatorProcess, crds: Cluster, ns: str
) -> None:
    crds.apply(deployment(ns, "one"))
    crds.apply(deployment(ns, "two"))
    finding = ("default-service-account-used", f"ServiceAccount/{ns}/default")
    appears(crds, ns, finding)

    def both() -> bool:
        results = (report(crds, ns) or {}).get("results") or []
        [r] = [r for r in results if r["rule"] == finding[0]]
        return {x["name"] for x in r["resources"]} >= {"one", "two"} and (
            r["properties"]["severity"] == "medium"
        )

    wait_for(both, timeout=TIMEOUT, message="both deployments in the finding, medium")
    crds.apply(sa(ns, "one-sa"))
    crds.apply(sa(ns, "two-sa"))
    crds.apply(deployment(ns, "one", "one-sa"))
    crds.apply(deployment(ns, "two", "two-sa"))
    goes(crds, ns, finding)


# ------------------------------------------------------------------------------ ownership


def test_a_report_that_is_not_the_operators_is_left_alone(
    inventory: OperatorProcess, crds: Cluster, ns: str
) -> None:
    foreign = {
        "apiVersion": "wgpolicyk8s.io/v1alpha2",
        "kind": "PolicyReport",
        "metadata": {
            "name": "nhi-inventory",
            "namespace": ns,
            # Our labels, even: labels prove nothing.
            "labels": {
                "app.kubernetes.io/managed-by": "nhi-operator",
                "nhi.dev/report": "inventory",
            },
        },
        "summary": {"pass": 1},
        "results": [{"policy": "someone-else", "result": "pass"}],
    }
    # The same in OpenReports' API, which the operator writes too.
    foreign_open = {**foreign, "apiVersion": "openreports.io/v1alpha1", "kind": "Report"}
    crds.apply(foreign)
    crds.apply(foreign_open)
    crds.apply(sa(ns, "idle"))

    def in_the_way() -> int:
        return sum(
            1
            for line in inventory.log().splitlines()
            if "not the operator's" in line and f'"{ns}"' in line
        )

    wait_for(lambda: in_the_way() >= 2, timeout=TIMEOUT,
             message="the operator to find both reports in its way")  # fmt: skip
    body = report(crds, ns)
    assert body is not None and body["results"] == foreign["results"]
    theirs = crds.get("reports.openreports.io", "nhi-inventory", ns)
    assert theirs is not None and theirs["results"] == foreign["results"]
    assert "nhi.dev/provenance" not in (theirs["metadata"].get("annotations") or {})
    # Deleted by its owner: the operator writes its own.
    crds.kubectl("delete", "policyreport", "nhi-inventory", "-n", ns)
    appears(crds, ns, ("unused-service-account", f"ServiceAccount/{ns}/idle"))
    theirs_after = crds.get("reports.openreports.io", "nhi-inventory", ns)
    assert theirs_after is not None and theirs_after["results"] == foreign["results"]


def test_the_cluster_report_exists_and_fits_its_crd(
    inventory: OperatorProcess, crds: Cluster
) -> None:
    body = wait_for(lambda: report(crds, ""), timeout=TIMEOUT, message="the cluster's report")
    validate_strictly(crds, body)
    assert body["metadata"]["annotations"].get("nhi.dev/provenance")
    body = wait_for(lambda: crds.get("clusterreports.openreports.io", "nhi-inventory"),
                    timeout=TIMEOUT, message="the cluster's OpenReport")  # fmt: skip
    validate_strictly(crds, body)
    assert body["metadata"]["annotations"].get("nhi.dev/provenance")


def test_metrics_count_findings_by_risk(inventory: OperatorProcess, crds: Cluster, ns: str) -> None:
    crds.apply(sa(ns, "idle"))
    appears(crds, ns, ("unused-service-account", f"ServiceAccount/{ns}/idle"))

    def page() -> str:
        url = f"http://127.0.0.1:{inventory.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            return str(r.read().decode())

    text = page()
    assert f'nhi_inventory_findings{{namespace="{ns}",risk="NHI1",severity="low"}}' in text
    assert "nhi_inventory_coverage_ratio" in text
    assert "idle" not in text  # no per-object label

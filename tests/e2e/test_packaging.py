"""Packaging as a user meets it: the Helm chart, the kustomize base, the wheel behind the image.

The chart is linted, rendered, validated by the API server (server-side dry run), installed,
upgraded and uninstalled on the real control plane. There is no kubelet, so the Deployment's
pods never run; instead the operator runs here as a subprocess with exactly the Deployment's
arguments and environment and the token of the chart's ServiceAccount, which proves that the
chart's RBAC is enough for what the operator does (and the peering object it needs exists).
The image cannot be built without a Docker engine: the wheel it is built from is installed
into a fresh virtualenv, the way the Dockerfile does, and run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import conftest
from tests.conftest import ROOT, Cluster, OperatorProcess, free_port, start_operator, wait_for

pytestmark = pytest.mark.e2e

CHART = ROOT / "charts" / "nhi-operator"
BASE = ROOT / "manifests" / "base"
#: Tells `helm template` the API server serves MutatingAdmissionPolicy (1.36+).
MAP_API = "--api-versions=admissionregistration.k8s.io/v1/MutatingAdmissionPolicy"
OVERLAY = ROOT / "manifests" / "overlays" / "example"
RULES_FILE = ROOT / "manifests" / "prometheus" / "nhi-operator.rules.yaml"
RELEASE = "nhi-operator"
SYSTEM = "nhi-system"
SA_USER = f"system:serviceaccount:{SYSTEM}:{RELEASE}"
CRD_NAMES = (
    "machineidentities.nhi.dev",
    "identityissuers.nhi.dev",
    "clusteridentityissuers.nhi.dev",
    "identitypolicies.nhi.dev",
    "clusterkopfpeerings.kopf.dev",
    "kopfpeerings.kopf.dev",
)

Helm = Callable[..., subprocess.CompletedProcess[str]]


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def helm(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """helm against the test cluster, with its own config and cache directories."""
    home = tmp_path_factory.mktemp("helm")
    env = dict(
        cluster.env(),
        HELM_CONFIG_HOME=str(home / "config"),
        HELM_CACHE_HOME=str(home / "cache"),
        HELM_DATA_HOME=str(home / "data"),
    )
    exe = cluster.tool("helm")

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [exe, *args], env=env, capture_output=True, text=True, timeout=180, check=False
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}")
        return proc

    return run


def render(helm: Helm, *args: str) -> list[dict[str, Any]]:
    out = helm("template", RELEASE, str(CHART), "--namespace", SYSTEM, *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def kustomize(cluster: Cluster, path: Path) -> str:
    return cluster.kubectl("kustomize", str(path)).stdout


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''} in the render"
    return found[0]


def server_dry_run(cluster: Cluster, manifest: str) -> None:
    proc = cluster.kubectl(
        "apply", "--server-side", "--dry-run=server", "-f", "-", input=manifest, check=False
    )
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def system_namespace(cluster: Cluster) -> str:
    """nhi-system exists (left in place: other tests may keep issuer material there)."""
    if cluster.get("namespace", SYSTEM) is None:
        cluster.kubectl("create", "namespace", SYSTEM)
    return SYSTEM


@pytest.fixture(scope="module")
def chart_crds(cluster: Cluster) -> Cluster:
    """The chart's CRDs (the canonical ones and kopf's peering CRDs), established."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{n}" for n in CRD_NAMES)
    )
    return cluster


@pytest.fixture(scope="module")
def release(helm: Helm, system_namespace: str) -> Iterator[str]:
    """The chart installed with its defaults; uninstalled at the end whatever happened."""
    helm("uninstall", RELEASE, "-n", SYSTEM, "--ignore-not-found", "--wait", "--timeout=2m")
    helm("install", RELEASE, str(CHART), "-n", SYSTEM, "--timeout=2m")
    yield RELEASE
    helm("uninstall", RELEASE, "-n", SYSTEM, "--ignore-not-found", "--wait", "--timeout=2m")


@contextlib.contextmanager
def session_operator_paused() -> Iterator[None]:
    """Freeze the session's own operator (tests.conftest ``operator`` fixture) while we run ours.

    It watches every namespace with admin rights: left running, it would reconcile our test
    identities first and hide a permission the chart's ServiceAccount lacks.
    """
    op = conftest._OPERATOR
    if op is None or op.proc.poll() is not None:
        yield
        return
    os.killpg(op.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(op.proc.pid, signal.SIGCONT)


def service_account_kubeconfig(cluster: Cluster, path: Path) -> Path:
    """A kubeconfig that authenticates as the chart's ServiceAccount (a TokenRequest token)."""
    token = cluster.kubectl(
        "create", "token", RELEASE, "-n", SYSTEM, "--duration=1h"
    ).stdout.strip()
    raw = json.loads(cluster.kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout)
    (entry,) = raw["clusters"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [entry],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": entry["name"], "user": "sa"}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def run_as_deployed(
    cluster: Cluster, kubeconfig: Path, log_path: Path, pod: str = "nhi-operator-0"
) -> OperatorProcess:
    """Run the operator with the installed Deployment's args and env, as its ServiceAccount."""
    deploy = cluster.get("deployment", RELEASE, SYSTEM)
    assert deploy is not None
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    # Ports are picked free here: the control planes of other sessions share this machine.
    # The webhook is left out: the API server cannot reach a Service without a kubelet, and
    # replicas on one machine would share its port (tests/integration/test_webhook.py covers
    # it on loopback).
    args = [
        a
        for a in container["args"]
        if not a.startswith(("--health-port", "--metrics-port", "--webhook-"))
    ]
    env = dict(cluster.env(), KUBECONFIG=str(kubeconfig))
    downward = {"metadata.name": pod, "metadata.namespace": SYSTEM}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            env[var["name"]] = downward[var["valueFrom"]["fieldRef"]["fieldPath"]]
    return start_operator(cluster, log_path, *args, env=env)


def ready(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    obj = cluster.get("machineidentity", name, namespace)
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == "Ready" and c["status"] == "True":
            if obj and obj["status"].get("observedGeneration") == obj["metadata"]["generation"]:
                return obj
    return None


def assert_no_forbidden(op: OperatorProcess) -> None:
    lines = [line for line in op.log().splitlines() if "forbidden" in line.lower()]
    assert not lines, "the operator was refused:\n" + "\n".join(lines[:10])


def allow_policy(cluster: Cluster, namespace: str, *, cluster_rules: bool) -> str:
    """An IdentityPolicy for this namespace only: ClusterRole view may be bound."""
    cluster.kubectl(
        "label", "namespace", namespace, f"nhi-test-packaging={namespace}", "--overwrite"
    )
    name = f"packaging-{namespace}"
    cluster.apply(
        {
            "apiVersion": "nhi.dev/v1alpha1",
            "kind": "IdentityPolicy",
            "metadata": {"name": name},
            "spec": {
                "namespaceSelector": {"matchLabels": {"nhi-test-packaging": namespace}},
                "allowedClusterRoles": ["view"],
                "allowClusterRules": cluster_rules,
            },
        }
    )
    return name


def can_i(cluster: Cluster, *args: str) -> bool:
    proc = cluster.kubectl("auth", "can-i", *args, f"--as={SA_USER}", check=False)
    return proc.stdout.strip() == "yes"


# ---------------------------------------------------------------------------- static renders


@pytest.mark.parametrize(
    "values",
    [
        [],
        [
            "--set=metrics.serviceMonitor.enabled=true",
            "--set=metrics.prometheusRule.enabled=true",
            "--set=networkPolicy.enabled=true",
            "--set=watchNamespaces={team-a,team-b}",
            "--set=rbac.clusterScopedGrants=false",
        ],
    ],
    ids=["defaults", "every-option"],
)
def test_helm_lint_strict(helm: Helm, values: list[str]) -> None:
    proc = helm("lint", "--strict", str(CHART), *values)
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["--set=replicaCunt=1"], "additional properties 'replicaCunt' not allowed"),
        (
            ["--set=metrics.serviceMonitor.enabeld=true"],
            "at '/metrics/serviceMonitor': additional properties 'enabeld' not allowed",
        ),
        (["--set=operator.logLevel=LOUD"], "at '/operator/logLevel'"),
        (["--set=replicaCount=two"], "at '/replicaCount'"),
        (["--set=watchNamespaces={Team_A}"], "at '/watchNamespaces/0'"),
    ],
    ids=["top-level-typo", "nested-typo", "bad-enum", "bad-type", "bad-namespace"],
)
def test_a_mistake_in_values_fails_with_a_schema_message(
    helm: Helm, values: list[str], message: str
) -> None:
    proc = helm("template", RELEASE, str(CHART), *values, check=False)
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert message in proc.stderr, proc.stderr


def test_a_typo_in_a_values_file_fails_helm_install(
    helm: Helm, tmp_path: Path, system_namespace: str
) -> None:
    values = tmp_path / "values.yaml"
    values.write_text("operator:\n  logLevl: DEBUG\n")
    proc = helm("install", "typo", str(CHART), "-n", SYSTEM, "-f", str(values), check=False)
    assert proc.returncode != 0
    assert "at '/operator': additional properties 'logLevl' not allowed" in proc.stderr
    assert helm("status", "typo", "-n", SYSTEM, check=False).returncode != 0


def test_inconsistent_values_fail_with_a_clear_message(helm: Helm) -> None:
    proc = helm(
        "template",
        RELEASE,
        str(CHART),
        "--set=replicaCount=3",
        "--set=peering.enabled=false",
        check=False,
    )
    assert proc.returncode != 0
    assert "replicaCount > 1 needs peering.enabled=true" in proc.stderr


def test_prometheus_rule_and_service_monitor(helm: Helm) -> None:
    docs = render(
        helm,
        "--set=metrics.serviceMonitor.enabled=true",
        "--set=metrics.prometheusRule.enabled=true",
    )
    rule = one(docs, "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(RULES_FILE.read_text())["groups"]
    monitor = one(docs, "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["honorLabels"] is True
    service = one(docs, "Service", f"{RELEASE}-metrics")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}
    ]
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )


def _operator_role(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The operator's own ClusterRole (besides it: the AccessGrant approver and requester
    roles for namespace owners to bind)."""
    return one([d for d in docs if not d["metadata"]["name"].endswith(GRANT_ROLES)], "ClusterRole")


GRANT_ROLES = ("-grant-approver", "-grant-requester")


def test_the_access_grant_policies_are_rendered_where_the_api_server_serves_them(
    helm: Helm,
) -> None:
    def grants(*args: str) -> list[str]:
        return [
            f"{d['kind']}/{d['metadata']['name']}"
            for d in render(helm, *args)
            if "-grant-" in d["metadata"]["name"] or d["metadata"]["name"].endswith("-grants")
        ]

    assert grants() == []  # no MutatingAdmissionPolicy API (helm template without a cluster)
    assert grants(MAP_API, "--set=accessGrants.enabled=false") == []
    rendered = grants(MAP_API)
    assert f"ValidatingAdmissionPolicy/{RELEASE}-access-grants" in rendered
    assert f"MutatingAdmissionPolicy/{RELEASE}-grant-requester" in rendered
    assert f"ClusterRole/{RELEASE}-grant-approver" in rendered


def test_chart_and_kustomize_base_grant_the_same_cluster_role(helm: Helm, cluster: Cluster) -> None:
    chart = _operator_role(render(helm))
    base = _operator_role([d for d in yaml.safe_load_all(kustomize(cluster, BASE)) if d])
    assert chart["rules"] == base["rules"]


def test_network_policy_admits_only_its_own_ports_and_reaches_only_the_api_server(
    helm: Helm,
) -> None:
    policy = one(
        render(
            helm,
            "--set=networkPolicy.enabled=true",
            "--set=networkPolicy.apiServer.cidrs={10.0.0.1/32}",
        ),
        "NetworkPolicy",
    )
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    ingress_ports = {p["port"] for rule in spec["ingress"] for p in rule["ports"]}
    assert ingress_ports == {"metrics", "health", "webhook"}
    (egress,) = spec["egress"]
    assert egress["to"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]
    assert {p["port"] for p in egress["ports"]} == {443, 6443}


# ---------------------------------------------------------------------------- install


def test_helm_install_creates_a_restricted_operator(cluster: Cluster, release: str) -> None:
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{n}" for n in CRD_NAMES)
    )
    deploy = cluster.get("deployment", release, SYSTEM)
    assert deploy is not None
    assert deploy["spec"]["replicas"] == 2
    pod = deploy["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == release
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/nhi-dev/nhi-operator:0.1.0"
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert {"--peering", f"--peering-name={release}", "--all-namespaces"} <= set(container["args"])
    assert container["livenessProbe"]["httpGet"] == {
        "path": "/healthz",
        "port": "health",
        "scheme": "HTTP",
    }
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "metrics": 9090, "webhook": 9443}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["NHI_LOG_FORMAT"] == "json"
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert container["resources"]["requests"] and container["resources"]["limits"]

    pdb = cluster.get("poddisruptionbudget", release, SYSTEM)
    assert pdb is not None and pdb["spec"]["minAvailable"] == 1
    service = cluster.get("service", f"{release}-metrics", SYSTEM)
    assert service is not None and service["spec"]["ports"][0]["port"] == 9090
    assert cluster.get("clusterkopfpeering", release) is not None
    sa = cluster.get("serviceaccount", release, SYSTEM)
    assert sa is not None
    # This API server serves MutatingAdmissionPolicy: the chart installs the finalizer policy.
    policy = cluster.get("mutatingadmissionpolicy", f"{release}-identity-finalizer")
    assert policy is not None
    binding = cluster.get("mutatingadmissionpolicybinding", f"{release}-identity-finalizer")
    assert binding is not None and binding["spec"]["policyName"] == policy["metadata"]["name"]


def test_the_operator_works_with_the_charts_service_account(
    cluster: Cluster, release: str, namespace: str, tmp_path: Path
) -> None:
    """Cluster-wide, with peering: escalate (a Role with rules the operator lacks), bind (a
    RoleBinding to ClusterRole view), ClusterRole rules, a bound token and a static secret."""
    policy = allow_policy(cluster, namespace, cluster_rules=True)
    identity = {
        "apiVersion": "nhi.dev/v1alpha1",
        "kind": "MachineIdentity",
        "metadata": {"name": "app", "namespace": namespace},
        "spec": {
            "owner": "team-packaging",
            "permissions": {
                "rules": [{"apiGroups": [""], "resources": ["services"], "verbs": ["list"]}],
                "clusterRules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}],
                "roleRefs": [{"kind": "ClusterRole", "name": "view"}],
            },
            "credentials": [
                {
                    "name": "api-token",
                    "type": "ServiceAccountToken",
                    "audiences": ["packaging.example.com"],
                    "ttl": "1h",
                },
                {"name": "signing-key", "type": "StaticSecret", "ttl": "24h"},
            ],
        },
    }
    kubeconfig = service_account_kubeconfig(cluster, tmp_path / "sa.kubeconfig")
    with session_operator_paused():
        op = run_as_deployed(cluster, kubeconfig, tmp_path / "operator.log")
        try:
            cluster.apply(identity)
            wait_for(
                lambda: ready(cluster, namespace, "app"),
                timeout=45,
                message=f"MachineIdentity {namespace}/app Ready (operator log: {op.log_path})",
            )
            assert cluster.get("role", "nhi-app", namespace) is not None
            assert cluster.get("rolebinding", "nhi:app:clusterrole:view", namespace) is not None
            assert cluster.get("clusterrole", f"nhi:{namespace}:app") is not None
            assert cluster.get("secret", "app.api-token", namespace) is not None
            assert cluster.get("secret", "app.signing-key", namespace) is not None
            peering = cluster.get("clusterkopfpeering", release)
            assert "nhi-operator-0" in ((peering or {}).get("status") or {})

            cluster.kubectl("delete", "machineidentity", "app", "-n", namespace, "--timeout=60s")
            wait_for(
                lambda: cluster.get("clusterrole", f"nhi:{namespace}:app") is None,
                timeout=30,
                message="the identity's ClusterRole removed",
            )
            assert_no_forbidden(op)
        finally:
            op.stop()
            cluster.kubectl("delete", "identitypolicy", policy, "--ignore-not-found", check=False)


def test_two_replicas_with_peering_keep_one_active(
    cluster: Cluster, release: str, namespace: str, tmp_path: Path
) -> None:
    kubeconfig = service_account_kubeconfig(cluster, tmp_path / "sa.kubeconfig")
    name = "peered"
    with session_operator_paused():
        first = run_as_deployed(cluster, kubeconfig, tmp_path / "op-0.log", "nhi-operator-0")
        second = run_as_deployed(cluster, kubeconfig, tmp_path / "op-1.log", "nhi-operator-1")
        try:
            wait_for(
                lambda: (
                    len(((cluster.get("clusterkopfpeering", release) or {}).get("status")) or {})
                    >= 2
                ),
                timeout=20,
                message="both replicas in the peering object",
            )
            cluster.apply(
                {
                    "apiVersion": "nhi.dev/v1alpha1",
                    "kind": "MachineIdentity",
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": {"owner": "team-packaging"},
                }
            )
            wait_for(lambda: ready(cluster, namespace, name), timeout=20, message="Ready")
            # Exactly one replica did the work; the other stood by. (A replica that starts
            # below a higher peer stays paused without logging it, so the work is counted.)
            workers = [op for op in (first, second) if "created child" in op.log()]
            assert len(workers) == 1, "exactly one replica should reconcile"
        finally:
            # While the replicas still run: one of them may have to remove its finalizer.
            cluster.kubectl(
                "delete", "machineidentity", name, "-n", namespace, "--timeout=20s", check=False
            )
            first.stop()
            second.stop()


def test_helm_upgrade_to_a_namespace_scoped_install(
    cluster: Cluster, helm: Helm, release: str, namespace: str, tmp_path: Path
) -> None:
    helm(
        "upgrade",
        release,
        str(CHART),
        "-n",
        SYSTEM,
        "--timeout=2m",
        f"--set=watchNamespaces={{{namespace}}}",
        "--set=replicaCount=1",
        "--set=operator.logLevel=DEBUG",
        "--set=rbac.clusterScopedGrants=false",
    )
    deploy = cluster.get("deployment", release, SYSTEM)
    assert deploy is not None and deploy["spec"]["replicas"] == 1
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert f"--namespace={namespace}" in container["args"]
    assert "--all-namespaces" not in container["args"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["NHI_LOG_LEVEL"] == "DEBUG"
    assert deploy["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 65532
    # One replica: no PodDisruptionBudget to block node drains. Peering moves to the namespace.
    assert cluster.get("poddisruptionbudget", release, SYSTEM) is None
    assert cluster.get("clusterkopfpeering", release) is None
    assert cluster.get("kopfpeering", release, namespace) is not None

    # Secrets (and every other namespaced object) only in the served namespace.
    assert can_i(cluster, "create", "secrets", "-n", namespace)
    assert can_i(cluster, "escalate", "roles.rbac.authorization.k8s.io", "-n", namespace)
    assert not can_i(cluster, "list", "secrets", "--all-namespaces")
    assert not can_i(cluster, "get", "secrets", "-n", "default")
    assert not can_i(cluster, "escalate", "roles.rbac.authorization.k8s.io", "-n", "default")
    # Its own namespace keeps the CA material of ClusterIdentityIssuers.
    assert can_i(cluster, "create", "secrets", "-n", SYSTEM)
    assert not can_i(cluster, "create", "serviceaccounts", "-n", SYSTEM)
    # No cluster-wide grant: ClusterRoles may be bound inside the namespace, not written.
    assert can_i(cluster, "bind", "clusterroles.rbac.authorization.k8s.io/view", "-n", namespace)
    assert not can_i(cluster, "create", "clusterrolebindings.rbac.authorization.k8s.io")
    assert not can_i(cluster, "escalate", "clusterroles.rbac.authorization.k8s.io")
    assert not can_i(cluster, "create", "rolebindings.rbac.authorization.k8s.io", "-n", "default")

    policy = allow_policy(cluster, namespace, cluster_rules=False)
    kubeconfig = service_account_kubeconfig(cluster, tmp_path / "sa.kubeconfig")
    with session_operator_paused():
        op = run_as_deployed(cluster, kubeconfig, tmp_path / "operator.log")
        try:
            cluster.apply(
                {
                    "apiVersion": "nhi.dev/v1alpha1",
                    "kind": "MachineIdentity",
                    "metadata": {"name": "scoped", "namespace": namespace},
                    "spec": {
                        "owner": "team-packaging",
                        "permissions": {
                            "rules": [
                                {"apiGroups": [""], "resources": ["services"], "verbs": ["list"]}
                            ],
                            "roleRefs": [{"kind": "ClusterRole", "name": "view"}],
                        },
                        "credentials": [{"name": "key", "type": "StaticSecret", "ttl": "24h"}],
                    },
                }
            )
            wait_for(
                lambda: ready(cluster, namespace, "scoped"),
                timeout=45,
                message=f"MachineIdentity {namespace}/scoped Ready (log: {op.log_path})",
            )
            assert cluster.get("secret", "scoped.key", namespace) is not None
            view = cluster.get("rolebinding", "nhi:scoped:clusterrole:view", namespace)
            assert view is not None and view["roleRef"]["name"] == "view"
            cluster.kubectl("delete", "machineidentity", "scoped", "-n", namespace, "--timeout=60s")
            assert_no_forbidden(op)
        finally:
            op.stop()
            cluster.kubectl("delete", "identitypolicy", policy, "--ignore-not-found", check=False)


def test_the_finalizer_policy_is_rendered_where_the_api_server_serves_it(helm: Helm) -> None:
    def policies(*args: str) -> list[dict[str, Any]]:
        kinds = ("MutatingAdmissionPolicy", "MutatingAdmissionPolicyBinding")
        return [
            d
            for d in render(helm, *args)
            if d["kind"] in kinds and d["metadata"]["name"].endswith("-identity-finalizer")
        ]

    assert policies() == []  # no such API (helm template without a cluster)
    assert policies(MAP_API, "--set=finalizerPolicy.enabled=false") == []
    policy, binding = policies(MAP_API)
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert policy["spec"]["failurePolicy"] == "Ignore"
    assert policy["spec"]["matchConstraints"]["resourceRules"][0]["operations"] == ["CREATE"]
    assert "namespaceSelector" not in policy["spec"]["matchConstraints"]
    assert "nhi.dev/cleanup" in policy["spec"]["mutations"][0]["applyConfiguration"]["expression"]
    scoped, _ = policies(MAP_API, "--set=watchNamespaces={team-a,team-b}")
    assert scoped["spec"]["matchConstraints"]["namespaceSelector"] == {
        "matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]}
        ]
    }


def test_helm_uninstall_removes_the_operator_and_keeps_the_crds(
    cluster: Cluster, helm: Helm, release: str
) -> None:
    helm("uninstall", release, "-n", SYSTEM, "--wait", "--timeout=2m")
    assert cluster.get("deployment", release, SYSTEM) is None
    assert cluster.get("serviceaccount", release, SYSTEM) is None
    assert cluster.get("clusterrole", release) is None
    assert cluster.get("clusterrolebinding", release) is None
    assert cluster.get("mutatingadmissionpolicy", f"{release}-identity-finalizer") is None
    # Helm never deletes what it installed from crds/: the users' identities survive.
    assert cluster.get("crd", "machineidentities.nhi.dev") is not None


# ---------------------------------------------------------------------------- server dry runs


@pytest.mark.parametrize(
    "values",
    [
        [],
        ["--set=networkPolicy.enabled=true", "--set=networkPolicy.apiServer.cidrs={10.0.0.1/32}"],
        ["--set=replicaCount=1", "--set=peering.enabled=false"],
        ["--set=image.digest=sha256:" + "a" * 64],
        ["WATCH", "--set=rbac.clusterScopedGrants=false"],
        [MAP_API],
        ["WATCH", MAP_API],
    ],
    ids=[
        "defaults",
        "network-policy",
        "single-replica",
        "digest",
        "watch-namespaces",
        "finalizer-policy",
        "finalizer-policy-watch-namespaces",
    ],
)
def test_helm_template_is_accepted_by_the_api_server(
    chart_crds: Cluster, helm: Helm, system_namespace: str, namespace: str, values: list[str]
) -> None:
    values = [f"--set=watchNamespaces={{{namespace}}}" if v == "WATCH" else v for v in values]
    out = helm("template", RELEASE, str(CHART), "--namespace", SYSTEM, *values).stdout
    server_dry_run(chart_crds, out)


def test_kustomize_base_is_accepted_by_the_api_server(
    chart_crds: Cluster, system_namespace: str
) -> None:
    server_dry_run(chart_crds, kustomize(chart_crds, BASE))


def test_kustomize_example_overlay_is_accepted_by_the_api_server(
    chart_crds: Cluster, system_namespace: str
) -> None:
    rendered = kustomize(chart_crds, OVERLAY)
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    deploy = one(docs, "Deployment")
    assert deploy["spec"]["replicas"] == 1
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example.com/platform/nhi-operator:0.1.0"
    assert {"name": "NHI_LOG_LEVEL", "value": "DEBUG"} in container["env"]
    assert not [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    server_dry_run(chart_crds, rendered)


# ---------------------------------------------------------------------------- the image's wheel


def test_the_wheel_installs_into_a_fresh_virtualenv_and_runs(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    """What the Dockerfile does: build the wheel, install it alone into a new venv, run it."""
    dist, venv = tmp_path / "dist", tmp_path / "venv"
    clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}

    def run(*cmd: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(c) for c in cmd],
            cwd=tmp_path,
            env=clean_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        return proc

    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, ROOT, timeout=300)
    (wheel,) = dist.glob("nhi_operator-0.1.0-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "nhi/py.typed" in names and "nhi/cli/operator.py" in names
    assert all(n.startswith(("nhi/", "nhi_operator-0.1.0.dist-info/")) for n in names), names

    run(sys.executable, "-m", "venv", venv)
    run(
        venv / "bin" / "python",
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
        wheel,
        timeout=400,
    )
    where = run(venv / "bin" / "python", "-c", "import nhi; print(nhi.__file__)").stdout
    assert where.startswith(str(venv)), f"nhi imported from {where}, not from the new venv"

    assert "--peering" in run(venv / "bin" / "nhi-operator", "--help").stdout
    assert run(venv / "bin" / "nhi-operator", "--version").stdout.strip() == ("nhi-operator 0.1.0")
    assert run(venv / "bin" / "nhi", "version").stdout.strip() == "nhi 0.1.0"

    # Every runtime dependency is declared: the installed operator starts and serves its
    # endpoints (scoped to an empty namespace, so it touches nothing).
    health, metrics = free_port(), free_port()
    log_path = tmp_path / "operator.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                str(venv / "bin" / "nhi-operator"),
                f"--namespace={namespace}",
                f"--health-port={health}",
                f"--metrics-port={metrics}",
            ],
            cwd=tmp_path,
            env=dict(clean_env, KUBECONFIG=str(cluster.kubeconfig)),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    op = OperatorProcess(proc, log_path, health, metrics)
    try:

        def get(port: int, path: str) -> str | None:
            if proc.poll() is not None:
                raise AssertionError(f"the operator exited:\n{op.log()[-3000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                    return str(r.read().decode())
            return None

        wait_for(lambda: get(health, "/healthz"), timeout=60, message="/healthz")
        assert "# HELP" in (wait_for(lambda: get(metrics, "/metrics"), timeout=10) or "")
        first = json.loads(op.log().splitlines()[0])  # NHI_LOG_FORMAT defaults to json
        assert first.get("version") == "0.1.0"
    finally:
        op.stop()

"""Usage from the real kube-apiserver's audit webhook: requests made with an identity's issued
token are recorded, an unused rule is reported and dropped by ``nhi rightsize``, a restart
loses no more than the flush interval, and the endpoint refuses what it must.

The module runs its own operator, restricted (``--namespace``) to namespaces created here, in
an operator namespace of its own, with the usage endpoint where the local control plane's
audit webhook backend posts (``ControlPlane.usage_args``). Usage is written every
FLUSH seconds and a rule is unused after UNUSED_AFTER, so the tests take seconds, not days.
"""

from __future__ import annotations

import base64
import json
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from nhi.testenv.manifests import install_report_crds
from tests.conftest import ROOT, Cluster, OperatorProcess, start_operator, wait_for

pytestmark = pytest.mark.integration

FLUSH = 2
UNUSED_AFTER = 25
LEARNING = 15
BEARER = uuid.uuid4().hex
CM_READ = {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}
SVC_LIST = {"apiGroups": [""], "resources": ["services"], "verbs": ["list"]}


class Usage:
    def __init__(
        self,
        cluster: Cluster,
        op: OperatorProcess,
        op_ns: str,
        pool: list[str],
        env: dict[str, str],
    ) -> None:
        self.cluster, self.op, self.op_ns, self.pool, self.env = cluster, op, op_ns, pool, env
        self.cp = cluster.control_plane

    def restart(self, log: Path) -> None:
        """Start the operator again, same arguments and environment (its namespace)."""
        new = start_operator(self.cluster, log, *self.op.args, env=self.env)
        self.op.proc, self.op.log_path, self.op.metrics_port = (
            new.proc,
            new.log_path,
            new.metrics_port,
        )

    def api(self, token: str, path: str) -> int:
        """A request to the API server as a workload makes it, with the given token."""
        ctx = ssl.create_default_context(cafile=str(self.cp.pki_dir / "ca.crt"))
        req = urllib.request.Request(
            self.cp.server + path, headers={"Authorization": f"Bearer {token}"}
        )
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
                return int(r.status)
        except urllib.error.HTTPError as err:
            return int(err.code)

    def post(
        self, body: bytes, cert: str | None = "audit-webhook", token: str = ""
    ) -> tuple[int, str]:
        """A POST to the usage endpoint, with one of the control plane's client certificates."""
        ctx = ssl.create_default_context(cafile=str(self.cp.pki_dir / "ca.crt"))
        if cert:
            ctx.load_cert_chain(
                str(self.cp.pki_dir / f"{cert}.crt"), str(self.cp.pki_dir / f"{cert}.key")
            )
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        url = f"https://127.0.0.1:{self.cp.audit_webhook_port}/audit"
        req = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as err:
            return int(err.code), err.read().decode()

    def book(self, namespace: str, sa: str) -> dict[str, Any] | None:
        out = self.cluster.kubectl(
            "get", "configmap", "-n", self.op_ns, "-l", "nhi.dev/usage=serviceaccount", "-o", "json"
        )
        for cm in json.loads(out.stdout)["items"]:
            data = json.loads(cm["data"]["usage.json"])
            if data["serviceAccount"] == {"namespace": namespace, "name": sa}:
                return dict(data)
        return None

    def count(self, namespace: str, sa: str, resource: str, name: str, verb: str) -> int:
        book = self.book(namespace, sa) or {"entries": []}
        return sum(
            row[8] for row in book["entries"] if (row[1], row[4], row[5]) == (resource, name, verb)
        )

    def page(self) -> str:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.op.metrics_port}/metrics", timeout=5
        ) as r:
            return str(r.read().decode())

    def metric(self, name: str, **labels: str) -> float:
        """The sample of ``name`` with exactly these labels; 0 when there is none."""
        for family in text_string_to_metric_families(self.page()):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return 0.0


@pytest.fixture(scope="module")
def usage(crds: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Usage]:
    cluster = crds
    if cluster.control_plane is None:
        pytest.skip("needs the local control plane, whose audit webhook posts to the operator")
    suffix = uuid.uuid4().hex[:6]
    op_ns = f"nhi-usage-{suffix}"
    pool = [f"usage-{suffix}-{i}" for i in range(5)]
    for ns in [op_ns, *pool]:
        cluster.kubectl("create", "namespace", ns)
    args = [*cluster.control_plane.usage_args(), f"--usage-flush-interval={FLUSH}"]
    args += [f"--usage-unused-after={UNUSED_AFTER}s", "--policy-status-interval=0"]
    args += [f"--usage-learning-window={LEARNING}s", "--usage-token-secret=audit-token"]
    # The bearer token a forwarder would present instead of the API server's certificate.
    cluster.kubectl("create", "secret", "generic", "audit-token", "-n", op_ns,
                    f"--from-literal=token={BEARER}")  # fmt: skip
    for ns in pool:
        args += ["--namespace", ns]
    # Discovery beside it: unused rules are an NHI5 finding of the inventory's reports.
    install_report_crds(cluster.kubectl)
    args += ["--discovery", f"--discovery-namespace=usage-{suffix}-*", "--discovery-interval=1"]
    log = tmp_path_factory.mktemp("usage") / "operator.log"
    env = {**cluster.env(), "NHI_NAMESPACE": op_ns}
    op = start_operator(cluster, log, *args, env=env)
    try:
        yield Usage(cluster, op, op_ns, pool, env)
    finally:
        op.stop()
        for ns in [op_ns, *pool]:
            cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def pod_bound_token(
    u: Usage, ns: str, sa: str, pod: str, labels: dict[str, str] | None = None
) -> str:
    """A pod running as ``sa`` (no kubelet runs it here) and a token bound to it."""
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod, "namespace": ns, "labels": labels or {}},
        "spec": {"serviceAccountName": sa,
                 "containers": [{"name": "app", "image": "registry.invalid/app:1"}]},
    }  # fmt: skip
    u.cluster.apply(body)
    return u.cluster.kubectl("create", "token", sa, "-n", ns, "--bound-object-kind=Pod",
                             f"--bound-object-name={pod}").stdout.strip()  # fmt: skip


def events(u: Usage, ns: str, reason: str) -> list[dict[str, Any]]:
    out = u.cluster.kubectl("get", "events", "-n", ns, "-o", "json")
    return [e for e in json.loads(out.stdout)["items"] if e["reason"] == reason]


def unmanaged_service_account(u: Usage, ns: str, name: str, verbs: str, resources: str) -> None:
    """A ServiceAccount made by hand, with a Role and RoleBinding of the same name."""
    u.cluster.kubectl("create", "serviceaccount", name, "-n", ns)
    u.cluster.kubectl("create", "role", name, "-n", ns, f"--verb={verbs}",
                      f"--resource={resources}")  # fmt: skip
    u.cluster.kubectl("create", "rolebinding", name, "-n", ns, f"--role={name}",
                      f"--serviceaccount={ns}:{name}")  # fmt: skip


def used_then_reported(u: Usage, ns: str, token: str, reason: str) -> dict[str, Any]:
    """List ConfigMaps with ``token`` (once RBAC allows it), then the one Event of ``reason``."""
    wait_for(lambda: u.api(token, f"/api/v1/namespaces/{ns}/configmaps") == 200, timeout=30,
             message="the token to list ConfigMaps")  # fmt: skip
    (event,) = wait_for(lambda: events(u, ns, reason), timeout=30, message=f"the {reason} Event")
    return event


def issued_token(u: Usage, ns: str, name: str, rules: list[dict[str, Any]]) -> str:
    u.cluster.apply(
        {
            "apiVersion": "nhi.dev/v1alpha1",
            "kind": "MachineIdentity",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "owner": "team-a",
                "permissions": {"rules": rules},
                "credentials": [{"name": "api", "type": "ServiceAccountToken", "ttl": "1h"}],
            },
        }
    )

    def token() -> str | None:
        secret = u.cluster.get("secret", f"{name}.api", ns)
        raw = ((secret or {}).get("data") or {}).get("token")
        return base64.b64decode(raw).decode() if raw else None

    return wait_for(token, timeout=60, message="the issued token")


def test_use_is_recorded_an_unused_rule_reported_and_rightsize_drops_it(usage: Usage) -> None:
    u, ns = usage, usage.pool[0]
    token = issued_token(u, ns, "app", [CM_READ, SVC_LIST])
    u.cluster.kubectl("create", "configmap", "settings", "-n", ns)
    wait_for(lambda: u.api(token, f"/api/v1/namespaces/{ns}/configmaps/settings") == 200,
             timeout=30, message="the token to read the ConfigMap (RBAC in place)")  # fmt: skip
    for _ in range(3):
        assert u.api(token, f"/api/v1/namespaces/{ns}/configmaps") == 200
    # Refused by RBAC: counted as a denial, not as use.
    assert u.api(token, f"/api/v1/namespaces/{ns}/secrets") == 403

    wait_for(lambda: u.count(ns, "app", "configmaps", "", "list") >= 3, timeout=30,
             message="the three lists recorded")  # fmt: skip
    book = u.book(ns, "app")
    assert book is not None
    assert u.count(ns, "app", "configmaps", "settings", "get") >= 1
    assert not [r for r in book["entries"] if r[1] == "secrets"]
    (cred,) = [c for c in book["credentials"]]
    assert cred[0].startswith("JTI=") and token not in json.dumps(book)
    # The token the operator issued is traced back to the identity and its credential.
    (issued,) = (u.cluster.get("machineidentity", "app", ns) or {})["status"]["credentials"]
    assert issued["credentialID"] == cred[0]

    def traced() -> dict[str, Any] | None:
        obj = u.cluster.get("machineidentity", "app", ns) or {}
        rows = ((obj.get("status") or {}).get("usage") or {}).get("credentials") or []
        return rows[0] if rows and rows[0].get("count", 0) >= 3 else None

    row = wait_for(traced, timeout=30, message="status.usage.credentials")
    assert (row["name"], row["credentialID"]) == ("api", cred[0]) and row["lastUsed"]
    assert u.metric("nhi_usage_denied_requests_total", namespace=ns) >= 1

    def reported() -> dict[str, Any] | None:
        # The workload keeps using rules[0] meanwhile: only rules[1] goes unused.
        assert u.api(token, f"/api/v1/namespaces/{ns}/configmaps/settings") == 200
        obj = u.cluster.get("machineidentity", "app", ns) or {}
        st = (obj.get("status") or {}).get("usage") or {}
        return obj if st.get("unusedRules") == ["spec.permissions.rules[1]"] else None

    obj = wait_for(
        reported, timeout=UNUSED_AFTER + 30, interval=1, message="rules[1] reported unused"
    )
    (cond,) = [c for c in obj["status"]["conditions"] if c["type"] == "UnusedPermissions"]
    assert cond["status"] == "True" and "rules[1]" in cond["message"]
    assert obj["status"]["usage"]["rules"][0]["lastUsed"] is not None
    assert u.metric("nhi_identity_unused_rules", namespace=ns, identity="app") == 1

    # The inventory joins it: an NHI5 finding in the namespace's PolicyReport, and the KPI.
    def finding() -> dict[str, Any] | None:
        body = u.cluster.get("policyreport", "nhi-inventory", ns) or {}
        hits = [r for r in body.get("results") or [] if r["rule"] == "unused-permissions"]
        return hits[0] if hits else None

    result = wait_for(finding, timeout=30, message="the unused-permissions finding")
    assert result["category"].startswith("NHI5")
    assert result["resources"][0]["kind"] == "MachineIdentity"
    assert "spec.permissions.rules[1]" in result["message"]
    used = u.metric("nhi_inventory_permissions_used_ratio")
    assert 0 < used < 1, used

    cli = [sys.executable, "-m", "nhi.cli.main", "rightsize", "app", "-n", ns]
    out = subprocess.run(
        [*cli, "--operator-namespace", u.op_ns],
        env=u.cluster.env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    removed = [line for line in out.stdout.splitlines() if line.startswith("-  ")]
    added = [line for line in out.stdout.splitlines() if line.startswith("+  ")]
    assert any("services" in line for line in removed), out.stdout
    assert not any("services" in line for line in added), out.stdout
    assert any("settings" in line for line in added), out.stdout  # narrowed to the name used

    # The same suggestion kept in status, for GitOps users.
    u.cluster.kubectl("patch", "machineidentity", "app", "-n", ns, "--type=merge",
                      "-p", '{"spec": {"permissions": {"rightsizing": "Suggest"}}}')  # fmt: skip

    def suggestion() -> dict[str, Any] | None:
        obj = u.cluster.get("machineidentity", "app", ns) or {}
        return ((obj.get("status") or {}).get("usage") or {}).get("suggestion")

    suggested = wait_for(suggestion, timeout=30, message="status.usage.suggestion")
    assert {r["resources"][0] for r in suggested["rules"]} == {"configmaps"}


def test_rightsize_of_an_unmanaged_service_account_prints_a_narrower_adoption(
    usage: Usage,
) -> None:
    u, ns = usage, usage.pool[0]
    unmanaged_service_account(u, ns, "legacy", "get,list", "configmaps,secrets")
    token = u.cluster.kubectl("create", "token", "legacy", "-n", ns).stdout.strip()
    wait_for(lambda: u.api(token, f"/api/v1/namespaces/{ns}/configmaps") == 200, timeout=30,
             message="the legacy token to list ConfigMaps")  # fmt: skip
    wait_for(lambda: u.count(ns, "legacy", "configmaps", "", "list") >= 1, timeout=30,
             message="the legacy ServiceAccount's use recorded")  # fmt: skip
    cli = [sys.executable, "-m", "nhi.cli.main", "rightsize", "legacy", "-n", ns]
    out = subprocess.run(
        [*cli, "--operator-namespace", u.op_ns],
        env=u.cluster.env(), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    manifest = yaml.safe_load(out.stdout)
    assert manifest["kind"] == "MachineIdentity"
    assert manifest["metadata"]["annotations"] == {"nhi.dev/adopt": "true"}
    # Held today: get and list on configmaps and secrets; used: list on configmaps.
    assert manifest["spec"]["permissions"] == {
        "rules": [{"verbs": ["list"], "apiGroups": [""], "resources": ["configmaps"]}]
    }


def test_a_restart_keeps_what_was_flushed(usage: Usage, tmp_path: Path) -> None:
    u, ns = usage, usage.pool[1]
    token = issued_token(u, ns, "worker", [CM_READ])
    wait_for(lambda: u.api(token, f"/api/v1/namespaces/{ns}/configmaps") == 200, timeout=30,
             message="the token to list ConfigMaps")  # fmt: skip
    for _ in range(4):
        u.api(token, f"/api/v1/namespaces/{ns}/configmaps")
    wait_for(lambda: u.count(ns, "worker", "configmaps", "", "list") >= 5, timeout=30,
             message="five lists persisted")  # fmt: skip
    before = u.count(ns, "worker", "configmaps", "", "list")
    # The hardest stop: nothing is flushed on the way out.
    u.op.stop(signal.SIGKILL)
    u.restart(tmp_path / "restarted.log")
    assert u.api(token, f"/api/v1/namespaces/{ns}/configmaps") == 200
    wait_for(lambda: u.count(ns, "worker", "configmaps", "", "list") >= before + 1, timeout=60,
             message="the count after the restart to start from the persisted one")  # fmt: skip


def test_a_new_behaviour_after_the_learning_window_is_an_event_and_a_metric(usage: Usage) -> None:
    u, ns = usage, usage.pool[2]
    token = issued_token(u, ns, "reporter", [{**CM_READ, "verbs": ["get", "list", "watch"]}])
    wait_for(lambda: u.api(token, f"/api/v1/namespaces/{ns}/configmaps") == 200, timeout=30,
             message="the token to list ConfigMaps")  # fmt: skip
    first = time.monotonic()

    def new_behaviour() -> list[dict[str, Any]]:
        out = u.cluster.kubectl("get", "events", "-n", ns, "-o", "json")
        return [e for e in json.loads(out.stdout)["items"] if e["reason"] == "NewBehaviour"]

    # Still learning: a new verb is learnt, not reported.
    assert u.api(token, f"/api/v1/namespaces/{ns}/configmaps/missing") == 404
    time.sleep(max(0.0, LEARNING + 2 - (time.monotonic() - first)))
    assert u.api(token, f"/api/v1/namespaces/{ns}/configmaps?watch=false&limit=1") == 200
    assert new_behaviour() == []  # list and get were both learnt within the window
    before = u.metric("nhi_usage_new_behaviours_total", namespace=ns)
    # A verb it never used: watch, past the window.
    assert u.api(token, f"/api/v1/namespaces/{ns}/configmaps?watch=true&timeoutSeconds=1") == 200
    (event,) = wait_for(new_behaviour, timeout=30, message="the NewBehaviour Event")
    assert event["involvedObject"]["kind"] == "MachineIdentity"
    assert event["involvedObject"]["name"] == "reporter" and event["type"] == "Warning"
    assert "used watch on core/configmaps" in event["message"] and "JTI=" in event["message"]
    assert token not in event["message"]
    assert u.metric("nhi_usage_new_behaviours_total", namespace=ns) == before + 1


def test_a_token_a_person_minted_and_used_is_reported_and_the_operators_own_are_not(
    usage: Usage,
) -> None:
    u, ns = usage, usage.pool[3]
    issued = issued_token(u, ns, "lineage", [CM_READ])
    wait_for(lambda: u.api(issued, f"/api/v1/namespaces/{ns}/configmaps") == 200, timeout=30,
             message="the issued token to list ConfigMaps")  # fmt: skip
    # alice may mint tokens of the identity's ServiceAccount, and does (kubectl create token).
    u.cluster.kubectl("create", "role", "mint", "-n", ns, "--verb=create",
                      "--resource=serviceaccounts/token")  # fmt: skip
    u.cluster.kubectl("create", "rolebinding", "mint", "-n", ns, "--role=mint", "--user=alice")
    minted = u.cluster.kubectl("create", "token", "lineage", "-n", ns, as_user="alice")
    token = minted.stdout.strip()
    assert u.api(token, f"/api/v1/namespaces/{ns}/configmaps") == 200

    def findings() -> list[dict[str, Any]]:
        return events(u, ns, "TokenMintedByPerson")

    (event,) = wait_for(findings, timeout=30, message="the TokenMintedByPerson Event")
    assert event["involvedObject"]["kind"] == "MachineIdentity"
    assert event["involvedObject"]["name"] == "lineage"
    assert "minted by alice" in event["message"] and "JTI=" in event["message"]
    assert token not in event["message"] and issued not in event["message"]
    assert u.metric("nhi_usage_person_minted_tokens_total", namespace=ns) == 1
    # The token the operator issued (minted by the operator itself) is no finding.
    assert u.api(issued, f"/api/v1/namespaces/{ns}/configmaps") == 200
    time.sleep(FLUSH * 2)
    assert len(findings()) == 1


@pytest.fixture(scope="module")
def log_source(usage: Usage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Usage]:
    """A second operator reading the control plane's audit log file instead (its own
    operator namespace, so its usage ConfigMaps are its own; its own namespace to serve)."""
    cluster = usage.cluster
    suffix = uuid.uuid4().hex[:6]
    op_ns, ns = f"nhi-usage-log-{suffix}", f"usage-log-{suffix}"
    for name in (op_ns, ns):
        cluster.kubectl("create", "namespace", name)
    args = [f"--usage-audit-log={cluster.control_plane.audit_log}"]
    args += [f"--usage-flush-interval={FLUSH}", "--policy-status-interval=0", "--namespace", ns]
    env = {**cluster.env(), "NHI_NAMESPACE": op_ns}
    log = tmp_path_factory.mktemp("usage-log") / "operator.log"
    op = start_operator(cluster, log, *args, env=env)
    try:
        yield Usage(cluster, op, op_ns, [ns], env)
    finally:
        op.stop()
        for name in (op_ns, ns):
            cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_the_audit_log_file_is_a_source_too_and_a_restart_goes_on_from_its_checkpoint(
    log_source: Usage, tmp_path: Path
) -> None:
    u, ns = log_source, log_source.pool[0]
    token = issued_token(u, ns, "tailed", [CM_READ])
    wait_for(lambda: u.api(token, f"/api/v1/namespaces/{ns}/configmaps") == 200, timeout=30,
             message="the token to list ConfigMaps")  # fmt: skip
    for _ in range(2):
        u.api(token, f"/api/v1/namespaces/{ns}/configmaps")
    wait_for(lambda: u.count(ns, "tailed", "configmaps", "", "list") >= 3, timeout=30,
             message="the lists read from the audit log")  # fmt: skip
    time.sleep(FLUSH * 3)  # the books and then the checkpoint written
    before = u.count(ns, "tailed", "configmaps", "", "list")
    state = u.cluster.get("configmap", "nhi-usage-state", u.op_ns) or {}
    assert "logCheckpoint" in (state.get("data") or {})
    u.op.stop(signal.SIGKILL)
    u.restart(tmp_path / "restarted.log")
    assert u.api(token, f"/api/v1/namespaces/{ns}/configmaps") == 200
    wait_for(lambda: u.count(ns, "tailed", "configmaps", "", "list") >= before + 1, timeout=60,
             message="the request after the restart")  # fmt: skip
    time.sleep(FLUSH * 2)
    # Went on from the checkpoint: the file was not counted again from its start.
    assert u.count(ns, "tailed", "configmaps", "", "list") == before + 1


def test_a_pod_bound_token_used_from_outside_its_pod_is_reported(usage: Usage) -> None:
    u, ns = usage, usage.pool[1]
    issued_token(u, ns, "podbound", [CM_READ])
    token = pod_bound_token(u, ns, "podbound", "podbound-0")
    # No kubelet runs here: the pod's address is set as a kubelet would report it.
    status = '{"status": {"podIP": "10.9.8.7", "podIPs": [{"ip": "10.9.8.7"}]}}'
    u.cluster.kubectl("patch", "pod", "podbound-0", "-n", ns, "--subresource=status",
                      "--type=merge", "-p", status)  # fmt: skip
    # This request comes from 127.0.0.1, not from the pod's 10.9.8.7: the token left its pod.
    event = used_then_reported(u, ns, token, "TokenUsedOutsidePod")
    assert event["involvedObject"]["name"] == "podbound"
    assert "bound to pod podbound-0 was used from 127.0.0.1" in event["message"]
    assert "10.9.8.7" in event["message"] and token not in event["message"]
    assert u.metric("nhi_usage_tokens_outside_pod_total", namespace=ns) == 1


def test_a_token_of_a_pod_that_is_not_the_identitys_workload_is_reported(usage: Usage) -> None:
    u, ns = usage, usage.pool[2]
    u.cluster.apply(
        {
            "apiVersion": "nhi.dev/v1alpha1",
            "kind": "MachineIdentity",
            "metadata": {"name": "billing", "namespace": ns},
            "spec": {
                "owner": "team-a",
                "workloads": {"selector": {"matchLabels": {"app": "billing"}}},
                "permissions": {"rules": [CM_READ]},
            },
        }
    )
    wait_for(lambda: u.cluster.get("serviceaccount", "billing", ns), timeout=60,
             message="the identity's ServiceAccount")  # fmt: skip
    # Someone starts a pod of their own with the identity's ServiceAccount.
    token = pod_bound_token(u, ns, "billing", "borrower", {"app": "other"})
    event = used_then_reported(u, ns, token, "TokenOfForeignPod")
    assert event["involvedObject"]["kind"] == "MachineIdentity"
    assert "bound to pod borrower, which is not among the workloads" in event["message"]
    assert token not in event["message"]
    assert u.metric("nhi_usage_tokens_foreign_pod_total", namespace=ns) == 1


def test_a_legacy_token_is_traced_to_its_secret(usage: Usage) -> None:
    u, ns = usage, usage.pool[4]
    unmanaged_service_account(u, ns, "legacy", "list", "configmaps")
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/service-account-token",
        "metadata": {"name": "legacy-token", "namespace": ns,
                     "annotations": {"kubernetes.io/service-account.name": "legacy"}},
    }  # fmt: skip
    u.cluster.apply(secret)

    def value() -> str | None:
        raw = ((u.cluster.get("secret", "legacy-token", ns) or {}).get("data") or {}).get("token")
        return base64.b64decode(raw).decode() if raw else None

    token = wait_for(value, timeout=30, message="the token controller to fill the Secret")
    wait_for(lambda: u.api(token, f"/api/v1/namespaces/{ns}/configmaps") == 200, timeout=30,
             message="the legacy token to list ConfigMaps")  # fmt: skip

    def credentials() -> list[Any]:
        return list((u.book(ns, "legacy") or {}).get("credentials") or [])

    creds = wait_for(credentials, timeout=FLUSH + 30, message="the legacy token's use recorded")
    assert [c[0] for c in creds] == ["Secret=legacy-token"]
    assert token not in json.dumps(u.book(ns, "legacy"))


def test_unauthenticated_malformed_and_oversized_posts_are_refused(usage: Usage) -> None:
    u = usage
    good = json.dumps({"apiVersion": "audit.k8s.io/v1", "kind": "EventList", "items": []}).encode()
    before = u.metric("nhi_usage_batches_total", result="unauthenticated")
    assert u.post(good, cert=None)[0] == 401
    assert u.post(good, cert=None, token="guessed")[0] == 401
    # The bearer token from the Secret is accepted without a certificate.
    assert u.post(good, cert=None, token=BEARER)[0] == 200
    # Signed by the same CA, but not the API server's audit certificate.
    assert u.post(good, cert="admin")[0] == 401
    assert u.metric("nhi_usage_batches_total", result="unauthenticated") == before + 3
    status, text = u.post(good[:20])
    assert status == 400 and "not valid JSON" in text
    bad = {"apiVersion": "audit.k8s.io/v1", "kind": "EventList", "items": [{"auditID": 1}]}
    status, text = u.post(json.dumps(bad).encode())
    assert status == 400 and "items[0].auditID" in text
    status, _ = u.post(b'{"items": [' + b'"x",' * (3 * 1024 * 1024) + b'"x"]}')
    assert status == 413
    assert u.post(good)[0] == 200
    assert u.op.proc.poll() is None
    assert (ROOT / "manifests" / "audit" / "audit-policy.yaml").exists()


def test_an_access_grant_records_what_it_was_used_for(usage: Usage) -> None:
    """The grant's permission, used with the identity's token during its window, is named in
    the grant's status when it ends."""
    u, ns = usage, usage.pool[4]
    token = issued_token(u, ns, "jit", [CM_READ])
    u.cluster.kubectl("label", "namespace", ns, f"usage-grants={ns}")
    policy = {
        "apiVersion": "nhi.dev/v1alpha1",
        "kind": "IdentityPolicy",
        "metadata": {"name": f"usage-grants-{ns}"},
        "spec": {
            "namespaceSelector": {"matchLabels": {"usage-grants": ns}},
            "requireOwner": False,
            "grants": {"autoApprove": {"maxDuration": "1h", "verbs": ["list"]}},
        },
    }
    u.cluster.apply(policy)
    try:
        u.cluster.apply(
            {
                "apiVersion": "nhi.dev/v1alpha1",
                "kind": "AccessGrant",
                "metadata": {"name": "list-services", "namespace": ns},
                "spec": {
                    "identityRef": {"name": "jit"},
                    "rules": [SVC_LIST],
                    "duration": "30m",
                    "reason": "see which services exist",
                },
            }
        )
        wait_for(lambda: u.api(token, f"/api/v1/namespaces/{ns}/services") == 200, timeout=60,
                 message="the grant's permission in place")  # fmt: skip
        assert u.api(token, f"/api/v1/namespaces/{ns}/services") == 200
        wait_for(lambda: u.count(ns, "jit", "services", "", "list") >= 2, timeout=30,
                 message="the lists recorded")  # fmt: skip
        u.cluster.kubectl("patch", "accessgrant", "list-services", "-n", ns, "--type=merge",
                          "-p", json.dumps({"spec": {"revoked": True}}))  # fmt: skip

        def used() -> list[str] | None:
            grant = u.cluster.get("accessgrant", "list-services", ns) or {}
            status = grant.get("status") or {}
            return status.get("usedFor") if status.get("phase") == "Revoked" else None

        used_for = wait_for(used, timeout=30, message="the grant's usedFor")
        assert any(line.endswith(f"x list services in {ns}") for line in used_for), used_for
        assert not any("configmaps" in line for line in used_for), used_for
        assert u.api(token, f"/api/v1/namespaces/{ns}/services") == 403
    finally:
        u.cluster.kubectl("delete", "identitypolicy", f"usage-grants-{ns}", "--ignore-not-found")

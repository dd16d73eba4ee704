"""The shipped alerts and dashboard against a real Prometheus scraping the running operator.

Prometheus (the Debian package's /usr/bin/prometheus) is started on a free loopback port with
a scrape and evaluation interval of 1s, the operator as its only target (job nhi-operator) and
the shipped rule file manifests/prometheus/nhi-operator.rules.yaml, unchanged: the thresholds
and `for:` durations are the real ones (their arithmetic is unit-tested with promtool in
tests/prometheus/; here the point is the whole chain: operator -> metrics -> scrape -> rule ->
alert, and back).

Scenario: a ClusterIdentityIssuer of type `ca` reads a CA Secret; an identity gets an X509
credential with a 10m ttl and renewBefore 9m50s, so its renewal is due one minute after
issuance (what renewBefore asks, ~10s, is sooner than the operator's minimum interval between
two issuances). The CA Secret is then deleted, so the renewal cannot happen.
NHICredentialRenewalOverdue fires when the renewal is late by more than max(60s, 10% of the
~11m lifetime) for 1m: about 3m10s after issuance. The Secret is restored: the credential is
renewed, its renewal time moves into the future and the alert goes away.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from nhi.crypto import build_self_signed_ca, cert_pem, generate_key, private_key_pem
from tests.conftest import ROOT, Cluster, OperatorProcess, free_port, wait_for

pytestmark = pytest.mark.e2e

RULES = ROOT / "manifests" / "prometheus" / "nhi-operator.rules.yaml"
CHART = ROOT / "charts" / "nhi-operator"
DASHBOARD = CHART / "dashboards" / "nhi-operator.json"
ALERT = "NHICredentialRenewalOverdue"
SYSTEM = os.environ.get("NHI_NAMESPACE", "nhi-system")


# ---------------------------------------------------------------------------- Prometheus


@dataclass
class Prometheus:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=5) as resp:
            body = json.loads(resp.read().decode())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=expr)
        result = data["result"]
        return list(result) if isinstance(result, list) else [result]

    def alerts(self, name: str, **labels: str) -> list[dict[str, Any]]:
        return [
            a
            for a in self.get("/api/v1/alerts")["alerts"]
            if a["labels"].get("alertname") == name
            and all(a["labels"].get(k) == v for k, v in labels.items())
        ]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


def prometheus_binary() -> str:
    path = os.environ.get("PROMETHEUS") or shutil.which("prometheus") or "/usr/bin/prometheus"
    if not Path(path).exists():
        pytest.fail(
            "prometheus is not installed: install the Debian 'prometheus' package "
            "(make system-deps runs hack/system-deps.sh)",
            pytrace=False,
        )
    return path


@pytest.fixture
def prometheus(operator: OperatorProcess, tmp_path: Path) -> Iterator[Prometheus]:
    """Prometheus scraping the session's operator every second with the shipped rules."""
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {
                "job_name": "nhi-operator",
                "static_configs": [{"targets": [f"127.0.0.1:{operator.metrics_port}"]}],
            }
        ],
    }
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = tmp_path / "prometheus.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [
                prometheus_binary(),
                f"--config.file={config_path}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    prom = Prometheus(proc, port, log_path)
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"prometheus exited {proc.returncode}:\n{prom.log()[-3000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=1) as r:
                    return int(r.status) == 200
            return False

        wait_for(ready, timeout=30, message="prometheus /-/ready")
        wait_for(
            lambda: any(t["health"] == "up" for t in prom.get("/api/v1/targets")["activeTargets"]),
            timeout=15,
            message="the operator target to be up",
        )
        yield prom
    finally:
        prom.stop()
        assert proc.poll() is not None


# ---------------------------------------------------------------------------- cluster objects


def ca_secret(name: str) -> dict[str, Any]:
    key = generate_key("ECDSA-P256")
    cert = build_self_signed_ca("NHI e2e Root", key, dt.datetime.now(dt.UTC), dt.timedelta(days=30))
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": SYSTEM},
        "data": {
            "tls.crt": base64.b64encode(cert_pem(cert)).decode(),
            "tls.key": base64.b64encode(private_key_pem(key)).decode(),
        },
    }


def ready_condition(obj: dict[str, Any] | None) -> dict[str, Any]:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == "Ready":
            return dict(c)
    return {}


def wait_ready(
    cluster: Cluster, kind: str, name: str, namespace: str | None, status: str, timeout: float = 30
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = cluster.get(kind, name, namespace)
        return obj if ready_condition(obj).get("status") == status else None

    return wait_for(check, timeout=timeout, message=f"{kind}/{name} Ready={status}")


def credential(cluster: Cluster, namespace: str) -> dict[str, Any]:
    obj = cluster.get("machineidentity", "app", namespace) or {}
    creds = (obj.get("status") or {}).get("credentials") or []
    return dict(creds[0]) if creds else {}


def _cluster() -> Cluster:
    from tests import conftest

    assert conftest._CLUSTER is not None
    return conftest._CLUSTER


# ---------------------------------------------------------------------------- the scenario


@pytest.mark.timeout(480)
def test_renewal_overdue_fires_while_the_issuer_is_broken_and_resolves_once_fixed(
    prometheus: Prometheus, namespace: str, record_property: Any
) -> None:
    cluster = _cluster()
    if cluster.get("namespace", SYSTEM) is None:
        cluster.kubectl("create", "namespace", SYSTEM, check=False)
    suffix = uuid.uuid4().hex[:6]
    issuer, secret_name = f"e2e-ca-{suffix}", f"e2e-ca-{suffix}-root"
    secret = ca_secret(secret_name)
    cluster.apply(secret)
    cluster.apply(
        {
            "apiVersion": "nhi.dev/v1alpha1",
            "kind": "ClusterIdentityIssuer",
            "metadata": {"name": issuer},
            "spec": {
                "trustDomain": "e2e.example.org",
                "ca": {"secretName": secret_name},
                "crl": {"configMapName": f"{issuer}-crl"},
            },
        }
    )
    try:
        wait_ready(cluster, "clusteridentityissuer", issuer, None, "True")
        cluster.apply(
            {
                "apiVersion": "nhi.dev/v1alpha1",
                "kind": "MachineIdentity",
                "metadata": {"name": "app", "namespace": namespace},
                "spec": {
                    "owner": "team-observability",
                    "rotation": {"renewBefore": "9m50s"},
                    "credentials": [
                        {
                            "name": "mtls",
                            "type": "X509",
                            "ttl": "10m",
                            "issuerRef": {"kind": "ClusterIdentityIssuer", "name": issuer},
                        }
                    ],
                },
            }
        )
        wait_ready(cluster, "machineidentity", "app", namespace, "True")
        issued = credential(cluster, namespace)
        t0 = time.monotonic()

        # Break the issuer: without its CA Secret it cannot sign the renewal.
        cluster.kubectl("delete", "secret", secret_name, "-n", SYSTEM)
        broken = wait_ready(cluster, "clusteridentityissuer", issuer, None, "False", timeout=75)
        assert ready_condition(broken)["reason"] == "CASecretNotFound"
        not_ready = wait_ready(cluster, "machineidentity", "app", namespace, "False", timeout=30)
        assert issuer in ready_condition(not_ready)["message"]
        last = credential(cluster, namespace)
        renewal = dt.datetime.fromisoformat(last["renewalTime"].replace("Z", "+00:00"))
        assert last["rotationCount"] <= issued["rotationCount"] + 1

        labels = {"namespace": namespace, "identity": "app", "credential": "mtls"}
        seen: dict[str, float] = {}

        def firing() -> dict[str, Any] | None:
            for alert in prometheus.alerts(ALERT, **labels):
                seen.setdefault(alert["state"], time.monotonic() - t0)
                if alert["state"] == "firing":
                    return alert
            return None

        alert = wait_for(firing, timeout=300, interval=1.0, message=f"{ALERT} to fire")
        fired_after = time.monotonic() - t0
        assert "pending" in seen, "the alert went straight to firing: `for: 1m` was not honoured"
        # Due 1m after issuance, late by > max(60s, 10% of ~11m) for 1m: not before ~3m.
        assert fired_after >= 180 - 15, f"fired after only {fired_after:.0f}s"
        assert alert["labels"] == {
            "alertname": ALERT,
            "severity": "warning",
            "namespace": namespace,
            "identity": "app",
            "credential": "mtls",
            "type": "X509",
            "issuer": f"ClusterIdentityIssuer/{issuer}",
        }
        assert alert["annotations"]["runbook_url"].endswith(f"docs/runbooks/{ALERT}.md")
        overdue = float(alert["value"])
        assert overdue >= 60
        late = (dt.datetime.now(dt.UTC) - renewal).total_seconds()
        assert abs(overdue - late) < 15, (overdue, late)

        # The dashboard's queries run against this Prometheus, and the expiry timeline
        # has this credential.
        check_dashboard_queries(prometheus, namespace)

        # How often the failed renewal was attempted (and counted) while the issuer was broken.
        failures = sum(
            float(r["value"][1])
            for r in prometheus.query(
                f'nhi_credential_rotations_total{{namespace="{namespace}",result="failure"}}'
            )
        )

        # Fix the issuer: the same CA comes back, the renewal happens, the alert resolves.
        cluster.apply(secret)
        t_fixed = time.monotonic()
        wait_ready(cluster, "clusteridentityissuer", issuer, None, "True", timeout=75)
        wait_ready(cluster, "machineidentity", "app", namespace, "True", timeout=30)
        renewed = wait_for(
            lambda: (
                (c := credential(cluster, namespace))
                and c["rotationCount"] > last["rotationCount"]
                and c
            ),
            timeout=30,
            message="the credential to be renewed",
        )
        assert renewed["serialNumber"] != last["serialNumber"]
        wait_for(
            lambda: prometheus.query(
                f'nhi_credential_renewal_timestamp_seconds{{namespace="{namespace}",'
                f'credential="mtls"}} > time()'
            ),
            timeout=30,
            message="the renewal time to move into the future in Prometheus",
        )
        wait_for(
            lambda: not prometheus.alerts(ALERT, **labels),
            timeout=60,
            interval=1.0,
            message=f"{ALERT} to resolve",
        )
        resolved_after = time.monotonic() - t_fixed

        # `nhi report --prometheus` reads time-to-rotate back: the overdue renewal is in it.
        def time_to_rotate() -> dict[str, Any] | None:
            cli = [sys.executable, "-m", "nhi.cli.main", "report", "-A", "-o", "json",
                   "--prometheus", prometheus.url, "--window", "1h"]  # fmt: skip
            proc = subprocess.run(cli, env=cluster.env(), capture_output=True, text=True,
                                  timeout=60, check=False)  # fmt: skip
            assert proc.returncode == 0, proc.stderr
            timing = json.loads(proc.stdout)["kpis"]["timeToRotate"]
            return dict(timing) if timing["count"] >= 1 and timing["p95Seconds"] else None

        timing = wait_for(time_to_rotate, timeout=30, message="time-to-rotate in nhi report")
        assert timing["p95Seconds"] >= timing["p50Seconds"] > 0
        prometheus.timings.update(
            pending_after_issuance=seen["pending"],
            firing_after_issuance=fired_after,
            resolved_after_fix=resolved_after,
            failures_counted_while_broken=failures,
        )
        for k, v in prometheus.timings.items():
            record_property(k, round(v, 1))
        print(f"\n{ALERT}: " + ", ".join(f"{k}={v:.1f}" for k, v in prometheus.timings.items()))
    finally:
        cluster.kubectl(
            "delete", "machineidentity", "app", "-n", namespace, "--timeout=60s", check=False
        )
        cluster.kubectl("delete", "clusteridentityissuer", issuer, "--timeout=60s", check=False)
        cluster.kubectl(
            "delete", "secret", secret_name, "-n", SYSTEM, "--ignore-not-found", check=False
        )


GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}


def dashboard_exprs(namespace: str) -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        for p in [panel, *(panel.get("panels") or [])]:
            for target in p.get("targets") or []:
                expr = target["expr"].replace("$namespace", namespace)
                for var, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(var, value)
                out.append(expr)
    return out


def check_dashboard_queries(prometheus: Prometheus, namespace: str) -> None:
    exprs = dashboard_exprs(namespace)
    assert exprs
    for expr in exprs:
        prometheus.query(expr)  # evaluates without error
    (timeline,) = [
        e for e in exprs if e.startswith("min by") and "expiration_timestamp_seconds" in e
    ]
    (row,) = prometheus.query(timeline)
    assert row["metric"] == {
        "namespace": namespace,
        "identity": "app",
        "credential": "mtls",
        "type": "X509",
    }
    assert 0 < float(row["value"][1]) <= 11 * 60
    (not_ready,) = {
        e for e in exprs if e.startswith("count(max by (namespace, identity) (nhi_identity_ready")
    }
    assert float(prometheus.query(not_ready)[0]["value"][1]) >= 1


# ---------------------------------------------------------------------------- the chart


def test_chart_ships_the_dashboard_in_a_configmap_when_asked(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    env = dict(
        cluster.env(),
        HELM_CONFIG_HOME=str(tmp_path / "config"),
        HELM_CACHE_HOME=str(tmp_path / "cache"),
        HELM_DATA_HOME=str(tmp_path / "data"),
    )

    def template(*args: str) -> list[dict[str, Any]]:
        proc = subprocess.run(
            [cluster.tool("helm"), "template", "nhi-operator", str(CHART), "-n", SYSTEM, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        return [d for d in yaml.safe_load_all(proc.stdout) if d]

    assert not [d for d in template() if d["kind"] == "ConfigMap"]
    docs = template(
        "--set=grafana.dashboard.enabled=true",
        f"--set=grafana.dashboard.namespace={namespace}",
        "--set=grafana.dashboard.annotations.grafana_folder=NHI",
    )
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert cm["metadata"]["name"] == "nhi-operator-dashboards"
    assert cm["metadata"]["namespace"] == namespace
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "NHI"}
    assert json.loads(cm["data"]["nhi-operator.json"]) == json.loads(DASHBOARD.read_text())
    proc = cluster.kubectl(
        "apply", "--server-side", "--dry-run=server", "-f", "-", input=yaml.safe_dump(cm)
    )
    assert "serverside-applied" in proc.stdout

"""The operator's /metrics against the real control plane: every metric, its labels, its life.

An identity with a token and a StaticSecret is created, rotated and deleted while the running
operator's metrics page is scraped and parsed with prometheus_client's own parser: the
credential gauges (one series per credential, with the five credential labels, matching the
status), the rotation counter, the identity's Ready/info series and the reconcile histogram;
after the deletion, no series names the identity any more. No label value is ever a secret.
"""

from __future__ import annotations

import base64
import datetime as dt
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nhi import metrics, metrics_inventory, metrics_usage
from tests.conftest import Cluster, OperatorProcess, wait_for
from tests.integration.test_credentials import cred_status, identity, secret_data
from tests.integration.test_identity import _cluster, wait_condition

pytestmark = pytest.mark.integration

CRED_GAUGES = (
    "nhi_credential_expiration_timestamp_seconds",
    "nhi_credential_not_before_timestamp_seconds",
    "nhi_credential_renewal_timestamp_seconds",
)
STATUS_FIELD = {
    "nhi_credential_expiration_timestamp_seconds": "notAfter",
    "nhi_credential_not_before_timestamp_seconds": "notBefore",
    "nhi_credential_renewal_timestamp_seconds": "renewalTime",
}
CREDENTIALS = [
    {"name": "api", "type": "ServiceAccountToken", "ttl": "15m"},
    {"name": "key", "type": "StaticSecret", "ttl": "2h", "generator": {"length": 40}},
]


@dataclass(frozen=True)
class Sample:
    family: str
    name: str
    labels: dict[str, str]
    value: float


@dataclass
class Page:
    text: str
    samples: list[Sample]

    def find(self, family: str, **match: str) -> list[Sample]:
        return [
            s
            for s in self.samples
            if s.family == family
            and not s.name.endswith("_created")
            and all(s.labels.get(k) == v for k, v in match.items())
        ]

    def naming(self, namespace: str, identity: str) -> list[Sample]:
        return [
            s
            for s in self.samples
            if s.labels.get("namespace") == namespace and s.labels.get("identity") == identity
        ]


def scrape(op: OperatorProcess) -> Page:
    url = f"http://127.0.0.1:{op.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers.get("Content-Type", "").startswith("text/plain")
        text = resp.read().decode()
    samples = [
        Sample(f.name, s.name, dict(s.labels), s.value)
        for f in text_string_to_metric_families(text)
        for s in f.samples
    ]
    return Page(text, samples)


def ts(rfc3339: str) -> float:
    return dt.datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def secret_values(cluster: Cluster, namespace: str, names: Iterable[str]) -> list[str]:
    """Every value in the identity's credential Secrets, raw and base64-encoded."""
    out = []
    for name in names:
        for value in secret_data(cluster, namespace, name).values():
            out += [value, base64.b64encode(value.encode()).decode()]
    return [v for v in out if len(v) >= 16]


def check_credential_series(page: Page, cluster: Cluster, namespace: str) -> None:
    """One series per credential and gauge, with exactly the credential labels and the status."""
    for cred in CREDENTIALS:
        status = cred_status(cluster, namespace, "app", cred["name"])
        assert status, f"no status for {cred['name']}"
        want = {
            "namespace": namespace,
            "identity": "app",
            "credential": cred["name"],
            "type": cred["type"],
            "issuer": "",
        }
        for family in CRED_GAUGES:
            found = page.find(family, namespace=namespace, credential=cred["name"])
            assert len(found) == 1, f"{family} {cred['name']}: {found}"
            (sample,) = found
            assert sample.labels == want
            # The status holds whole seconds; the gauge the exact instant.
            assert abs(sample.value - ts(status[STATUS_FIELD[family]])) < 1.0, (family, status)


def rotations(page: Page, namespace: str, cred: str) -> dict[str, float]:
    found = page.find("nhi_credential_rotations", namespace=namespace, credential=cred)
    for s in found:
        assert s.name == "nhi_credential_rotations_total"
    return {s.labels["result"]: s.value for s in found}


def test_metrics_follow_an_identity_from_creation_through_rotations_to_deletion(
    operator: OperatorProcess, namespace: str
) -> None:
    cluster = _cluster(operator)
    cluster.apply(identity(namespace, CREDENTIALS))
    wait_condition(cluster, namespace, "app", "Ready", "True")

    page = scrape(operator)
    check_credential_series(page, cluster, namespace)
    for cred in CREDENTIALS:
        assert rotations(page, namespace, cred["name"]).get("success") == 1

    ready = {
        s.labels["condition"]: s.value
        for s in page.find("nhi_identity_ready_status", namespace=namespace, identity="app")
    }
    assert ready == {"Ready": 1, "Reconciling": 0, "Stalled": 0}
    (info,) = page.find("nhi_identity_info", namespace=namespace, identity="app")
    assert info.labels == {
        "namespace": namespace,
        "identity": "app",
        "owner": "team-a",
        "phase": "Active",
    }
    assert info.value == 1

    hist = page.find("nhi_reconcile_duration_seconds", kind="MachineIdentity")
    count = next(s.value for s in hist if s.name.endswith("_count"))
    buckets = [s for s in hist if s.name.endswith("_bucket")]
    assert count >= 1
    assert sorted(float(b.labels["le"]) for b in buckets)[-1] == float("inf")
    values = [b.value for b in sorted(buckets, key=lambda b: float(b.labels["le"]))]
    assert values == sorted(values) and values[-1] == count
    assert next(s.value for s in hist if s.name.endswith("_sum")) > 0

    # Two renewals: new values, new timestamps, the same series.
    for n, stamp in enumerate(("2099-01-01T00:00:00Z", "2099-01-02T00:00:00Z"), start=1):
        cluster.kubectl(
            "annotate",
            "machineidentity",
            "app",
            "-n",
            namespace,
            "--overwrite",
            f"nhi.dev/renew-requested-at={stamp}",
        )
        for cred in CREDENTIALS:
            wait_for(
                lambda c=cred["name"], n=n: (
                    cred_status(cluster, namespace, "app", c).get("rotationCount", 0) >= n
                ),
                timeout=30,
                message=f"rotation {n} of {cred['name']}",
            )
    wait_condition(cluster, namespace, "app", "Ready", "True")
    page = wait_for(
        lambda: (
            (p := scrape(operator))
            and all(rotations(p, namespace, c["name"]).get("success") == 3 for c in CREDENTIALS)
            and p
        ),
        timeout=10,
        message="three successful rotations per credential in the metrics",
    )
    check_credential_series(page, cluster, namespace)
    for cred in CREDENTIALS:
        assert rotations(page, namespace, cred["name"]).get("failure", 0) == 0
    series = [s for s in page.naming(namespace, "app") if not s.name.endswith("_created")]
    # 3 gauges x 2 credentials, 1 or 2 rotation results x 2 credentials, 3 conditions, 1 info
    # series: nothing grew with the rotations.
    assert 6 + 2 + 4 <= len(series) <= 6 + 4 + 4, series
    assert len({(s.name, tuple(sorted(s.labels.items()))) for s in series}) == len(series)

    # Labels carry names only: no value of the credential Secrets appears anywhere on the page.
    values = secret_values(cluster, namespace, ("app.api", "app.key"))
    assert len(values) >= 6  # token, current, previous (raw and base64)
    for value in values:
        assert value not in page.text
    allowed = {namespace, "app", "api", "key", "ServiceAccountToken", "StaticSecret", ""}
    allowed |= {"team-a", "Active", "Ready", "Reconciling", "Stalled", "success", "failure"}
    for s in series:
        assert set(s.labels.values()) <= allowed, s

    cluster.kubectl("delete", "machineidentity", "app", "-n", namespace, "--timeout=60s")
    assert cluster.get("machineidentity", "app", namespace) is None
    left = wait_for(
        lambda: not scrape(operator).naming(namespace, "app") or None,
        timeout=10,
        message="every series of the deleted identity to disappear",
    )
    assert left is True
    # The deletion itself is counted, by reason.
    (deleted,) = scrape(operator).find("nhi_revocations", reason="IdentityDeleted")
    assert deleted.value >= 1


def test_both_rotation_results_exist_from_the_first_issuance(
    operator: OperatorProcess, namespace: str
) -> None:
    cluster = _cluster(operator)
    cluster.apply(identity(namespace, CREDENTIALS[:1]))
    wait_condition(cluster, namespace, "app", "Ready", "True")
    page = scrape(operator)
    assert rotations(page, namespace, "api") == {"success": 1, "failure": 0}


def test_a_credential_removed_from_the_spec_loses_its_series(
    operator: OperatorProcess, namespace: str
) -> None:
    cluster = _cluster(operator)
    cluster.apply(identity(namespace, CREDENTIALS))
    wait_condition(cluster, namespace, "app", "Ready", "True")
    assert scrape(operator).find(CRED_GAUGES[0], namespace=namespace, credential="key")
    cluster.apply(identity(namespace, CREDENTIALS[:1]))
    wait_for(
        lambda: (
            [
                c["name"]
                for c in (cluster.get("machineidentity", "app", namespace) or {})
                .get("status", {})
                .get("credentials", [])
            ]
            == ["api"]
        ),
        timeout=30,
        message="the status to list only the remaining credential",
    )
    page = scrape(operator)
    # A stale renewal timestamp would raise NHICredentialRenewalOverdue for a credential that
    # no longer exists, and NHICredentialExpired after its last expiry.
    stale = [s for s in page.naming(namespace, "app") if s.labels.get("credential") == "key"]
    assert stale == []


def test_metric_names_on_the_page_are_the_ones_in_the_code(operator: OperatorProcess) -> None:
    page = scrape(operator)
    exposed = {s.family for s in page.samples if s.family.startswith("nhi_")}
    declared = {
        m._name
        for module in (metrics, metrics_inventory, metrics_usage)
        for m in vars(module).values()
        if hasattr(m, "_name") and str(getattr(m, "_name", "")).startswith("nhi_")
    }
    # Families without any series yet (no label set observed) are not on the page.
    assert exposed <= declared
    # No `_created` companions: Prometheus would store each as one more series.
    assert "_created" not in page.text
    assert {"nhi_revocations", "nhi_workload_rollouts", "nhi_reconcile_duration_seconds"} <= exposed

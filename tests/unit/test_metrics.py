"""nhi.metrics and the Grafana dashboard built on it.

The metric contract (names, types, labels) is what the shipped alert rules, the dashboard and
docs/observability.md rely on; the helpers keep one series per credential and drop every series
of a deleted identity. The per-identity series come from a collector of their own
(IdentitySeries): its page is checked line by line, and while records change under it. The
dashboard's queries are checked against that contract: every metric exists with the labels a
query selects on, and every query parses (promtool, as recording rules).
tests/integration/test_metrics.py checks the same metrics on a running operator.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from nhi import metrics, metrics_inventory, metrics_usage
from tests.conftest import ROOT

pytestmark = pytest.mark.unit

CHART = ROOT / "charts" / "nhi-operator"
DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
DOC = ROOT / "docs" / "observability.md"

CRED = metrics.CREDENTIAL_LABELS
# The contract: family name -> (type, label names). Counters are exposed with a _total suffix.
EXPECTED: dict[str, tuple[str, tuple[str, ...]]] = {
    "nhi_credential_expiration_timestamp_seconds": ("gauge", CRED),
    "nhi_credential_not_before_timestamp_seconds": ("gauge", CRED),
    "nhi_credential_renewal_timestamp_seconds": ("gauge", CRED),
    "nhi_credential_rotations": ("counter", (*CRED, "result")),
    "nhi_revocations": ("counter", ("reason",)),
    "nhi_workload_rollouts": ("counter", ()),
    "nhi_identity_ready_status": ("gauge", ("namespace", "identity", "condition")),
    "nhi_identity_info": ("gauge", ("namespace", "identity", "owner", "phase")),
    "nhi_reconcile_duration_seconds": ("histogram", ("kind",)),
    "nhi_reconcile_errors": ("counter", ("kind",)),
    "nhi_issuer_ready_status": ("gauge", ("kind", "namespace", "issuer")),
    "nhi_issuer_ca_expiration_timestamp_seconds": ("gauge", ("kind", "namespace", "issuer")),
    "nhi_inventory_identities": ("gauge", ("namespace", "state")),
    "nhi_inventory_objects": ("gauge", ("kind",)),
    "nhi_inventory_findings": ("gauge", ("namespace", "risk", "severity")),
    "nhi_inventory_credentials": ("gauge", ("age",)),
    "nhi_inventory_coverage_ratio": ("gauge", ()),
    "nhi_inventory_owner_coverage_ratio": ("gauge", ()),
    "nhi_inventory_permissions_used_ratio": ("gauge", ()),
    "nhi_inventory_last_run_timestamp_seconds": ("gauge", ()),
    "nhi_inventory_findings_detected": ("counter", ("risk", "severity")),
    "nhi_credential_time_to_rotate_seconds": ("histogram", ()),
    "nhi_identity_time_to_revoke_seconds": ("histogram", ()),
    "nhi_access_grant_active_seconds": ("counter", ("namespace",)),
    "nhi_access_grants": ("gauge", ("namespace", "phase")),
    "nhi_access_grants_overdue": ("gauge", ("namespace",)),
    "nhi_usage_batches": ("counter", ("result",)),
    "nhi_usage_events": ("counter", ()),
    "nhi_usage_replayed_events": ("counter", ()),
    "nhi_usage_denied_requests": ("counter", ("namespace",)),
    "nhi_usage_flushes": ("counter", ("result",)),
    "nhi_usage_new_behaviours": ("counter", ("namespace",)),
    "nhi_usage_person_minted_tokens": ("counter", ("namespace",)),
    "nhi_usage_log_lines_skipped": ("counter", ()),
    "nhi_usage_tokens_outside_pod": ("counter", ("namespace",)),
    "nhi_usage_tokens_foreign_pod": ("counter", ("namespace",)),
    "nhi_identity_unused_rules": ("gauge", ("namespace", "identity")),
}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
# Series Prometheus itself provides, which dashboards may use.
PROMETHEUS_SERIES = {"ALERTS": ("alertname", "alertstate", "severity")}


def _collectors() -> dict[str, Any]:
    return {
        getattr(m, "_name", ""): m
        for module in (metrics, metrics_inventory, metrics_usage)
        for m in vars(module).values()
        if hasattr(m, "_name") and hasattr(m, "_labelnames") and hasattr(m, "_type")
    }


def exposed_names() -> dict[str, tuple[str, ...]]:
    """Every series name the operator exposes, with its label names (histograms add `le`)."""
    out: dict[str, tuple[str, ...]] = {}
    for name, (type_, labels) in EXPECTED.items():
        for suffix in SUFFIXES[type_]:
            out[name + suffix] = (*labels, "le") if suffix == "_bucket" else labels
    return out


def scrape() -> dict[str, list[tuple[str, dict[str, str], float]]]:
    """The registry as Prometheus reads it: family -> [(sample name, labels, value)]."""
    text = generate_latest(metrics.REGISTRY).decode()
    return {
        f.name: [(s.name, dict(s.labels), s.value) for s in f.samples]
        for f in text_string_to_metric_families(text)
    }


def series(family: str, **match: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        s
        for s in scrape().get(family, [])
        if all(s[1].get(k) == v for k, v in match.items()) and not s[0].endswith("_created")
    ]


@pytest.fixture
def ns() -> str:
    """A namespace label no other test uses: the registry is process-wide."""
    return f"u-{uuid.uuid4().hex[:8]}"


def labels(ns: str, identity: str, cred: str, type_: str = "X509", issuer: str = "") -> Any:
    return (ns, identity, cred, type_, issuer)


def set_gauges(lbl: Any, not_before: float, not_after: float, renewal: float) -> None:
    """What the credential reconciler does for each credential it observes."""
    metrics.observe_credential(lbl, not_before=not_before, not_after=not_after, renewal=renewal)


# ---------------------------------------------------------------------------- the contract


def test_every_metric_has_the_documented_name_type_and_labels() -> None:
    found = {
        name: (c._type, tuple(c._labelnames))
        for name, c in _collectors().items()
        if name.startswith("nhi_")
    }
    assert found == EXPECTED


def test_credential_metrics_share_exactly_the_credential_labels() -> None:
    assert CRED == ("namespace", "identity", "credential", "type", "issuer")
    for family in (
        metrics.CREDENTIAL_EXPIRATION,
        metrics.CREDENTIAL_NOT_BEFORE,
        metrics.CREDENTIAL_RENEWAL,
    ):
        assert family._labelnames == CRED
    assert metrics.CREDENTIAL_ROTATIONS._labelnames == (*CRED, "result")


def test_every_metric_is_in_the_registry_the_server_exposes() -> None:
    metrics.rollouts.inc(0)  # unlabelled: always exposed
    names = {f.name for f in metrics.REGISTRY.collect()}
    assert set(EXPECTED) <= names


def test_docs_list_every_metric_with_its_labels() -> None:
    text = DOC.read_text()
    for name, (type_, labels) in EXPECTED.items():
        exposed = name + ("_total" if type_ == "counter" else "")
        assert f"`{exposed}`" in text, f"{exposed} is not in docs/observability.md"
        (row,) = [line for line in text.splitlines() if line.startswith(f"| `{exposed}`")]
        for label in labels:
            assert f"`{label}`" in row, f"label {label} of {exposed} not documented"


def test_every_revocation_reason_is_exported_from_the_start() -> None:
    reasons = {s[1]["reason"] for s in series("nhi_revocations")}
    assert reasons >= {"Manual", "Expired", "WorkloadDeleted", "IdentityDeleted"}
    assert set(metrics.REVOCATION_REASONS) <= reasons


# ---------------------------------------------------------------------------- identities


def test_identity_info_follows_phase_and_owner_changes(ns: str) -> None:
    metrics.observe_identity(ns, "app", "team-a", "Pending", {"Reconciling": True})
    metrics.observe_identity(ns, "app", "team-a", "Active", {"Ready": True})
    (info,) = series("nhi_identity_info", namespace=ns)
    assert info[1] == {"namespace": ns, "identity": "app", "owner": "team-a", "phase": "Active"}
    assert info[2] == 1
    metrics.observe_identity(ns, "app", "team-b", "Active", {"Ready": True})
    assert [s[1]["owner"] for s in series("nhi_identity_info", namespace=ns)] == ["team-b"]
    ready = {s[1]["condition"]: s[2] for s in series("nhi_identity_ready_status", namespace=ns)}
    assert ready == {"Ready": 1, "Reconciling": 0, "Stalled": 0}


# ---------------------------------------------------------------------------- credentials


def test_sync_initialises_both_rotation_results_at_zero(ns: str) -> None:
    lbl = labels(ns, "app", "mtls", "X509", "ClusterIdentityIssuer/mesh")
    metrics.sync_credentials(ns, "app", [lbl])
    got = {s[1]["result"]: s[2] for s in series("nhi_credential_rotations", namespace=ns)}
    assert got == {"success": 0, "failure": 0}
    (sample,) = series("nhi_credential_rotations", namespace=ns, result="success")
    assert sample[0] == "nhi_credential_rotations_total"
    assert {k: v for k, v in sample[1].items() if k != "result"} == dict(
        zip(CRED, lbl, strict=True)
    )


def test_sync_again_keeps_counts(ns: str) -> None:
    lbl = labels(ns, "app", "api", "ServiceAccountToken")
    metrics.sync_credentials(ns, "app", [lbl])
    metrics.rotated(lbl, "success")
    metrics.sync_credentials(ns, "app", [lbl])
    got = {s[1]["result"]: s[2] for s in series("nhi_credential_rotations", namespace=ns)}
    assert got == {"success": 1, "failure": 0}


def test_rotations_keep_one_series_per_credential(ns: str) -> None:
    lbl = labels(ns, "app", "api", "ServiceAccountToken")
    for i in range(5):  # five rotations: new values, same series
        metrics.sync_credentials(ns, "app", [lbl])
        set_gauges(lbl, 1000.0 + i, 2000.0 + i, 1500.0 + i)
        metrics.rotated(lbl, "success")
    last = {
        "nhi_credential_expiration_timestamp_seconds": 2004.0,
        "nhi_credential_not_before_timestamp_seconds": 1004.0,
        "nhi_credential_renewal_timestamp_seconds": 1504.0,
    }
    for family, value in last.items():
        (only,) = series(family, namespace=ns)
        assert only[2] == value, family
    got = {s[1]["result"]: s[2] for s in series("nhi_credential_rotations", namespace=ns)}
    assert got == {"success": 5, "failure": 0}


def test_a_credential_removed_from_the_spec_loses_its_series(ns: str) -> None:
    api = labels(ns, "app", "api", "ServiceAccountToken")
    key = labels(ns, "app", "key", "StaticSecret")
    metrics.sync_credentials(ns, "app", [api, key])
    set_gauges(api, 1, 3, 2)
    set_gauges(key, 1, 3, 2)
    metrics.sync_credentials(ns, "app", [api])
    for family in (
        "nhi_credential_expiration_timestamp_seconds",
        "nhi_credential_renewal_timestamp_seconds",
        "nhi_credential_not_before_timestamp_seconds",
        "nhi_credential_rotations",
    ):
        assert {s[1]["credential"] for s in series(family, namespace=ns)} == {"api"}, family


def test_an_issuer_change_replaces_the_series_instead_of_adding_one(ns: str) -> None:
    old = labels(ns, "app", "mtls", "X509", "ClusterIdentityIssuer/old")
    new = labels(ns, "app", "mtls", "X509", "IdentityIssuer/new")
    metrics.sync_credentials(ns, "app", [old])
    set_gauges(old, 1, 3, 2)
    metrics.sync_credentials(ns, "app", [new])
    set_gauges(new, 4, 6, 5)
    (exp,) = series("nhi_credential_expiration_timestamp_seconds", namespace=ns)
    assert exp[1]["issuer"] == "IdentityIssuer/new" and exp[2] == 6
    assert {s[1]["issuer"] for s in series("nhi_credential_rotations", namespace=ns)} == {
        "IdentityIssuer/new"
    }


def test_sync_rejects_a_label_tuple_of_the_wrong_size(ns: str) -> None:
    with pytest.raises(ValueError, match="credential labels"):
        metrics.sync_credentials(ns, "app", [(ns, "app", "api")])  # type: ignore[list-item]


# ---------------------------------------------------------------------------- deletion


def populate(ns: str, identity: str) -> None:
    lbl = labels(ns, identity, "api", "ServiceAccountToken")
    metrics.sync_credentials(ns, identity, [lbl])
    set_gauges(lbl, 1, 3, 2)
    metrics.rotated(lbl, "success")
    metrics.rotated(lbl, "failure")
    metrics.observe_identity(ns, identity, "team-a", "Active", {"Ready": True})


IDENTITY_FAMILIES = (
    "nhi_identity_info",
    "nhi_identity_ready_status",
    "nhi_credential_expiration_timestamp_seconds",
    "nhi_credential_not_before_timestamp_seconds",
    "nhi_credential_renewal_timestamp_seconds",
    "nhi_credential_rotations",
)


def test_forget_identity_drops_every_series_of_that_identity_only(ns: str) -> None:
    other_ns = f"{ns}-other"
    populate(ns, "app")
    populate(ns, "app2")
    populate(other_ns, "app")  # same name, other namespace
    metrics.forget_identity(ns, "app")
    for family in IDENTITY_FAMILIES:
        assert series(family, namespace=ns, identity="app") == [], family
        assert series(family, namespace=ns, identity="app2"), family
        assert series(family, namespace=other_ns, identity="app"), family
    # Observed again (re-created with the same name): it starts from scratch.
    metrics.sync_credentials(ns, "app", [labels(ns, "app", "api", "ServiceAccountToken")])
    got = {
        s[1]["result"]: s[2]
        for s in series("nhi_credential_rotations", namespace=ns, identity="app")
    }
    assert got == {"success": 0, "failure": 0}


def test_forgetting_an_unknown_identity_is_harmless(ns: str) -> None:
    metrics.forget_identity(ns, "never-seen")


# ---------------------------------------------------------------------------- identity collector


def own_series() -> tuple[metrics.IdentitySeries, CollectorRegistry]:
    """A collector in a registry of its own, so that its page holds only what a test did."""
    collector = metrics.IdentitySeries()
    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)
    return collector, registry


# The page of what test_the_collector_exposes_exactly_what_the_gauges_and_counters_did does:
# the same lines (names, help, types, labels in this order, values) as prometheus_client's
# own Gauge and Counter objects gave for the same calls.
PAGE = """\
# HELP nhi_credential_expiration_timestamp_seconds When the credential's current value stops being valid (Unix time).
# TYPE nhi_credential_expiration_timestamp_seconds gauge
nhi_credential_expiration_timestamp_seconds{credential="api",identity="app",issuer="",namespace="ns",type="ServiceAccountToken"} 1.00000000025e+09
# HELP nhi_credential_not_before_timestamp_seconds When the credential's current value became valid (Unix time).
# TYPE nhi_credential_not_before_timestamp_seconds gauge
nhi_credential_not_before_timestamp_seconds{credential="api",identity="app",issuer="",namespace="ns",type="ServiceAccountToken"} 1.5
# HELP nhi_credential_renewal_timestamp_seconds When the operator plans to renew the credential (Unix time).
# TYPE nhi_credential_renewal_timestamp_seconds gauge
nhi_credential_renewal_timestamp_seconds{credential="api",identity="app",issuer="",namespace="ns",type="ServiceAccountToken"} 1.2345678901e+10
# HELP nhi_credential_rotations_total Credential issuances and rotations, by result (success or failure).
# TYPE nhi_credential_rotations_total counter
nhi_credential_rotations_total{credential="api",identity="app",issuer="",namespace="ns",result="success",type="ServiceAccountToken"} 2.0
nhi_credential_rotations_total{credential="api",identity="app",issuer="",namespace="ns",result="failure",type="ServiceAccountToken"} 0.0
nhi_credential_rotations_total{credential="mtls",identity="app",issuer="ClusterIdentityIssuer/mesh",namespace="ns",result="success",type="X509"} 0.0
nhi_credential_rotations_total{credential="mtls",identity="app",issuer="ClusterIdentityIssuer/mesh",namespace="ns",result="failure",type="X509"} 1.0
# HELP nhi_identity_ready_status 1 when the identity's condition is True, else 0.
# TYPE nhi_identity_ready_status gauge
nhi_identity_ready_status{condition="Ready",identity="app",namespace="ns"} 0.0
nhi_identity_ready_status{condition="Reconciling",identity="app",namespace="ns"} 1.0
nhi_identity_ready_status{condition="Stalled",identity="app",namespace="ns"} 1.0
# HELP nhi_identity_info Always 1; labels describe the identity.
# TYPE nhi_identity_info gauge
nhi_identity_info{identity="app",namespace="ns",owner="team-b",phase="Pending"} 1.0
"""  # noqa: E501 - exposition lines


def test_the_collector_exposes_exactly_what_the_gauges_and_counters_did() -> None:
    collector, registry = own_series()
    api = ("ns", "app", "api", "ServiceAccountToken", "")
    mtls = ("ns", "app", "mtls", "X509", "ClusterIdentityIssuer/mesh")
    collector.sync_credentials("ns", "app", [api, mtls])
    collector.observe_credential(api, not_before=1.5, not_after=1e9 + 0.25, renewal=12345678901)
    collector.rotated(api, "success")
    collector.rotated(api, "success")
    collector.rotated(mtls, "failure")
    collector.observe_identity("ns", "app", "team-a", "Active", {"Ready": True})
    collector.observe_identity(
        "ns", "app", "team-b", "Pending", {"Reconciling": True, "Stalled": True}
    )
    assert generate_latest(registry).decode() == PAGE


def test_the_collector_page_is_the_page_of_prometheus_client_metrics() -> None:
    """Values, label order and formatting: as Gauge and Counter objects would expose them."""
    collector, registry = own_series()
    reference = CollectorRegistry()
    made = {
        family._name: (Counter if family._type == "counter" else Gauge)(
            family._name, family._documentation, family._labelnames, registry=reference
        )
        for family in metrics.IDENTITY_FAMILIES
    }
    lbl = ("ns", "app", "api", "X509", "IdentityIssuer/ca")
    collector.sync_credentials("ns", "app", [lbl])
    for result in metrics.RESULTS:
        made["nhi_credential_rotations"].labels(*lbl, result)
    for i, value in enumerate((0.1, 1e-7, 1712345678.123456, 2**53)):
        collector.observe_credential(lbl, not_before=value, not_after=value, renewal=value)
        for name in ("expiration", "not_before", "renewal"):
            made[f"nhi_credential_{name}_timestamp_seconds"].labels(*lbl).set(value)
        collector.rotated(lbl, "failure" if i % 2 else "success")
        made["nhi_credential_rotations"].labels(*lbl, "failure" if i % 2 else "success").inc()
    collector.observe_identity("ns", "app", "", "Active", {"Ready": False, "Stalled": True})
    made["nhi_identity_info"].labels("ns", "app", "", "Active").set(1)
    for condition in metrics.CONDITIONS:
        made["nhi_identity_ready_status"].labels("ns", "app", condition).set(
            1 if condition == "Stalled" else 0
        )
    assert generate_latest(registry).decode() == generate_latest(reference).decode()


def test_an_empty_collector_still_describes_every_family() -> None:
    _, registry = own_series()
    families = list(text_string_to_metric_families(generate_latest(registry).decode()))
    assert [(f.name, f.type, f.samples) for f in families] == [
        (family._name, family._type, []) for family in metrics.IDENTITY_FAMILIES
    ]


def test_a_second_collector_of_the_same_families_is_refused() -> None:
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        metrics.REGISTRY.register(metrics.IdentitySeries())


def test_timestamps_appear_once_the_credential_is_observed(ns: str) -> None:
    lbl = labels(ns, "app", "api", "ServiceAccountToken")
    metrics.sync_credentials(ns, "app", [lbl])
    timestamps = (
        "nhi_credential_expiration_timestamp_seconds",
        "nhi_credential_not_before_timestamp_seconds",
        "nhi_credential_renewal_timestamp_seconds",
    )
    for family in timestamps:
        assert series(family, namespace=ns) == [], family
    set_gauges(lbl, 1, 3, 2)
    got = {family: [s[2] for s in series(family, namespace=ns)] for family in timestamps}
    assert got == dict(zip(timestamps, ([3.0], [1.0], [2.0]), strict=True))


def test_a_rotation_before_the_declaration_is_counted_then_kept(ns: str) -> None:
    lbl = labels(ns, "app", "api", "ServiceAccountToken")
    metrics.rotated(lbl, "failure")
    got = {s[1]["result"]: s[2] for s in series("nhi_credential_rotations", namespace=ns)}
    assert got == {"success": 0, "failure": 1}  # both results, as if declared first
    metrics.sync_credentials(ns, "app", [lbl])
    got = {s[1]["result"]: s[2] for s in series("nhi_credential_rotations", namespace=ns)}
    assert got == {"success": 0, "failure": 1}


def test_a_credential_rotated_but_never_declared_goes_at_the_next_sync(ns: str) -> None:
    api = labels(ns, "app", "api", "ServiceAccountToken")
    gone = labels(ns, "app", "gone", "StaticSecret")
    metrics.sync_credentials(ns, "app", [api])
    metrics.rotated(gone, "success")
    set_gauges(gone, 1, 3, 2)
    assert {s[1]["credential"] for s in series("nhi_credential_rotations", namespace=ns)} == {
        "api",
        "gone",
    }
    metrics.sync_credentials(ns, "app", [api])
    for family in IDENTITY_FAMILIES:
        assert series(family, namespace=ns, credential="gone") == [], family


def test_rotated_rejects_an_unknown_result(ns: str) -> None:
    with pytest.raises(ValueError, match="rotation result"):
        metrics.rotated(labels(ns, "app", "api"), "maybe")  # type: ignore[arg-type]
    assert series("nhi_credential_rotations", namespace=ns) == []


def test_sync_rejects_labels_of_another_identity(ns: str) -> None:
    with pytest.raises(ValueError, match="do not name identity"):
        metrics.sync_credentials(ns, "app", [labels(ns, "other", "api")])
    assert series("nhi_credential_rotations", namespace=ns) == []


def test_a_deleted_identity_holds_no_record() -> None:
    collector, registry = own_series()
    lbl = ("ns", "app", "api", "ServiceAccountToken", "")
    collector.sync_credentials("ns", "app", [lbl])
    collector.rotated(lbl, "success")
    collector.observe_identity("ns", "app", "team-a", "Active", {"Ready": True})
    collector.forget_identity("ns", "app")
    assert collector._records == {}
    families = text_string_to_metric_families(generate_latest(registry).decode())
    assert [s for f in families for s in f.samples] == []


def test_updates_replace_what_a_scrape_may_be_reading() -> None:
    """A scrape reads records without the lock: a list or tuple it holds never changes."""
    collector, _ = own_series()
    api = ("ns", "app", "api", "X509", "")
    collector.sync_credentials("ns", "app", [api])
    collector.observe_credential(api, not_before=1, not_after=3, renewal=2)
    collector.observe_identity("ns", "app", "team", "Active", {"Ready": True})
    record = collector._records[("ns", "app")]
    credentials, status = record.credentials, record.status
    times = credentials[0].times
    kept = list(credentials)
    collector.rotated(("ns", "app", "extra", "X509", ""), "success")  # not declared yet
    collector.sync_credentials("ns", "app", [api, ("ns", "app", "key", "X509", "")])
    collector.observe_credential(api, not_before=4, not_after=6, renewal=5)
    collector.sync_credentials("ns", "app", [])
    collector.observe_identity("ns", "app", "team", "Pending", {"Stalled": True})
    assert credentials == kept and [c.name for c in credentials] == ["api"]
    assert times == (1.0, 3.0, 2.0) and status == ("team", "Active", 1)
    assert record.status == ("team", "Pending", 4) and record.credentials == []


@pytest.fixture
def fast_thread_switches() -> Iterator[None]:
    """Switch threads as often as possible, so a scrape overlaps many updates."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


@pytest.mark.usefixtures("fast_thread_switches")
def test_scrapes_while_the_records_change_see_whole_records() -> None:
    """Scrapes run in the metrics server's thread while the event loop updates the records."""
    collector, registry = own_series()
    for i in range(300):  # enough records that one scrape spans many thread switches
        name = f"base-{i}"
        collector.sync_credentials("ns", name, [("ns", name, "api", "X509", "")])
        collector.observe_identity("ns", name, "team", "Active", {"Ready": True})
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        i = 0
        try:
            while not stop.is_set():
                name = f"churn-{i % 50}"
                lbl = ("ns", name, "api", "X509", f"Issuer/{i % 3}")
                collector.sync_credentials("ns", name, [lbl, ("ns", name, "key", "X509", "")])
                collector.observe_credential(lbl, not_before=i, not_after=i + 2, renewal=i + 1)
                collector.rotated(lbl, "success")
                collector.rotated(("ns", name, "extra", "X509", ""), "failure")
                collector.observe_identity("ns", name, f"team-{i % 2}", "Active", {"Ready": True})
                if i % 7 == 0:
                    collector.forget_identity("ns", f"churn-{(i + 25) % 50}")
                i += 1
        except BaseException as err:  # reported by the main thread
            errors.append(err)

    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    try:
        for _ in range(40):
            families = {f.name: f for f in collector.collect()}
            info = [s.labels["identity"] for s in families["nhi_identity_info"].samples]
            ready = [s.labels["identity"] for s in families["nhi_identity_ready_status"].samples]
            assert len(info) == len(set(info)) >= 300  # one series per identity
            assert sorted(ready) == sorted(info * 3)  # each with its three conditions
            results: dict[tuple[str, ...], list[str]] = {}
            for s in families["nhi_credential_rotations"].samples:
                key = tuple(s.labels[k] for k in CRED)
                results.setdefault(key, []).append(s.labels["result"])
            assert all(r == ["success", "failure"] for r in results.values())
            # Every record is created by sync_credentials, which always declares "api".
            assert set(info) <= {key[1] for key in results if key[2] == "api"}
            times = [
                (s.labels["identity"], s.labels["credential"], s.value)
                for f in ("nhi_credential_not_before_timestamp_seconds",)
                for s in families[f].samples
            ]
            assert len(times) == len(set(times))
            generate_latest(registry)  # the server's path: families to text
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert errors == []


# ---------------------------------------------------------------------------- exposition


def test_exposition_parses_and_carries_names_only(ns: str) -> None:
    populate(ns, "app")
    text = generate_latest(metrics.REGISTRY).decode()
    assert "_created" not in text  # one series per counter label set, not two
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, (type_, label_names) in EXPECTED.items():
        family = families[name]
        assert family.type == type_, name
        for sample in family.samples:
            extra = {"le"} if sample.name.endswith("_bucket") else set()
            assert set(sample.labels) == set(label_names) | extra, sample


# ---------------------------------------------------------------------------- dashboards


def dashboard_params() -> list[Any]:
    return [pytest.param(p, id=p.name) for p in DASHBOARDS]


def load(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    assert isinstance(data, dict)
    return data


def graph_panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in dash["panels"]:
        if p["type"] == "row":
            out.extend(p.get("panels") or [])
        else:
            out.append(p)
    return out


def exprs(dash: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in graph_panels(dash) for t in p["targets"]]


def test_there_is_a_dashboard() -> None:
    assert [p.name for p in DASHBOARDS] == ["nhi-operator.json"]


@pytest.mark.parametrize("path", dashboard_params())
def test_dashboard_has_the_fields_grafana_needs(path: Path) -> None:
    dash = load(path)
    assert path.read_text().endswith("}\n")
    assert dash["title"] and re.fullmatch(r"[a-z0-9-]{1,40}", dash["uid"])
    assert 36 <= dash["schemaVersion"] <= 41
    assert dash.get("id") is None  # provisioned dashboards get their id from Grafana
    assert {"from", "to"} <= set(dash["time"])
    ids = [p["id"] for p in dash["panels"]] + [
        p["id"] for r in dash["panels"] for p in r.get("panels") or []
    ]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in graph_panels(dash):
        where = f"panel {panel.get('title')!r}"
        assert panel["type"] in {"stat", "timeseries", "bargauge", "table", "gauge"}, where
        assert panel["title"], where
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), where
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, where
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
        assert panel["targets"], where
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), where
        for target in panel["targets"]:
            assert target["expr"].strip(), where
            assert target["datasource"] == panel["datasource"], where


@pytest.mark.parametrize("path", dashboard_params())
def test_dashboard_templating_has_datasource_and_namespace(path: Path) -> None:
    variables = {v["name"]: v for v in load(path)["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    ns = variables["namespace"]
    assert ns["type"] == "query"
    assert ns["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert "nhi_" in ns["definition"] and "namespace" in ns["definition"]
    assert ns["includeAll"] is True and ns["multi"] is True and ns["allValue"] == ".*"


@pytest.mark.parametrize("path", dashboard_params())
def test_dashboard_shows_what_operators_need(path: Path) -> None:
    all_exprs = exprs(load(path))

    def has(*parts: str) -> bool:
        return any(all(p in e for p in parts) for e in all_exprs)

    assert has("nhi_credential_expiration_timestamp_seconds", "- time()"), "expiry timeline"
    assert has("nhi_credential_rotations_total", "by (result)"), "rotations by result"
    assert has("nhi_revocations_total", "by (reason)"), "revocations by reason"
    assert has("nhi_identity_ready_status", 'condition="Ready"', "== 0"), "not-ready identities"
    assert has("nhi_issuer_ca_expiration_timestamp_seconds", "- time()"), "issuer CA expiry"
    assert has("nhi_inventory_findings", "by (risk)"), "governance: findings by OWASP risk"
    assert has("nhi_inventory_coverage_ratio"), "governance: coverage"
    assert has("nhi_inventory_owner_coverage_ratio"), "governance: owner coverage"
    assert has("nhi_inventory_permissions_used_ratio"), "governance: declared permissions used"


SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*\"")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


@pytest.mark.parametrize("path", dashboard_params())
def test_dashboard_uses_only_metrics_and_labels_that_exist(path: Path) -> None:
    exposed = {**exposed_names(), **PROMETHEUS_SERIES}
    known_labels = {label for names in exposed.values() for label in names}
    dash = load(path)
    queries = [*exprs(dash)]
    queries += [v["definition"] for v in dash["templating"]["list"] if v.get("definition")]
    for expr in queries:
        for name in re.findall(r"\bnhi_[a-z0-9_]+", expr):
            assert name in exposed, f"{name} (in {expr!r}) is not exposed by nhi.metrics"
        for name, body in SELECTOR.findall(expr):
            assert name in exposed, f"{name} (in {expr!r}) is not a known series"
            for label, _ in MATCHER.findall(body):
                assert label in exposed[name], f"{name} has no label {label} (in {expr!r})"
        for group in GROUPING.findall(expr):
            for label in filter(None, (x.strip() for x in group.split(","))):
                assert label in known_labels, f"unknown label {label} in {expr!r}"
        for name, _args in re.findall(r"label_values\((\w+),\s*(\w+)\)", expr):
            assert _args in exposed[name], expr


GRAFANA_VARIABLES = {
    "$__rate_interval": "2m",
    "$__interval": "1m",
    "$__range": "1h",
    "$namespace": ".*",
}


@pytest.mark.parametrize("path", dashboard_params())
def test_every_dashboard_query_parses(path: Path, tmp_path: Path) -> None:
    """promtool parses PromQL in rule files: each query becomes a recording rule."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not on PATH (Debian package 'prometheus'; make system-deps)")
    rules = []
    for i, expr in enumerate(exprs(load(path))):
        for var, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    rule_file = tmp_path / "dashboard.rules.yaml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = subprocess.run(
        [promtool, "check", "rules", str(rule_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---------------------------------------------------------------------------- chart toggle


def test_chart_dashboard_configmap_is_off_by_default_and_described_by_the_schema() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["grafana"]["dashboard"]["enabled"] is False
    schema = json.loads((CHART / "values.schema.json").read_text())
    node = schema["properties"]["grafana"]
    assert node["additionalProperties"] is False
    dash = node["properties"]["dashboard"]
    assert dash["additionalProperties"] is False
    assert set(values["grafana"]["dashboard"]) <= set(dash["properties"])
    assert dash["properties"]["enabled"]["type"] == "boolean"
    template = (CHART / "templates" / "grafana-dashboard.yaml").read_text()
    assert template.startswith("{{- if .Values.grafana.dashboard.enabled }}")
    assert '.Files.Glob "dashboards/*.json"' in template

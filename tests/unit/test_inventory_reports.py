"""The inventory's reports: built from findings (severities the CRD accepts, no value of a
Secret), written only when they changed, and only the operator's own (by provenance tag)
ever patched or deleted; the run's metrics and when it looks again."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

from nhi import metrics_inventory as metrics
from nhi.builders.policy_report import (
    OPEN_REPORTS,
    REPORT_NAME,
    RESULTS_HASH_ANNOTATION,
    ReportPlan,
    build_report,
    finding_key,
    report_plan,
)
from nhi.handlers.inventory import tls_record
from nhi.k8s.client import Conflict
from nhi.models.inventory import Finding, ObjectRef
from nhi.models.inventory_config import InventoryConfig
from nhi.models.issuer import PROVENANCE_ANNOTATION
from nhi.policies.inventory import build
from nhi.reconcilers.inventory import InventoryReconciler, next_due
from nhi.reconcilers.inventory_reports import ReportWriter, purpose, report_entry
from nhi.reconcilers.issuers.provenance import Provenance
from tests.unit.inventory_factories import DAY, T0, deployment, observed, sa

pytestmark = pytest.mark.unit

PROV = Provenance(key=b"k" * 32, since=T0 - DAY)


def finding(ns: str = "app", severity: str = "critical", name: str = "x") -> Finding:
    return Finding(
        "cluster-admin-binding",
        "NHI5",
        severity,
        ns,
        (ObjectRef("ServiceAccount", ns, name),),
        "holds cluster-admin",
        "narrow it",
    )


class Keys:
    async def get(self) -> Provenance:
        return PROV


class FakeApi:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.conflict = False

    async def request(self, method: str, path: str, *, body: Any = None, **kw: Any) -> Any:
        self.calls.append((method, path, body))
        if method == "POST":
            if self.conflict:
                raise Conflict(409, "AlreadyExists", "")
            return {"metadata": {**body["metadata"], "uid": "uid-1"}}
        return {}

    async def patch(self, kind: str, ns: str | None, name: str, patch: Any, **kw: Any) -> Any:
        self.calls.append(("TAG", f"{kind}/{ns}/{name}", patch))
        return {}

    async def delete(self, kind: str, ns: str | None, name: str, *, uid: str | None = None) -> bool:
        self.calls.append(("DELETE", f"{kind}/{ns}/{name}", uid))
        return True


def writer() -> tuple[ReportWriter, FakeApi]:
    api = FakeApi()
    return ReportWriter(api, Keys()), api  # type: ignore[arg-type]


def plan(body: dict[str, Any]) -> ReportPlan:
    """A plan for a body already built (as the reconciler's would build it)."""
    ns = body["metadata"].get("namespace", "")
    return ReportPlan(ns, body["metadata"]["annotations"][RESULTS_HASH_ANNOTATION], lambda: body)


def first_seen(*fs: Finding) -> dict[str, dt.datetime]:
    return {finding_key(f): T0 for f in fs}


def test_a_report_holds_severities_every_v1alpha2_crd_accepts() -> None:
    f = finding()
    body = build_report("app", [f], first_seen(f))
    [r] = body["results"]
    assert (body["kind"], body["metadata"]["name"]) == ("PolicyReport", REPORT_NAME)
    assert r["severity"] == "high" and r["properties"]["severity"] == "critical"
    assert r["category"] == "NHI5 Overprivileged NHI" and r["result"] == "fail"
    assert body["summary"]["fail"] == 1
    assert build_report("", [], {})["kind"] == "ClusterPolicyReport"


def test_an_open_report_is_the_same_report_in_its_own_api_with_critical_kept() -> None:
    f = finding()
    body = build_report("app", [f], first_seen(f), OPEN_REPORTS)
    assert (body["apiVersion"], body["kind"]) == ("openreports.io/v1alpha1", "Report")
    assert body["results"][0]["severity"] == "critical"
    assert build_report("", [], {}, OPEN_REPORTS)["kind"] == "ClusterReport"
    policy = build_report("app", [f], first_seen(f))
    same = ("metadata", "scope", "summary")
    assert [body[k] for k in same] == [policy[k] for k in same]


def test_a_run_writes_every_installed_format_with_its_own_tag() -> None:
    api = FakeApi()
    writers = [ReportWriter(api, Keys()), ReportWriter(api, Keys(), OPEN_REPORTS)]  # type: ignore[arg-type]
    obs = observed(sas=[sa("app", "ci")], workloads=[deployment("app", "w", "ci")])
    rec = InventoryReconciler(InventoryConfig(), lambda: T0, writers)
    asyncio.run(rec.run(obs))
    posted = sorted(path for method, path, _ in api.calls if method == "POST")
    assert posted == [
        "/apis/openreports.io/v1alpha1/clusterreports",
        "/apis/openreports.io/v1alpha1/namespaces/app/reports",
        "/apis/wgpolicyk8s.io/v1alpha2/clusterpolicyreports",
        "/apis/wgpolicyk8s.io/v1alpha2/namespaces/app/policyreports",
    ]
    tags = {c[1]: c[2][1]["value"] for c in api.calls if c[0] == "TAG"}
    assert tags["Report/app/nhi-inventory"] == PROV.tag("uid-1", purpose("app", OPEN_REPORTS))
    assert tags["PolicyReport/app/nhi-inventory"] == PROV.tag("uid-1", purpose("app"))
    assert purpose("app", OPEN_REPORTS) != purpose("app")


def test_create_then_tag_then_no_write_while_unchanged() -> None:
    w, api = writer()
    f = finding()
    body = build_report("app", [f], first_seen(f))
    assert asyncio.run(w.sync({"app": plan(body)})) == 1
    assert [c[0] for c in api.calls] == ["POST", "TAG"]
    tag_patch = api.calls[1][2]
    assert tag_patch[0] == {"op": "test", "path": "/metadata/uid", "value": "uid-1"}
    assert tag_patch[1]["value"] == PROV.tag("uid-1", purpose("app"))
    api.calls.clear()
    assert asyncio.run(w.sync({"app": plan(body)})) == 0 and api.calls == []


def _ours(ns: str, hash_: str = "old") -> dict[str, Any]:
    return (
        report_entry(
            {
                "metadata": {
                    "name": REPORT_NAME,
                    "uid": "u",
                    "annotations": {
                        PROVENANCE_ANNOTATION: PROV.tag("u", purpose(ns)),
                        RESULTS_HASH_ANNOTATION: hash_,
                    },
                }
            }
        )
        or {}
    )


def test_a_changed_report_is_patched_after_testing_its_uid() -> None:
    w, api = writer()
    w.changed(("app", REPORT_NAME), None, _ours("app"))
    f = finding()
    asyncio.run(w.sync({"app": plan(build_report("app", [f], first_seen(f)))}))
    [(method, _, patch)] = api.calls
    assert method == "PATCH" and patch[0] == {"op": "test", "path": "/metadata/uid", "value": "u"}


def test_a_report_without_our_tag_is_never_written_nor_deleted() -> None:
    w, api = writer()
    forged = {"metadata": {"uid": "u", "annotations": {PROVENANCE_ANNOTATION: "forged"}}}
    w.changed(("app", REPORT_NAME), None, forged)
    w.changed(("gone", REPORT_NAME), None, {"metadata": {"uid": "v", "annotations": {}}})
    f = finding()
    asyncio.run(w.sync({"app": plan(build_report("app", [f], first_seen(f)))}))
    assert api.calls == []
    # A tag of another report's UID does not count either.
    w.changed(("app", REPORT_NAME), None, _ours("other"))
    asyncio.run(w.sync({}))
    assert api.calls == []


def test_only_our_reports_of_namespaces_without_findings_are_deleted_by_uid() -> None:
    w, api = writer()
    w.changed(("app", REPORT_NAME), None, _ours("app"))
    asyncio.run(w.sync({}))
    assert api.calls == [("DELETE", f"PolicyReport/app/{REPORT_NAME}", "u")]


def test_a_name_taken_by_an_unwatched_report_is_left_alone_until_findings_change() -> None:
    w, api = writer()
    api.conflict = True
    f = finding()
    body = build_report("app", [f], first_seen(f))
    asyncio.run(w.sync({"app": plan(body)}))
    asyncio.run(w.sync({"app": plan(body)}))
    assert [c[0] for c in api.calls] == ["POST"]


def test_a_tls_record_keeps_no_byte_of_the_secret() -> None:
    obj = {
        "metadata": {"namespace": "app", "name": "tls"},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": "bm90IGEgY2VydA==", "tls.key": "c2VjcmV0LWtleQ=="},
    }
    record = tls_record(obj)
    assert record.certificate is None and "no parseable" in record.problem
    assert "c2VjcmV0LWtleQ" not in repr(record) and "secret-key" not in repr(record)


def test_a_run_sets_the_metrics_and_counts_new_findings_after_the_first() -> None:
    now = [T0]
    rec = InventoryReconciler(InventoryConfig(), lambda: now[0])
    obs = observed(sas=[sa("app", "default")], workloads=[deployment("app", "a")])
    asyncio.run(rec.run(obs))
    snap = metrics.INVENTORY._snapshot
    assert snap["nhi_inventory_findings"][("app", "NHI9", "low")] == 1.0
    assert snap["nhi_inventory_identities"][("app", "unmanaged")] == 1.0
    before = metrics.findings_detected.labels("NHI9", "medium")._value.get()
    more = observed(
        sas=[sa("app", "default")], workloads=[deployment("app", "a"), deployment("app", "b")]
    )
    out = asyncio.run(rec.run(more))
    assert out.new >= 1
    assert metrics.findings_detected.labels("NHI9", "medium")._value.get() == before + 1


def test_the_next_look_is_when_an_unused_account_turns_unused() -> None:
    c = InventoryConfig()
    inv = build(observed(sas=[sa("app", "ci", created=T0 - 10 * DAY)]), c)
    # 20 days away: looked at again within the longest wait anyway.
    assert next_due(inv, c, T0) == T0 + dt.timedelta(hours=6)
    soon = build(observed(sas=[sa("app", "ci", created=T0 - 30 * DAY + dt.timedelta(hours=1))]), c)
    assert next_due(soon, c, T0) == T0 + dt.timedelta(hours=1)


def test_an_unchanged_report_is_neither_built_nor_written() -> None:
    w, api = writer()
    f = finding()
    built: list[str] = []
    original = report_plan("app", [f], first_seen(f))
    counting = ReportPlan("app", original.hash, lambda: built.append("x") or original.build())
    w.changed(("app", REPORT_NAME), None, _ours("app", original.hash))
    assert asyncio.run(w.sync({"app": counting})) == 0
    assert built == [] and api.calls == []
    changed = report_plan("app", [f, finding(name="y")], first_seen(f, finding(name="y")))
    assert changed.hash != original.hash
    assert asyncio.run(w.sync({"app": changed})) == 1 and api.calls[0][0] == "PATCH"

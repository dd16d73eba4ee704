"""The discovery wiring: what its watch caches keep (records, never a Secret's data), the
last use of a ServiceAccount, and runs that go on without reports when the PolicyReport CRDs
are missing or cannot be listed."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest

from nhi import metrics_inventory as metrics
from nhi.handlers.inventory import Discovery
from nhi.k8s.client import Api as RealApi
from nhi.k8s.client import ApiError, Connection, NotFound
from nhi.models.inventory_config import InventoryConfig
from nhi.runtime.caches import WatchCaches
from nhi.runtime.clock import ManualClock
from tests.unit.inventory_factories import T0

pytestmark = pytest.mark.unit

SECRET_VALUE = "c3VwZXItc2VjcmV0LXRva2Vu"  # base64 of a token value


class FakeApi(RealApi):
    def __init__(self, error: Exception) -> None:
        super().__init__(Connection("https://127.0.0.1:1", False, {}))
        self.error = error
        self.asked = 0

    async def request(self, method: str, path: str, **kw: Any) -> Any:
        self.asked += 1
        raise self.error


class Keys:
    async def get(self) -> Any:
        raise AssertionError("no report is written")


def discovery(api: FakeApi) -> Discovery:
    clock = ManualClock(T0)
    d = Discovery(
        api,
        clock,
        namespaces=(),
        config=InventoryConfig(),
        interval=0.1,
        provenance=Keys(),
        identities_ready=asyncio.Event(),
    )  # type: ignore[arg-type]
    d.watch(WatchCaches(api, clock))
    return d


def event(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {"type": "ADDED", "object": {"kind": kind, **obj}}


def feed(d: Discovery) -> None:
    by = d._by
    by["sa"][0].apply(
        event(
            "ServiceAccount",
            {
                "metadata": {
                    "namespace": "app",
                    "name": "ci",
                    "creationTimestamp": "2020-01-01T00:00:00Z",
                }
            },
        )
    )
    by["token"][0].apply(
        event(
            "Secret",
            {
                "type": "kubernetes.io/service-account-token",
                "metadata": {
                    "namespace": "app",
                    "name": "old",
                    "annotations": {"kubernetes.io/service-account.name": "ci"},
                },
                "data": {"token": SECRET_VALUE},
            },
        )
    )
    by["tls"][0].apply(
        event(
            "Secret",
            {
                "type": "kubernetes.io/tls",
                "metadata": {"namespace": "app", "name": "web"},
                "data": {"tls.crt": base64.b64encode(b"garbage").decode(), "tls.key": SECRET_VALUE},
            },
        )
    )
    for w in by["workload"]:
        if w.kind == "Deployment":
            w.apply(
                event(
                    "Deployment",
                    {
                        "metadata": {"namespace": "app", "name": "w"},
                        "spec": {"template": {"spec": {"serviceAccountName": "ci"}}},
                    },
                )
            )


def test_the_caches_keep_records_without_secret_data() -> None:
    d = discovery(FakeApi(NotFound(404, "NotFound", "")))
    feed(d)
    obs = d.observed()
    assert [t.meta.name for t in obs.tokens] == ["old"]
    assert [(s.meta.name, s.certificate, s.problem) for s in obs.tls] == [
        ("web", None, "tls.crt holds no parseable PEM certificate")
    ]
    everything = repr([i.objects for i in d.caches.informers])
    assert SECRET_VALUE not in everything and "garbage" not in everything


def test_a_workload_leaving_a_service_account_records_its_last_use() -> None:
    d = discovery(FakeApi(NotFound(404, "NotFound", "")))
    feed(d)
    [deploy] = [w for w in d._by["workload"] if w.kind == "Deployment"]
    deploy.apply({"type": "DELETED", "object": {"metadata": {"namespace": "app", "name": "w"}}})
    assert d.observed().last_used == {("app", "ci"): T0}


def test_the_last_request_seen_in_the_audit_usage_counts_as_a_use() -> None:
    import datetime as dt

    d = discovery(FakeApi(NotFound(404, "NotFound", "")))
    feed(d)
    [deploy] = [w for w in d._by["workload"] if w.kind == "Deployment"]
    deploy.apply({"type": "DELETED", "object": {"metadata": {"namespace": "app", "name": "w"}}})
    later = T0 + dt.timedelta(days=3)
    d.usage = lambda: {("app", "ci"): later, ("app", "other"): T0 - dt.timedelta(days=1)}
    assert d.observed().last_used == {
        ("app", "ci"): later,
        ("app", "other"): T0 - dt.timedelta(days=1),
    }
    d.usage = lambda: {("app", "ci"): T0 - dt.timedelta(days=3)}
    assert d.observed().last_used == {("app", "ci"): T0}  # the later of the two


def test_without_the_report_crds_the_inventory_runs_on_metrics_only() -> None:
    api = FakeApi(NotFound(404, "NotFound", ""))
    d = discovery(api)
    feed(d)
    d.identities_ready.set()
    asyncio.run(d.reconcile(("", "inventory")))
    asyncio.run(d.reconcile(("", "inventory")))
    # Looked for once per format (PolicyReport, OpenReports).
    assert api.asked == 2 and d.reconciler.reports == []
    assert metrics.INVENTORY._snapshot["nhi_inventory_objects"][("LegacyTokenSecret",)] == 1.0


def test_an_error_looking_for_the_crds_is_asked_again_and_the_run_goes_on() -> None:
    api = FakeApi(ApiError(500, "InternalError", "boom"))
    d = discovery(api)
    d.identities_ready.set()
    asyncio.run(d.reconcile(("", "inventory")))
    asyncio.run(d.reconcile(("", "inventory")))
    assert api.asked == 4 and d.reconciler.runs == 2  # both formats asked again each run

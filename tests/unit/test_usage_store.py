"""The usage endpoint's answers and the store behind it, with a fake API (unit: the real
endpoint over TLS with the API server's certificate is tests/integration/test_usage.py).

Refused before the body is read when unauthenticated; 413 over the size limit; 400 naming
the field for a malformed batch, with nothing of it counted; a replayed batch not counted
twice; the persisted ConfigMap read back into the same usage; the unused-rule verdict in
status and the condition."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from nhi import metrics, metrics_usage
from nhi.builders.usage import book_of, build_configmap, configmap_name
from nhi.handlers.usage import UsageEndpoint
from nhi.models.usage import Access, parse_event_list
from nhi.policies.usage import UNUSED_PERMISSIONS
from nhi.reconcilers.usage import UsageStore
from nhi.settings import Settings
from tests.unit.factories import make_body, rule
from tests.unit.test_usage import batch, event

pytestmark = pytest.mark.unit

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
TOKEN = "s3cret-token-value"


class FakeApi:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str | None, str], dict[str, Any]] = {
            ("Secret", "nhi-system", "audit-token"): {
                "data": {"token": base64.b64encode(TOKEN.encode()).decode()}
            }
        }
        self.patches: list[tuple[str, str, Any]] = []

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self.objects.get((kind, namespace, name))

    async def apply(self, obj: dict[str, Any], **_: Any) -> dict[str, Any]:
        meta = obj["metadata"]
        self.objects[(obj["kind"], meta.get("namespace"), meta["name"])] = obj
        return obj

    async def iterate(self, kind: str, namespace: str | None, **_: Any) -> AsyncIterator[Any]:
        for (k, ns, _name), obj in list(self.objects.items()):
            if k == kind and ns == namespace:
                yield obj

    async def request(self, method: str, path: str, **_: Any) -> Any:
        assert (method, path) == ("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews")
        return {"status": {"userInfo": {"username": "nhi-operator"}}}

    async def patch(self, kind: str, namespace: str, name: str, patch: Any, **_: Any) -> Any:
        self.patches.append((namespace, name, patch))
        obj = self.objects.get((kind, namespace, name))
        if obj is not None and isinstance(patch, dict) and "data" in patch:
            obj.setdefault("data", {}).update(patch["data"])  # a merge patch of data
        return {}


def store(api: FakeApi, **kw: Any) -> UsageStore:
    return UsageStore(api, "nhi-system", lambda: NOW, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def client() -> AsyncIterator[tuple[TestClient[Any, Any], UsageStore]]:
    api = FakeApi()
    s = store(api)
    settings = Settings(usage_token_secret="audit-token", usage_max_body=64 * 1024)
    endpoint = UsageEndpoint(settings, s)
    async with TestClient(TestServer(endpoint.app())) as c:
        yield c, s


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


def counted(result: str) -> float:
    return metrics.REGISTRY.get_sample_value("nhi_usage_batches_total", {"result": result}) or 0


async def test_a_batch_is_counted_once_even_when_posted_again(client: Any) -> None:
    c, s = client
    body = json.dumps(batch(event(), event(auditID="a-2", verb="list")))
    before = counted("accepted")
    for expected in ({"counted": 2, "replayed": 0}, {"counted": 0, "replayed": 2}):
        resp = await c.post("/audit", data=body, headers=auth())
        assert resp.status == 200 and await resp.json() == expected
    book = s.books[("team", "billing")]
    assert book.entries[Access("", "configmaps", "", "team", "settings", "get")].count == 1
    assert counted("accepted") == before + 2


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}]
)
async def test_an_unauthenticated_post_is_refused_and_counts_nothing(
    client: Any, headers: dict[str, str]
) -> None:
    c, s = client
    before = counted("unauthenticated")
    resp = await c.post("/audit", data=json.dumps(batch(event())), headers=headers)
    assert resp.status == 401
    assert s.books == {} and counted("unauthenticated") == before + 1
    assert TOKEN not in await resp.text()


async def test_malformed_and_oversized_batches_get_clear_errors_and_count_nothing(
    client: Any,
) -> None:
    c, s = client
    half_bad = json.dumps(batch(event(), event(auditID="a-2", stageTimestamp="soon")))
    resp = await c.post("/audit", data=half_bad, headers=auth())
    assert resp.status == 400 and "items[1]" in (await resp.json())["message"]
    resp = await c.post("/audit", data=half_bad[:50], headers=auth())
    assert resp.status == 400 and "not valid JSON" in (await resp.json())["message"]
    huge = json.dumps(batch(*(event(auditID=str(i)) for i in range(200))))
    resp = await c.post("/audit", data=huge, headers=auth())
    assert resp.status == 413
    resp = await c.post("/audit", data="x", headers={**auth(), "Content-Type": "text/plain"})
    assert resp.status == 415
    assert s.books == {}


async def test_persisted_usage_is_read_back_and_merged_with_what_arrived_meanwhile() -> None:
    api = FakeApi()
    first = store(api)
    first.ingest(parse_event_list(batch(event())))
    assert await first.flush() == 0  # not before the persisted usage is read back
    await first.load()
    assert await first.flush() == 1 and await first.flush() == 0
    cm = api.objects[("ConfigMap", "nhi-system", configmap_name("team", "billing"))]
    assert cm["metadata"]["annotations"]["nhi.dev/serviceaccount-name"] == "billing"
    assert book_of(cm) == first.books[("team", "billing")]
    second = store(api)
    second.ingest(parse_event_list(batch(event(auditID="later"))))
    await second.load()
    assert second.own_users == {"nhi-operator"}  # its own tokens are not a person's
    (seen,) = second.books[("team", "billing")].entries.values()
    assert seen.count == 2
    assert (
        book_of({**build_configmap(second.books[("team", "billing")], "x"), "metadata": {}}) is None
    )


async def test_an_unused_rule_is_in_status_and_the_condition() -> None:
    api = FakeApi()
    s = store(api, unused_after=dt.timedelta(days=30))
    s.since = NOW - dt.timedelta(days=31)
    s.ingest(parse_event_list(batch(event(stageTimestamp="2026-12-01T11:00:00Z"))))
    body = make_body(
        namespace="team",
        serviceAccount={"name": "billing"},
        permissions={"rules": [rule(verbs=("get",)), rule(resources=("secrets",))]},
    )
    body["metadata"]["creationTimestamp"] = "2026-10-01T00:00:00Z"
    assert await s.assess([body]) == 1
    (_, _, patch) = api.patches[0]
    usage = patch["status"]["usage"]
    assert usage["unusedRules"] == ["spec.permissions.rules[1]"]
    assert usage["rules"][0]["lastUsed"] == "2026-12-01T11:00:00Z"
    (c,) = [c for c in patch["status"]["conditions"] if c["type"] == UNUSED_PERMISSIONS]
    assert c["status"] == "True" and "rules[1]" in c["message"]
    body["status"] = patch["status"]
    assert await s.assess([body]) == 0  # unchanged: not written again


def test_the_rightsize_diff_drops_the_unused_rule_and_keeps_role_refs() -> None:
    from nhi.cli.rightsize import diff
    from nhi.models.identity import MachineIdentity
    from nhi.models.usage import UsageBook

    permissions = {
        "rules": [rule(verbs=("get", "list")), rule(resources=("services",), verbs=("list",))],
        "roleRefs": [{"kind": "ClusterRole", "name": "view"}],
    }
    body = make_body(namespace="team", serviceAccount={"name": "billing"}, permissions=permissions)
    book = UsageBook("team", "billing")
    for obs in parse_event_list(batch(event())):
        book.record(obs)
    text = diff(MachineIdentity.from_body(body), permissions, book)
    removed = [line for line in text.splitlines() if line.startswith("-")]
    added = [line for line in text.splitlines() if line.startswith("+")]
    assert any("services" in line for line in removed)
    assert any("- settings" in line for line in added)
    assert not any("services" in line or "view" in line for line in added)
    assert "roleRefs" in text and not any("view" in line for line in removed)
    assert diff(MachineIdentity.from_body(body), permissions, UsageBook("team", "billing")) != ""


def test_the_replay_window_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from nhi.reconcilers import usage as store_module

    monkeypatch.setattr(store_module, "SEEN_IDS", 3)
    s = store(FakeApi())
    events = [parse_event_list(batch(event(auditID=f"id-{i}")))[0] for i in range(4)]
    assert s.ingest(events) == (4, 0)
    assert s.ingest(events[1:]) == (0, 3)  # the last three are remembered
    assert s.ingest(events[:1]) == (1, 0)  # the oldest was forgotten
    assert len(s.seen) == len(s.order) == 3


class Recorder:
    def __init__(self) -> None:
        self.posted: list[tuple[dict[str, Any], str, str, str]] = []

    def post(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.posted.append((body, type_, reason, message))


def test_a_new_behaviour_after_the_learning_window_is_an_event_and_a_metric() -> None:
    rec = Recorder()
    s = store(FakeApi(), learning_window=dt.timedelta(days=7), events=rec)  # type: ignore[arg-type]
    first = "2026-11-01T00:00:00Z"
    s.ingest(parse_event_list(batch(event(stageTimestamp=first))))
    # Within the window: learnt, not reported.
    s.ingest(parse_event_list(batch(event(auditID="2", verb="list", stageTimestamp=first))))
    assert s.novelties == []
    before = (
        metrics.REGISTRY.get_sample_value("nhi_usage_new_behaviours_total", {"namespace": "team"})
        or 0
    )
    later = "2026-11-09T00:00:00Z"
    known = event(auditID="3", stageTimestamp=later, objectRef={"resource": "configmaps",
                  "namespace": "team", "name": "other"})  # fmt: skip
    new = event(auditID="4", verb="delete", stageTimestamp=later)
    s.ingest(parse_event_list(batch(known, new)))
    assert [o.audit_id for o in s.novelties] == ["4"]
    after = metrics.REGISTRY.get_sample_value(
        "nhi_usage_new_behaviours_total", {"namespace": "team"}
    )
    assert after == before + 1
    managed = make_body(name="billing-id", namespace="team", serviceAccount={"name": "billing"})
    assert s.report_novelties([managed]) == 1 and s.novelties == []
    ((about, type_, reason, message),) = rec.posted
    assert about["metadata"]["name"] == "billing-id" and (type_, reason) == (
        "Warning",
        "NewBehaviour",
    )
    assert "used delete on core/configmaps" in message and "JTI=abc" in message
    # Unmanaged: the Event is about the ServiceAccount.
    s.ingest(parse_event_list(batch(event(auditID="5", verb="patch", stageTimestamp=later))))
    s.report_novelties([])
    assert rec.posted[-1][0]["kind"] == "ServiceAccount"


def test_the_learning_window_survives_persistence() -> None:
    from nhi.models.usage import UsageBook, book_from_json, book_to_json

    book = UsageBook("team", "billing")
    (obs,) = parse_event_list(batch(event()))
    assert book.record(obs) is True and book.record(obs) is False
    again = book_from_json(json.loads(json.dumps(book_to_json(book))))
    assert again.since == book.since > 0
    assert again.behaviours == {("", "configmaps", "get")}


def mint_event(
    audit_id: str, by: dict[str, Any], cid: str = "JTI=abc", **kw: Any
) -> dict[str, Any]:
    """kubectl create token billing -n team, as the API server audits it."""
    return event(
        auditID=audit_id,
        verb="create",
        user=by,
        objectRef={"resource": "serviceaccounts", "subresource": "token", "namespace": "team",
                   "name": "billing", "apiVersion": "v1"},
        annotations={"authentication.kubernetes.io/issued-credential-id": cid},
        sourceIPs=["192.0.2.7"],
        userAgent="kubectl/v1.37.2",
        **kw,
    )  # fmt: skip


def test_a_token_minted_by_a_person_and_used_is_reported_once_naming_who_and_where() -> None:
    from nhi.models.usage import parse_batch

    rec = Recorder()
    s = store(FakeApi(), events=rec)  # type: ignore[arg-type]
    s.own_users = {"nhi-operator"}
    minted = parse_batch(batch(mint_event("m1", {"username": "alice"})))
    assert [m.minted_by for m in minted.mints] == ["alice"] and minted.observations == []
    before = (
        metrics.REGISTRY.get_sample_value(
            "nhi_usage_person_minted_tokens_total", {"namespace": "team"}
        )
        or 0
    )
    used = parse_batch(batch(*minted_items(), event(auditID="u1"), event(auditID="u2")))
    s.ingest(used.observations, used.mints)
    assert len(s.human_uses) == 1  # once per credential
    assert (
        metrics.REGISTRY.get_sample_value(
            "nhi_usage_person_minted_tokens_total", {"namespace": "team"}
        )
        == before + 1
    )
    s.report_novelties([])
    ((about, _, reason, message),) = rec.posted
    assert (about["kind"], reason) == ("ServiceAccount", "TokenMintedByPerson")
    assert "minted by alice from 192.0.2.7 (kubectl/v1.37.2)" in message and "JTI=abc" in message


async def test_a_restart_still_knows_who_minted_a_token_and_that_it_was_reported() -> None:
    from nhi.builders.usage import PERSON_MINTS, STATE_CONFIGMAP
    from nhi.models.usage import parse_batch

    api = FakeApi()
    first = store(api)
    await first.load()
    minted = parse_batch(batch(mint_event("m1", {"username": "alice"})))
    first.ingest(minted.observations, minted.mints)
    await first.flush()
    state = api.objects[("ConfigMap", "nhi-system", STATE_CONFIGMAP)]
    assert "alice" in state["data"][PERSON_MINTS] and TOKEN not in json.dumps(state)

    # The operator restarts: the token is used now, and is still traced to alice, once.
    again = store(api)
    await again.load()
    used = parse_batch(batch(event(auditID="u1")))
    again.ingest(used.observations, used.mints)
    assert [m.minted_by for _, m in again.human_uses] == ["alice"]
    await again.flush()
    third = store(api)
    await third.load()
    third.ingest(parse_batch(batch(event(auditID="u2"))).observations)
    assert third.human_uses == []  # reported before the restart


@pytest.mark.parametrize("garbage", ["{", "[1]", '[["a","b"]]', '"x"'])
async def test_unreadable_persisted_mints_are_ignored(garbage: str) -> None:
    from nhi.builders.usage import PERSON_MINTS, STATE_CONFIGMAP

    api = FakeApi()
    api.objects[("ConfigMap", "nhi-system", STATE_CONFIGMAP)] = {
        "data": {"since": "2026-11-01T00:00:00Z", PERSON_MINTS: garbage}
    }
    s = store(api)
    await s.load()
    assert s.loaded and s.mints == {}


def minted_items() -> list[dict[str, Any]]:
    return [mint_event("m1", {"username": "alice"})]


@pytest.mark.parametrize(
    "by",
    [
        {"username": "system:kube-controller-manager"},
        {"username": "system:node:worker-1"},
        {"username": "system:serviceaccount:ci:deployer"},
        {"username": "nhi-operator"},
    ],
)
def test_tokens_minted_by_the_cluster_or_the_operator_are_not_a_finding(by: dict[str, Any]) -> None:
    from nhi.models.usage import parse_batch

    s = store(FakeApi())
    s.own_users = {"nhi-operator"}
    b = parse_batch(batch(mint_event("m1", by), event(auditID="u1")))
    s.ingest(b.observations, b.mints)
    assert s.human_uses == []


def test_an_impersonated_minter_is_the_one_named() -> None:
    from nhi.models.usage import parse_batch

    b = parse_batch(batch(mint_event("m1", {"username": "nhi-operator"},
                                     impersonatedUser={"username": "mallory"})))  # fmt: skip
    assert b.mints[0].minted_by == "mallory" and b.mints[0].by_person


async def test_a_standby_replica_refuses_batches_and_reloads_when_it_becomes_active() -> None:
    import asyncio

    api = FakeApi()
    s = store(api, flush_interval=0.05)
    active = asyncio.Event()
    settings = Settings(usage_token_secret="audit-token")
    async with TestClient(TestServer(UsageEndpoint(settings, s).app())) as c:
        s.start(_Scope(), active=active)  # type: ignore[arg-type]
        resp = await c.post("/audit", data=json.dumps(batch(event())), headers=auth())
        assert resp.status == 503 and s.books == {}
        # The active replica persisted something meanwhile; this one takes over.
        other = store(api)
        await other.load()
        other.ingest(parse_event_list(batch(event(auditID="elsewhere"))))
        await other.flush()
        active.set()
        for _ in range(100):
            if s.loaded:
                break
            await asyncio.sleep(0.02)
        resp = await c.post("/audit", data=json.dumps(batch(event())), headers=auth())
        assert resp.status == 200
        (seen,) = s.books[("team", "billing")].entries.values()
        assert seen.count == 2  # the persisted one and this one
        active.clear()
        for _ in range(100):
            if not s.loaded:
                break
            await asyncio.sleep(0.02)
        assert s.books == {}  # set aside: stale from now on
        await s.stop()


class _Scope:
    def identity_bodies(self) -> list[dict[str, Any]]:
        return []

    def policies(self) -> list[Any]:
        return []

    def namespace_labels(self, namespace: str) -> dict[str, str]:
        return {}


def test_an_adoption_is_cut_down_to_the_observed_use() -> None:
    from nhi.cli.rightsize import adoption
    from nhi.models.usage import UsageBook

    manifest = make_body(
        name="billing",
        namespace="team",
        annotations={"nhi.dev/adopt": "true"},
        serviceAccount={"name": "billing"},
        permissions={
            "rules": [rule(verbs=("get", "list")), rule(resources=("secrets",), verbs=("get",))],
            "roleRefs": [{"kind": "ClusterRole", "name": "view"}],
        },
    )
    book = UsageBook("team", "billing")
    for obs in parse_event_list(batch(event())):
        book.record(obs)
    out = adoption(manifest, book)
    assert out["spec"]["permissions"]["rules"] == [
        {"verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"],
         "resourceNames": ["settings"]}
    ]  # fmt: skip
    assert out["spec"]["permissions"]["roleRefs"] == [{"kind": "ClusterRole", "name": "view"}]
    assert out["metadata"]["annotations"] == {"nhi.dev/adopt": "true"}
    assert manifest["spec"]["permissions"]["rules"][1]["resources"] == ["secrets"]  # untouched


async def test_rightsizing_suggest_keeps_the_smaller_permissions_in_status() -> None:
    from nhi.models.fields import SpecError
    from nhi.models.identity import MachineIdentity

    api = FakeApi()
    s = store(api)
    s.ingest(parse_event_list(batch(event())))
    permissions = {"rules": [rule(verbs=("get", "list")), rule(resources=("secrets",))]}
    body = make_body(namespace="team", serviceAccount={"name": "billing"},
                     permissions={**permissions, "rightsizing": "Suggest"})  # fmt: skip
    usage, _ = s.verdict(MachineIdentity.from_body(body), NOW)
    assert usage["suggestion"] == {
        "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"],
                   "resourceNames": ["settings"]}],
        "clusterRules": [],
    }  # fmt: skip
    off = make_body(namespace="team", serviceAccount={"name": "billing"}, permissions=permissions)
    assert "suggestion" not in s.verdict(MachineIdentity.from_body(off), NOW)[0]
    bad = make_body(permissions={**permissions, "rightsizing": "Apply"})
    with pytest.raises(SpecError, match=r"spec\.permissions\.rightsizing"):
        MachineIdentity.from_body(bad)


def pod_store() -> tuple[Recorder, FakeApi, UsageStore]:
    """A store with Events recorded and the pod billing-0 at 10.1.2.3."""
    rec = Recorder()
    api = FakeApi()
    api.objects[("Pod", "team", "billing-0")] = {
        "spec": {}, "status": {"podIP": "10.1.2.3", "podIPs": [{"ip": "10.1.2.3"}]},
    }  # fmt: skip
    return rec, api, store(api, events=rec)  # type: ignore[arg-type]


async def test_a_pod_bound_token_used_from_another_address_is_reported_once() -> None:
    rec, _, s = pod_store()
    inside = event(auditID="in", sourceIPs=["10.1.2.3"])
    outside = event(auditID="out", sourceIPs=["198.51.100.9"])
    again = event(auditID="again", sourceIPs=["198.51.100.9"])
    s.ingest(parse_event_list(batch(inside, outside, again)))
    assert len(s.pod_uses) == 2  # one per credential and address
    assert await s.check_pods({}) == 1
    ((about, _, reason, message),) = rec.posted
    assert (about["kind"], reason) == ("ServiceAccount", "TokenUsedOutsidePod")
    assert "bound to pod billing-0 was used from 198.51.100.9" in message
    s.ingest(parse_event_list(batch(event(auditID="later", sourceIPs=["198.51.100.9"]))))
    assert s.pod_uses == {}  # checked already


async def test_a_use_arriving_while_its_pod_is_read_is_not_reported_twice() -> None:
    rec, api, s = pod_store()
    read = api.get

    async def get_while_more_arrives(kind: str, namespace: str | None, name: str) -> Any:
        # The same token is used again while the first pass waits for the pod.
        s.ingest(parse_event_list(batch(event(auditID="meanwhile", sourceIPs=["198.51.100.9"]))))
        return await read(kind, namespace, name)

    api.get = get_while_more_arrives  # type: ignore[method-assign]
    s.ingest(parse_event_list(batch(event(auditID="first", sourceIPs=["198.51.100.9"]))))
    assert await s.check_pods({}) == 1
    assert await s.check_pods({}) == 0
    assert len(rec.posted) == 1


async def test_a_token_bound_to_a_pod_outside_the_identitys_workloads_is_reported() -> None:
    rec = Recorder()
    api = FakeApi()
    labels = {"app": "intruder"}
    api.objects[("Pod", "team", "billing-0")] = {
        "metadata": {"labels": labels}, "spec": {}, "status": {},  # no address yet
    }  # fmt: skip
    s = store(api, events=rec)  # type: ignore[arg-type]
    selector = {"matchLabels": {"app": "billing"}}
    mi = make_body(namespace="team", name="billing", workloads={"selector": selector})
    before = metrics_usage.usage_tokens_foreign_pod.labels("team")._value.get()
    s.ingest(parse_event_list(batch(event(auditID="x", sourceIPs=["10.1.2.3"]))))
    assert await s.check_pods({("team", "billing"): mi}) == 1
    ((about, _, reason, message),) = rec.posted
    assert (about["kind"], reason) == ("MachineIdentity", "TokenOfForeignPod")
    assert "bound to pod billing-0, which is not among the workloads of MachineIdentity" in message
    assert "JTI=abc" in message
    assert metrics_usage.usage_tokens_foreign_pod.labels("team")._value.get() == before + 1
    # The identity's own pod, or an identity without a selector: nothing.
    labels["app"] = "billing"
    bare = make_body(namespace="team", name="billing")
    for n, manager in enumerate((mi, bare)):
        s.ingest(parse_event_list(batch(event(auditID=f"y{n}", sourceIPs=[f"10.9.9.{n}"]))))
        assert await s.check_pods({("team", "billing"): manager}) == 0
    assert len(rec.posted) == 1


def test_a_namespace_scoped_operator_counts_only_its_namespaces() -> None:
    s = store(FakeApi(), namespaces=["team"])
    elsewhere = event(
        auditID="elsewhere",
        user={"username": "system:serviceaccount:other:billing"},
        objectRef={"resource": "configmaps", "namespace": "other", "apiVersion": "v1"},
    )
    counted, _ = s.ingest(parse_event_list(batch(event(auditID="mine"), elsewhere)))
    assert counted == 1 and set(s.books) == {("team", "billing")}


def test_the_last_request_of_each_service_account_is_known() -> None:
    s = store(FakeApi())
    s.ingest(parse_event_list(batch(event(auditID="a"), event(
        auditID="b", stageTimestamp="2026-12-02T08:00:00.000000Z"))))  # fmt: skip
    assert s.last_seen() == {("team", "billing"): dt.datetime(2026, 12, 2, 8, 0, tzinfo=dt.UTC)}


def test_pod_addresses_include_the_node_with_host_network() -> None:
    from nhi.policies.usage import pod_addresses

    pod = {"spec": {"hostNetwork": True}, "status": {"podIP": "10.0.0.5", "hostIP": "10.0.0.5"}}
    assert pod_addresses(pod) == {"10.0.0.5"}
    assert pod_addresses({"status": {}}) == set()

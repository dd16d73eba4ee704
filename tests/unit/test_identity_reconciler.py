"""The identity reconciler against an in-memory API: what it writes, in what order, and what a
user sees (status, Events) when one of the writes fails.

Every write goes through a fake API that counts requests and how many are in flight at once;
the watch caches are a fake view that, like the operator's write overlay, sees the
reconciler's own writes at once.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, cast

import pytest

from nhi.builders.rbac import ChildKey, child_key
from nhi.k8s.client import Api, ApiError, Conflict, Forbidden, Invalid, NotFound
from nhi.k8s.events import EventBatch, EventRecorder
from nhi.models.meta import IDENTITY_LABEL, Reason
from nhi.models.policy import IdentityPolicy
from nhi.models.workload import Workload
from nhi.reconcilers.identity import IdentityReconciler
from nhi.reconcilers.issuers import IssuerService
from tests.unit.factories import NAME, NAMESPACE, credential, make_body, rule

pytestmark = pytest.mark.unit

NOW = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)
TOKEN = "eyJhbGciOi.fake-token-value.signature"
PERMISSIONS = {"rules": [rule()], "roleRefs": [{"kind": "Role", "name": "reader"}]}
CREDENTIALS = [
    credential("api", audiences=["api.example"]),
    credential("db", type="StaticSecret"),
]


class FakeApi:
    """Just enough of nhi.k8s.client.Api, in memory; every call yields to the event loop
    once, so calls made at the same time really overlap."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.calls: list[tuple[str, str, str]] = []
        self.timeline: list[tuple[str, str, str]] = []  # ("start" | "end", kind, name)
        self.events: list[dict[str, Any]] = []
        self.fail: dict[str, ApiError] = {}  # kind -> error raised by its writes
        #: Requests in flight now and at most, Events apart from the rest.
        self.in_flight = {"events": 0, "requests": 0}
        self.most = {"events": 0, "requests": 0}
        self.event_gate: asyncio.Event | None = None
        self.status: dict[str, Any] | None = None  # the last status patch
        self.version = 0

    async def _call(self, verb: str, kind: str, name: str) -> None:
        self.calls.append((verb, kind, name))
        self.timeline.append(("start", kind, name))
        group = "events" if kind == "Event" else "requests"
        self.in_flight[group] += 1
        self.most[group] = max(self.most[group], self.in_flight[group])
        try:
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        finally:
            self.in_flight[group] -= 1
            self.timeline.append(("end", kind, name))
        if kind in self.fail and verb != "get":
            raise self.fail[kind]

    def overlapped(self, a: tuple[str, str], b: tuple[str, str]) -> bool:
        """Whether request ``a`` (kind, name) started before request ``b`` ended."""
        return self.timeline.index(("start", *a)) < self.timeline.index(("end", *b))

    def requests(self, verb: str | None = None) -> list[tuple[str, str, str]]:
        """The requests made, Events aside (they are counted in ``events``)."""
        return [c for c in self.calls if c[1] != "Event" and verb in (None, c[0])]

    def writes(self) -> list[tuple[str, str, str]]:
        """Creates and applies of objects (not of subresources such as a token)."""
        return [c for c in self.requests() if c[0] in ("create", "apply") and "/" not in c[1]]

    def _stamp(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        meta = obj["metadata"]
        meta.setdefault("uid", f"uid-{obj['kind']}-{meta['name']}")
        meta["resourceVersion"] = str(self.version)
        return obj

    async def apply(self, obj: Mapping[str, Any], **_: Any) -> dict[str, Any]:
        meta = obj["metadata"]
        await self._call("apply", obj["kind"], meta["name"])
        key = (obj["kind"], meta.get("namespace", ""), meta["name"])
        new = copy.deepcopy(dict(obj))
        old = self.objects.get(key)
        uid = meta.get("uid")
        if uid and (old is None or old["metadata"]["uid"] != uid):
            # As the API server does: an apply that names a uid never creates or replaces.
            raise Conflict(409, "Conflict", "uid mismatch", kind=obj["kind"], name=meta["name"])
        if old is not None:
            new["metadata"]["uid"] = old["metadata"]["uid"]
        self.objects[key] = self._stamp(new)
        return copy.deepcopy(new)

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        await self._call("get", kind, name)
        obj = self.objects.get((kind, namespace or "", name))
        return copy.deepcopy(obj) if obj is not None else None

    async def create(
        self,
        kind: str,
        namespace: str | None,
        body: Mapping[str, Any],
        *,
        name: str | None = None,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        if kind == "Event":
            if self.event_gate is not None:
                await self.event_gate.wait()
            await self._call("create", kind, "")
            self.events.append(dict(body))
            return dict(body)
        if subresource is None:
            meta = body["metadata"]
            await self._call("create", kind, meta["name"])
            key = (kind, meta.get("namespace", ""), meta["name"])
            if key in self.objects:
                raise Conflict(409, "AlreadyExists", "already exists", kind=kind, name=meta["name"])
            self.objects[key] = self._stamp(copy.deepcopy(dict(body)))
            return copy.deepcopy(self.objects[key])
        await self._call("create", f"{kind}/{subresource}", name or "")
        return {"status": {"token": TOKEN, "expirationTimestamp": "2030-01-01T13:00:00Z"}}

    async def patch(
        self, kind: str, namespace: str | None, name: str, patch: Any, **_: Any
    ) -> dict[str, Any]:
        await self._call("patch", kind, name)
        self.status = copy.deepcopy(patch["status"])
        body = make_body(name=name, namespace=namespace or "")
        body["status"] = copy.deepcopy(patch["status"])
        return self._stamp(body)

    async def delete(self, kind: str, namespace: str | None, name: str, **_: Any) -> bool:
        await self._call("delete", kind, name)
        return self.objects.pop((kind, namespace or "", name), None) is not None


class FakeView:
    """The watch caches of one namespace, updated by the reconciler's own writes."""

    def __init__(self) -> None:
        self.children: dict[ChildKey, dict[str, Any]] = {}
        self.recorded: list[ChildKey] = []

    def children_of(self, namespace: str, name: str) -> dict[ChildKey, dict[str, Any]]:
        return {
            k: v
            for k, v in self.children.items()
            if v["metadata"].get("labels", {}).get(IDENTITY_LABEL) == name
        }

    def policies(self) -> Sequence[IdentityPolicy]:
        return []

    def namespace_labels(self, namespace: str) -> Mapping[str, str]:
        return {}

    def written(self, obj: Mapping[str, Any]) -> None:
        key = child_key(dict(obj))
        self.children[key] = copy.deepcopy(dict(obj))
        self.recorded.append(key)

    def deleted(self, key: ChildKey) -> None:
        self.children.pop(key, None)

    def workloads(self, namespace: str) -> list[Workload]:
        return []

    def identity_written(self, obj: Mapping[str, Any]) -> None:
        pass

    def service_account(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return None


def make_reconciler() -> tuple[IdentityReconciler, FakeApi, FakeView, EventRecorder]:
    api, view = FakeApi(), FakeView()
    events = EventRecorder(cast(Api, api))
    issuers = cast(IssuerService, object())  # no X509 credential here: never asked
    return IdentityReconciler(cast(Api, api), view, events, issuers, lambda: NOW), api, view, events


def body(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"permissions": PERMISSIONS, "credentials": CREDENTIALS}
    spec.update(overrides)
    return make_body(**spec)


def messages(api: FakeApi) -> dict[str, str]:
    return {e["reason"]: e["message"] for e in api.events}


async def test_children_and_credentials_are_written_at_once_and_recorded() -> None:
    rec, api, view, events = make_reconciler()
    outcome = await rec.reconcile(body())
    await events.drain()
    assert outcome.ready, outcome.message
    applied = {(kind, name) for verb, kind, name in api.writes()}
    assert applied >= {
        ("ServiceAccount", NAME),
        ("Role", f"nhi-{NAME}"),
        ("RoleBinding", f"nhi-{NAME}"),
        ("RoleBinding", f"nhi:{NAME}:role:reader"),
        ("Secret", f"{NAME}.api"),
        ("Secret", f"{NAME}.db"),
    }
    # Nothing waited for an unrelated write: several requests were in flight together.
    assert api.most["requests"] >= 4
    # Every write is known to the caches before the watch shows it.
    assert set(view.recorded) >= {
        ChildKey("ServiceAccount", NAMESPACE, NAME),
        ChildKey("RoleBinding", NAMESPACE, f"nhi-{NAME}"),
        ChildKey("Secret", NAMESPACE, f"{NAME}.db"),
    }
    # The token's Secret (no value yet) is written with the other objects; the token is
    # requested once they are all in place; the static secret does not wait for the token.
    sa, token = ("ServiceAccount", NAME), ("ServiceAccount/token", NAME)
    assert api.overlapped(("Secret", f"{NAME}.api"), sa)
    assert api.timeline.index(("end", *sa)) < api.timeline.index(("start", *token))
    assert api.overlapped(("Secret", f"{NAME}.db"), token)
    # One Event per reason, each change listed; in the order of the plan and the spec.
    got = messages(api)
    assert got["Created"].split("; ") == [
        f"created ServiceAccount/{NAME}",
        f"created Role/nhi-{NAME}",
        f"created RoleBinding/nhi-{NAME}",
        f"created RoleBinding/nhi:{NAME}:role:reader",
    ]
    assert got["Issued"].startswith("issued credential api (ServiceAccountToken")
    assert "; issued credential db (StaticSecret" in got["Issued"]
    assert outcome.credentials is not None
    assert [s["name"] for s in outcome.credentials.statuses] == ["api", "db"]


async def test_event_messages_carry_no_secret_value() -> None:
    rec, api, _, events = make_reconciler()
    await rec.reconcile(body())
    await events.drain()
    stored = api.objects[("Secret", NAMESPACE, f"{NAME}.db")]["data"]["current"]
    static = base64.b64decode(stored).decode()
    assert api.events
    for event in api.events:
        assert TOKEN not in str(event)
        assert static not in str(event)


async def test_a_second_pass_makes_no_request() -> None:
    """The watch events of the reconciler's own writes bring the identity back: no work."""
    rec, api, _, events = make_reconciler()
    first = body()
    await rec.reconcile(first)
    await events.drain()
    assert api.status is not None
    again = {**first, "status": api.status}
    api.calls.clear()
    outcome = await rec.reconcile(again)
    await events.drain()
    assert outcome.ready
    assert api.calls == []


async def test_one_failed_child_fails_the_reconcile_but_keeps_the_others() -> None:
    rec, api, view, events = make_reconciler()
    api.fail["Role"] = Forbidden(403, "Forbidden", "roles is forbidden", kind="Role")
    with pytest.raises(ApiError):
        await rec.reconcile(body())
    await events.drain()
    # The other children were written and are known to the caches.
    assert ChildKey("ServiceAccount", NAMESPACE, NAME) in view.recorded
    assert ChildKey("RoleBinding", NAMESPACE, f"nhi-{NAME}") in view.recorded
    # No credential is issued while the permissions are not in place.
    assert not any("data" in obj for (kind, _, _), obj in api.objects.items() if kind == "Secret")
    assert not any(kind == "ServiceAccount/token" for _, kind, _ in api.requests())
    # The user sees what was done and why the rest failed.
    got = messages(api)
    created = got["Created"].split("; ")
    assert f"created ServiceAccount/{NAME}" in created
    assert f"created Role/nhi-{NAME}" not in created
    assert "roles is forbidden" in got[Reason.API_ERROR]
    patches = [c for c in api.calls if c[:2] == ("patch", "MachineIdentity")]
    assert len(patches) == 1  # status written with the failure


async def test_one_failed_credential_keeps_the_others() -> None:
    rec, api, view, events = make_reconciler()
    api.fail["ServiceAccount/token"] = NotFound(404, "NotFound", "serviceaccounts not found")
    with pytest.raises(ApiError):
        await rec.reconcile(body())
    await events.drain()
    # The static secret was issued, stored and reported although the token failed.
    assert ChildKey("Secret", NAMESPACE, f"{NAME}.db") in view.recorded
    assert "data" in api.objects[("Secret", NAMESPACE, f"{NAME}.db")]
    assert messages(api)["Issued"].startswith("issued credential db (StaticSecret")


async def test_a_credential_the_api_server_refuses_stalls_naming_it() -> None:
    """A refusal (422) would be the same on every retry: Stalled with the credential named,
    not an error retried for ever; the other credential is issued all the same."""
    rec, api, _, events = make_reconciler()
    api.fail["ServiceAccount/token"] = Invalid(
        422, "Invalid", "spec.audiences: Invalid value", kind="ServiceAccount", name=NAME
    )
    outcome = await rec.reconcile(body())
    await events.drain()
    assert outcome.stalled and not outcome.ready
    assert outcome.reason == Reason.INVALID_SPEC
    assert outcome.message.startswith("spec.credentials[0] (api): cannot be issued")
    assert api.status is not None
    stalled = [c for c in api.status["conditions"] if c["type"] == "Stalled"]
    assert stalled[0]["status"] == "True"
    assert "data" in api.objects[("Secret", NAMESPACE, f"{NAME}.db")]


async def test_a_child_the_api_server_refuses_stalls() -> None:
    rec, api, _, events = make_reconciler()
    api.fail["Role"] = Invalid(422, "Invalid", "rules[0].verbs: Required value", kind="Role")
    outcome = await rec.reconcile(body())
    await events.drain()
    assert outcome.stalled and outcome.reason == Reason.INVALID_SPEC
    assert "rules[0].verbs: Required value" in outcome.message


async def test_an_identity_whose_spec_cannot_be_parsed_is_cleaned_up() -> None:
    """Its finalizer must go: deletion removes its objects whatever its spec says."""
    rec, api, view, events = make_reconciler()
    await rec.reconcile(body())
    await events.drain()
    broken = body(revocation={"gracePeriod": "99999999999999h"})
    children = len(view.children_of(NAMESPACE, NAME))
    assert children >= 5
    removed = await rec.cleanup(broken)
    assert len(removed) == children
    assert api.objects == {}  # ServiceAccount, Role, RoleBinding and both Secrets are gone


async def test_events_do_not_hold_up_the_reconcile() -> None:
    rec, api, _, events = make_reconciler()
    api.event_gate = asyncio.Event()
    outcome = await asyncio.wait_for(rec.reconcile(body()), timeout=5)
    assert outcome.ready
    assert api.events == []  # nothing posted yet: the reconcile did not wait for Events
    assert events.pending() >= 2
    api.event_gate.set()
    await events.drain()
    assert {"Created", "Issued"} <= set(messages(api))
    assert events.pending() == 0


async def test_event_posting_is_bounded_and_never_raises() -> None:
    api = FakeApi()
    api.fail["Event"] = ApiError(500, "InternalError", "etcd is down")
    events = EventRecorder(cast(Api, api), concurrency=2)
    api.event_gate = asyncio.Event()
    for i in range(10):
        events.post(make_body(), "Normal", "Created", f"created Thing/{i}")
    await asyncio.sleep(0)
    api.event_gate.set()
    await events.drain()  # the failures were logged, not raised
    assert api.most["events"] == 2
    assert len([c for c in api.calls if c[1] == "Event"]) == 10


async def test_a_batch_posts_one_event_per_reason() -> None:
    api = FakeApi()
    events = EventRecorder(cast(Api, api))
    batch = EventBatch(events, make_body())
    batch.normal("Created", "created ServiceAccount/a")
    batch.normal("Created", "created Role/b")
    batch.warning("PolicyViolation", "too broad")
    batch.flush()
    batch.flush()  # nothing left to post
    await events.drain()
    assert sorted((e["type"], e["reason"], e["message"]) for e in api.events) == [
        ("Normal", "Created", "created ServiceAccount/a; created Role/b"),
        ("Warning", "PolicyViolation", "too broad"),
    ]

"""The MachineIdentity controller's reconcile: its finalizer first, the clean-up before the
identity goes, and the reconciler's outcome turned into the next look."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest

from nhi import IDENTITY_FINALIZER
from nhi.handlers.runtime import WAITING_RECHECK, Runtime
from nhi.k8s.client import Api, Connection, NotFound
from nhi.reconcilers.identity_plan import Outcome
from nhi.runtime.clock import ManualClock
from nhi.runtime.controller import Result
from tests.unit.factories import NAMESPACE, T0, make_body

pytestmark = pytest.mark.unit

KEY = (NAMESPACE, "app")


class FakeApi(Api):
    def __init__(self) -> None:
        super().__init__(Connection("https://127.0.0.1:1", False, {}))
        self.patches: list[list[dict[str, Any]]] = []
        self.current: dict[str, Any] = {}  # what a patch returns
        self.gone = False

    async def patch(self, kind: str, namespace: Any, name: str, body: Any, **kw: Any) -> Any:
        assert (kind, namespace, name) == ("MachineIdentity", *KEY)
        assert kw["content_type"] == "application/json-patch+json"
        if self.gone:
            raise NotFound(404, "NotFound", "")
        self.patches.append(body)
        return self.current


class FakeReconciler:
    def __init__(self) -> None:
        self.reconciled: list[dict[str, Any]] = []
        self.cleaned: list[dict[str, Any]] = []
        self.outcome = Outcome(ready=True, reason="Ready", message="ready")

    async def reconcile(self, body: dict[str, Any]) -> Outcome:
        self.reconciled.append(body)
        return self.outcome

    async def cleanup(self, body: dict[str, Any]) -> list[str]:
        self.cleaned.append(body)
        return ["Role/app"]


@pytest.fixture
def env() -> Iterator[tuple[Runtime, FakeApi, FakeReconciler]]:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        api = FakeApi()
        rt = Runtime(api, clock=ManualClock(T0))
        rec = FakeReconciler()
        rt.identities = rec  # type: ignore[assignment]
        yield rt, api, rec
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def observe(rt: Runtime, rv: int, finalizers: list[str], deleting: bool = False) -> dict[str, Any]:
    body = make_body(name="app")
    meta = body["metadata"]
    meta.update(resourceVersion=str(rv), finalizers=finalizers)
    if deleting:
        meta["deletionTimestamp"] = "2030-01-01T00:00:00Z"
    rt.view.identity_observed(body)
    return body


def run(rt: Runtime) -> Result:
    return asyncio.get_event_loop().run_until_complete(rt.reconcile(KEY))


def test_the_finalizer_comes_first_then_the_reconcile(
    env: tuple[Runtime, FakeApi, FakeReconciler],
) -> None:
    rt, api, rec = env
    body = observe(rt, 1, ["other.io/keep"])
    api.current = dict(body)
    api.current["metadata"] = {
        **body["metadata"],
        "resourceVersion": "2",
        "finalizers": ["other.io/keep", IDENTITY_FINALIZER],
        "managedFields": [{"manager": "nhi-operator"}],
    }
    assert run(rt) == Result()
    assert api.patches == [
        [
            {"op": "test", "path": "/metadata/finalizers", "value": ["other.io/keep"]},
            {"op": "add", "path": "/metadata/finalizers/-", "value": IDENTITY_FINALIZER},
        ]
    ]
    (seen,) = rec.reconciled
    assert seen["metadata"]["finalizers"] == ["other.io/keep", IDENTITY_FINALIZER]
    assert "managedFields" not in seen["metadata"]
    # Until the watch catches up, the store reads the patched identity.
    assert (rt.view.identity_body(KEY) or {})["metadata"]["resourceVersion"] == "2"


def test_a_gone_identity_is_not_reconciled(env: tuple[Runtime, FakeApi, FakeReconciler]) -> None:
    rt, api, rec = env
    assert run(rt) == Result()
    observe(rt, 1, [])
    api.gone = True
    assert run(rt) == Result()
    assert rec.reconciled == []


def test_a_deleted_identity_is_cleaned_up_before_it_goes(
    env: tuple[Runtime, FakeApi, FakeReconciler],
) -> None:
    rt, api, rec = env
    observe(rt, 1, ["other.io/keep", IDENTITY_FINALIZER], deleting=True)
    assert run(rt) == Result()
    assert len(rec.cleaned) == 1 and rec.reconciled == []
    assert api.patches == [
        [
            {"op": "test", "path": "/metadata/finalizers/1", "value": IDENTITY_FINALIZER},
            {"op": "remove", "path": "/metadata/finalizers/1"},
        ]
    ]
    # Being deleted without our finalizer: nothing to do.
    observe(rt, 2, ["other.io/keep"], deleting=True)
    run(rt)
    assert len(rec.cleaned) == 1 and len(api.patches) == 1


@pytest.mark.parametrize(
    ("outcome", "result"),
    [
        (Outcome(ready=True, reason="Ready", message=""), Result()),
        (
            Outcome(
                ready=True,
                reason="Ready",
                message="",
                next_check=T0 + dt.timedelta(minutes=5),
            ),
            Result(requeue_at=T0 + dt.timedelta(minutes=5)),
        ),
        (
            Outcome(ready=False, reason="IssuerNotReady", message=""),
            Result(requeue_after=WAITING_RECHECK),
        ),
        (Outcome(ready=False, reason="InvalidSpec", message="", stalled=True), Result()),
        (Outcome(ready=False, reason="Revoked", message="", settled=True), Result()),
    ],
)
def test_the_outcome_plans_the_next_look(
    env: tuple[Runtime, FakeApi, FakeReconciler], outcome: Outcome, result: Result
) -> None:
    rt, _, rec = env
    observe(rt, 1, [IDENTITY_FINALIZER])
    rec.outcome = outcome
    assert run(rt) == result


def _informed(rt: Runtime) -> set[tuple[str, str | None, str | None]]:
    """What the runtime would watch: (kind, label selector, field selector) of each informer."""
    rt.view.watch(rt.caches)
    if rt.discovery is not None:
        rt.discovery.watch(rt.caches)
        return {
            (i.kind, i.label_selector, i.field_selector)
            for i in [*rt.caches.informers, *rt.discovery.caches.informers]
        }
    return {(i.kind, i.label_selector, i.field_selector) for i in rt.caches.informers}


def test_discovery_is_off_by_default_and_then_watches_nothing_more(
    env: tuple[Runtime, FakeApi, FakeReconciler],
) -> None:
    from nhi.settings import Settings, current, set_current

    rt, api, _ = env
    assert current().discovery is False and rt.discovery is None
    before = _informed(rt)
    assert not any(f for _, _, f in before)  # no Secret listed by type, no report watched
    saved = current()
    set_current(Settings(discovery=True))
    try:
        on = Runtime(api, clock=ManualClock(T0))
        assert on.discovery is not None
        added = _informed(on) - before
        assert ("Secret", None, "type=kubernetes.io/service-account-token") in added
        assert ("Secret", None, "type=kubernetes.io/tls") in added
    finally:
        set_current(saved)

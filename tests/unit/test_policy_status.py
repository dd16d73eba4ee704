"""The IdentityPolicy status controller: driven by the policies, the identities and the
namespaces' labels; a status is written only when it changed, and a refusal is retried."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from nhi.handlers.identity_cache import IdentityCache
from nhi.handlers.policy_status import PolicyStatus
from nhi.k8s.client import ApiError
from nhi.runtime.caches import WatchCaches
from nhi.runtime.clock import ManualClock
from nhi.runtime.controller import Controller, Result
from nhi.runtime.informer import Key
from nhi.runtime.overlay import WriteOverlay
from tests.unit.factories import NAMESPACE, T0, credential, make_body

pytestmark = pytest.mark.unit

INTERVAL = 5.0
POLICY = ("", "baseline")


class Api:
    def __init__(self) -> None:
        self.patches: list[tuple[str, dict[str, Any]]] = []
        self.refuse = False

    async def patch(self, kind: str, ns: Any, name: str, body: Any, **kw: Any) -> Any:
        assert (kind, kw.get("subresource")) == ("IdentityPolicy", "status")
        if self.refuse:
            raise ApiError(500, "InternalError", "etcd is away")
        self.patches.append((name, body))
        return {}


class Env:
    def __init__(self) -> None:
        self.api = Api()
        self.clock = ManualClock(T0)
        self.caches = WatchCaches(self.api, self.clock)  # type: ignore[arg-type]
        issuers = SimpleNamespace(watches_secret=lambda ns, name: False, unused=lambda ns: None)

        async def nothing(key: Key) -> Result:
            return Result()

        self.cache = IdentityCache(
            Controller("MachineIdentity", nothing, clock=self.clock),
            issuers,  # type: ignore[arg-type]
            WriteOverlay(self.clock.monotonic),
            self.caches.synced,
        )
        self.status = PolicyStatus(
            self.api,  # type: ignore[arg-type]
            self.cache,
            self.clock,
            INTERVAL,
            self.caches.synced,
        )
        self.cache.watch(self.caches)
        self.status.watch(self.caches)
        self.rv = 0

    def event(self, kind: str, obj: dict[str, Any], type: str = "ADDED") -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        (informer,) = self.caches.of(kind)
        informer.apply({"type": type, "object": obj})

    def policy(self, status: dict[str, Any] | None = None, type: str = "ADDED") -> None:
        body: dict[str, Any] = {
            "metadata": {"name": "baseline", "generation": 1},
            "spec": {
                "namespaceSelector": {"matchLabels": {"team": "a"}},
                "maxTTL": {"ServiceAccountToken": "1h"},
            },
        }
        if status is not None:
            body["status"] = status
        self.event("IdentityPolicy", body, type)

    def identity(self, name: str, ttl: str = "1h") -> None:
        self.event("MachineIdentity", make_body(name=name, credentials=[credential(ttl=ttl)]))

    def label(self, **labels: str) -> None:
        self.event("Namespace", {"metadata": {"name": NAMESPACE, "labels": labels}})

    @property
    def queue(self) -> Any:
        return self.status.controller.queue

    def due_in(self) -> float:
        return float(self.queue._due[POLICY] - self.clock.monotonic())


@pytest.fixture
async def env() -> Env:
    return Env()


async def test_a_policy_change_runs_at_once_other_changes_within_the_interval(
    env: Env,
) -> None:
    env.policy()
    assert env.queue._queued == {POLICY}
    env.clock.advance(1)
    env.identity("a")
    assert env.due_in() == INTERVAL
    env.clock.advance(1)
    env.identity("b")
    env.label(team="a")
    assert env.due_in() == INTERVAL - 1  # the first change's run counts them all


async def test_no_policy_no_work(env: Env) -> None:
    env.identity("a")
    env.label(team="a")
    assert env.queue.scheduled() == 0 and not env.queue._queued


async def test_the_status_is_written_when_it_changed(env: Env) -> None:
    env.label(team="a")
    env.identity("ok")
    env.identity("too-long", ttl="2h")
    env.policy()
    assert await env.status.reconcile(POLICY) == Result()
    [(name, patch)] = env.api.patches
    assert name == "baseline"
    assert (patch["status"]["identitiesCovered"], patch["status"]["identitiesViolating"]) == (2, 1)
    env.policy(status=patch["status"], type="MODIFIED")  # the watch shows our write
    await env.status.reconcile(POLICY)
    assert len(env.api.patches) == 1
    env.label(team="b")  # the namespace leaves the selector
    await env.status.reconcile(POLICY)
    assert env.api.patches[-1][1]["status"]["identitiesCovered"] == 0


async def test_identities_are_parsed_again_only_after_one_changed(env: Env) -> None:
    calls: list[int] = []
    identities = env.status.writer.identities

    def counted(bodies: Any) -> Any:
        calls.append(len(bodies))
        return identities(bodies)

    env.status.writer.identities = counted  # type: ignore[method-assign]
    env.identity("a")
    env.policy()
    await env.status.reconcile(POLICY)
    await env.status.reconcile(POLICY)
    assert calls == [1]
    env.identity("b")
    await env.status.reconcile(POLICY)
    assert calls == [1, 2]


async def test_a_refused_write_is_tried_again(env: Env) -> None:
    env.policy()
    env.api.refuse = True
    assert await env.status.reconcile(POLICY) == Result(requeue_after=INTERVAL)
    env.api.refuse = False
    assert await env.status.reconcile(POLICY) == Result()
    assert len(env.api.patches) == 1


async def test_the_last_policy_gone_forgets_the_parsed_identities(env: Env) -> None:
    env.identity("a")
    env.policy()
    await env.status.reconcile(POLICY)
    assert env.status.writer._parsed
    env.policy(type="DELETED")
    await env.status.reconcile(POLICY)
    assert not env.status.writer._parsed


async def test_nothing_is_written_before_the_caches_are_ready(env: Env) -> None:
    env.policy()
    env.status.controller.start()
    try:
        await asyncio.sleep(0.02)
        assert env.api.patches == []
        env.caches.synced.set()
        await asyncio.wait_for(env.queue.wait_idle(), 2.0)
        assert len(env.api.patches) == 1
    finally:
        await env.status.controller.stop()

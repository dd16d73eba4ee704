"""The peering gate: kopf's rule for which replica is active, read from its peering objects."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator

import pytest

from nhi.k8s.client import Api, Connection
from nhi.runtime.peering import PeeringGate, blockers, own_identity

pytestmark = pytest.mark.unit

NOW = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)


def peer(priority: int, seen_ago: float, lifetime: int = 60) -> dict[str, object]:
    seen = NOW - dt.timedelta(seconds=seen_ago)
    return {"priority": priority, "lifetime": lifetime, "lastseen": seen.isoformat()}


def test_only_live_peers_with_a_priority_as_high_block() -> None:
    status = {
        "me": peer(10, 0),
        "higher": peer(20, 5),
        "tie": peer(10, 5),
        "lower": peer(5, 5),
        "dead-higher": peer(99, 61),
        "naive-time": {"priority": 50, "lifetime": 60, "lastseen": "2030-01-01T11:59:30"},
        "garbage": {"priority": "x", "lastseen": NOW.isoformat()},
        "no-time": {"priority": 50},
    }
    assert blockers(status, "me", 10, NOW) == ["higher", "naive-time", "tie"]
    assert blockers(status, "me", 60, NOW) == []
    assert blockers({}, "me", 0, NOW) == []


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        yield loop
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def gate(enabled: bool, namespaces: tuple[str, ...] = ()) -> PeeringGate:
    resumed: list[int] = []
    g = PeeringGate(
        Api(Connection("https://127.0.0.1:1", False, {})),
        enabled=enabled,
        name="nhi",
        namespaces=namespaces,
        identity="me",
        priority=10,
        on_active=lambda: resumed.append(1),
        clock=lambda: NOW,
    )
    g.resumed = resumed  # type: ignore[attr-defined]
    return g


def test_without_peering_the_gate_is_open(loop: asyncio.AbstractEventLoop) -> None:
    g = gate(False)
    g.start()
    assert g.active.is_set() and g.informers == []


def test_the_gate_follows_the_peering_object(loop: asyncio.AbstractEventLoop) -> None:
    g = gate(True)
    (informer,) = g.informers
    assert informer.kind == "ClusterKopfPeering"
    g.evaluate()
    assert not g.active.is_set()  # not listed yet: closed
    informer.synced.set()
    # Another operator's peering object is not ours to read.
    assert g._status({"metadata": {"name": "other"}, "status": {"x": peer(99, 0)}}) is None
    informer.objects[("", "nhi")] = g._status(
        {"metadata": {"name": "nhi"}, "status": {"me": peer(10, 0), "b": peer(20, 1)}}
    )
    g.evaluate()
    assert not g.active.is_set()
    informer.objects[("", "nhi")] = {"me": peer(10, 0), "b": peer(20, 61)}  # b stopped renewing
    g.evaluate()
    assert g.active.is_set() and g.resumed == [1]  # type: ignore[attr-defined]
    g.evaluate()
    assert g.resumed == [1]  # type: ignore[attr-defined]  # once per resumption
    informer.objects[("", "nhi")] = {"me": peer(10, 0), "c": peer(10, 0)}  # a tie pauses
    g.evaluate()
    assert not g.active.is_set()


def test_namespaced_operators_read_a_kopf_peering_per_namespace(
    loop: asyncio.AbstractEventLoop,
) -> None:
    g = gate(True, ("team-a", "team-b"))
    assert [(i.kind, i.namespace) for i in g.informers] == [
        ("KopfPeering", "team-a"),
        ("KopfPeering", "team-b"),
    ]
    for informer in g.informers:
        informer.synced.set()
    g.informers[1].objects[("team-b", "nhi")] = {"b": peer(11, 0)}
    g.evaluate()
    assert not g.active.is_set()  # any namespace's higher peer pauses the replica (as kopf)
    (glob,) = gate(True, ("team-*",)).informers
    assert (glob.kind, glob.namespace, glob.patterns) == ("KopfPeering", None, ("team-*",))


def test_own_identity_is_the_pod_name_in_a_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_ID", "nhi-operator-7d9f-abcde")
    assert own_identity() == "nhi-operator-7d9f-abcde"
    monkeypatch.delenv("POD_ID")
    assert own_identity() != own_identity()  # unique per process start

"""The Controller: watch events become keys, a reconcile's Result plans the next look, and
nothing runs on half-listed caches or on a standby replica."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest

from nhi.runtime.clock import ManualClock
from nhi.runtime.controller import DUE_SLACK, Controller, Result
from nhi.runtime.informer import Informer, Key

pytestmark = pytest.mark.unit

T0 = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)
TIMEOUT = 2.0  # a safety net only


class Reconciler:
    """Records the keys it reconciles and answers with the Result it is told."""

    def __init__(self, result: Result | None = None) -> None:
        self.calls: list[Key] = []
        self.result = result or Result()
        self.fail = 0
        self.ran = asyncio.Event()

    async def __call__(self, key: Key) -> Result:
        self.calls.append(key)
        self.ran.set()
        if self.fail:
            self.fail -= 1
            raise RuntimeError("refused")
        return self.result


@contextlib.asynccontextmanager
async def running(ctl: Controller[Key]) -> AsyncIterator[Controller[Key]]:
    ctl.start()
    try:
        yield ctl
    finally:
        await ctl.stop()


async def settled(ctl: Controller[Key]) -> None:
    await asyncio.wait_for(ctl.queue.wait_idle(), TIMEOUT)


def due_in(ctl: Controller[Key], clock: ManualClock, key: Key) -> float:
    return ctl.queue._due[key] - clock.monotonic()


KEY = ("team-a", "app")


async def test_requeue_at_plans_the_next_look_just_after_the_due_time() -> None:
    clock = ManualClock(T0)
    rec = Reconciler(Result(requeue_at=T0 + dt.timedelta(minutes=20)))
    ctl: Controller[Key] = Controller("Thing", rec, clock=clock)
    async with running(ctl):
        ctl.add(KEY)
        await settled(ctl)
    assert rec.calls == [KEY]
    assert due_in(ctl, clock, KEY) == pytest.approx(1200 + DUE_SLACK)


async def test_a_due_time_already_past_backs_off() -> None:
    clock = ManualClock(T0)
    rec = Reconciler(Result(requeue_at=T0 - dt.timedelta(hours=1)))
    ctl: Controller[Key] = Controller("Thing", rec, clock=clock)
    async with running(ctl):
        ctl.add(KEY)
        await settled(ctl)
    assert due_in(ctl, clock, KEY) == pytest.approx(1.0)  # not at once


async def test_requeue_after_and_nothing_to_plan() -> None:
    clock = ManualClock(T0)
    rec = Reconciler(Result(requeue_after=10.0))
    ctl: Controller[Key] = Controller("Thing", rec, clock=clock)
    async with running(ctl):
        ctl.add(KEY)
        await settled(ctl)
        assert due_in(ctl, clock, KEY) == pytest.approx(10.0)
        rec.result = Result()
        ctl.forget(KEY)
        ctl.add(KEY)
        await settled(ctl)
    assert ctl.queue.scheduled() == 0


async def test_nothing_runs_before_the_caches_are_ready_nor_on_a_standby() -> None:
    ready, active = asyncio.Event(), asyncio.Event()
    rec = Reconciler()
    ctl: Controller[Key] = Controller(
        "Thing", rec, clock=ManualClock(T0), ready=ready, active=active
    )
    async with running(ctl):
        ctl.add(KEY)
        await asyncio.sleep(0.01)
        ready.set()
        await asyncio.sleep(0.01)
        assert rec.calls == []
        active.set()
        await asyncio.wait_for(rec.ran.wait(), TIMEOUT)
    assert rec.calls == [KEY]


async def test_a_failure_is_reported_and_retried() -> None:
    errors: list[Key] = []
    rec = Reconciler()
    rec.fail = 1
    clock = ManualClock(T0)
    ctl: Controller[Key] = Controller("Thing", rec, clock=clock, on_error=errors.append)
    async with running(ctl):
        ctl.add(KEY)
        await settled(ctl)
    assert errors == [KEY]
    assert due_in(ctl, clock, KEY) == pytest.approx(1.0)


class FakeApi:
    pass


def informer(kind: str) -> Informer:
    return Informer(FakeApi(), kind, on_change=lambda key, old, new: None)  # type: ignore[arg-type]


def event(name: str, rv: int, kind: str = "ADDED") -> dict[str, Any]:
    return {
        "type": kind,
        "object": {"metadata": {"namespace": "ns", "name": name, "resourceVersion": str(rv)}},
    }


async def test_watched_changes_become_keys() -> None:
    rec = Reconciler()
    ctl: Controller[Key] = Controller("Thing", rec, clock=ManualClock(T0))
    things, others = informer("Thing"), informer("Other")
    ctl.watch([things], lambda key, old, new: (key,))
    ctl.watch([others], lambda key, old, new: [("", "all")], delay=30.0)
    things.apply(event("a", 1))
    things.apply(event("a", 2))  # folds into the same run
    others.apply(event("x", 3))
    others.apply(event("y", 4))
    assert ctl.queue._queued == {("ns", "a")}
    assert ctl.queue.scheduled() == 1  # ("", "all"), once, in 30 s

"""The work queue: many events about one identity make one reconcile, never two at once, and
a failing identity neither spins nor holds up the others."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from nhi.runtime.queue import WorkQueue

pytestmark = pytest.mark.unit

Key = str
TIMEOUT = 2.0  # a safety net only: every test finishes in milliseconds


@contextlib.asynccontextmanager
async def running(queue: WorkQueue[Key]) -> AsyncIterator[WorkQueue[Key]]:
    queue.start()
    try:
        yield queue
    finally:
        await queue.stop()


async def idle(queue: WorkQueue[Key]) -> None:
    await asyncio.wait_for(queue.wait_idle(), TIMEOUT)


async def eventually(predicate: Callable[[], bool]) -> None:
    """Poll ``predicate`` (the queue offers no event for every state a test waits for)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.001)


class Recorder:
    """A ``process`` callable that records calls and can block or fail on demand."""

    def __init__(self) -> None:
        self.calls: list[Key] = []
        self.gates: dict[Key, asyncio.Event] = {}
        self.started: dict[Key, asyncio.Event] = defaultdict(asyncio.Event)
        self.fail: Counter[Key] = Counter()  # how many more times each key fails
        self.always_fail: set[Key] = set()

    def block(self, key: Key) -> asyncio.Event:
        self.gates[key] = asyncio.Event()
        return self.gates[key]

    async def __call__(self, key: Key) -> None:
        self.calls.append(key)
        self.started[key].set()
        gate = self.gates.pop(key, None)
        if gate is not None:
            await gate.wait()
        if key in self.always_fail:
            raise RuntimeError(f"{key} is broken")
        if self.fail[key] > 0:
            self.fail[key] -= 1
            raise RuntimeError(f"{key} failed")


def spy_backoff(queue: WorkQueue[Key], scale: float = 1e-3) -> list[float]:
    """Record the retry delays the queue asks for; run them ``scale`` times as fast."""
    delays: list[float] = []
    add_after: Callable[[Key, float], None] = queue.add_after

    def record(key: Key, delay: float) -> None:
        delays.append(delay)
        add_after(key, delay * scale)

    queue.add_after = record  # type: ignore[method-assign]
    return delays


# --------------------------------------------------------------------------- dedupe


async def test_adds_while_queued_are_deduplicated() -> None:
    rec = Recorder()
    queue: WorkQueue[Key] = WorkQueue(rec, workers=4)
    for key in ["a", "a", "b", "a", "b", "a"]:
        queue.add(key)
    assert queue.pending() == 2
    async with running(queue):
        await idle(queue)
    assert sorted(rec.calls) == ["a", "b"]
    assert queue.pending() == 0


async def test_add_while_processing_runs_exactly_once_more() -> None:
    rec = Recorder()
    release = rec.block("a")
    queue: WorkQueue[Key] = WorkQueue(rec, workers=4)
    async with running(queue):
        queue.add("a")
        await asyncio.wait_for(rec.started["a"].wait(), TIMEOUT)
        for _ in range(5):
            queue.add("a")  # events that arrive while "a" is being reconciled
        await asyncio.sleep(0.01)
        assert rec.calls == ["a"]  # not run again while the first run is in progress
        release.set()
        await idle(queue)
        await asyncio.sleep(0.01)
    assert rec.calls == ["a", "a"]


async def test_a_key_is_never_processed_twice_at_once() -> None:
    active: Counter[Key] = Counter()
    most: Counter[Key] = Counter()
    overall = 0
    calls: Counter[Key] = Counter()

    async def process(key: Key) -> None:
        nonlocal overall
        active[key] += 1
        most[key] = max(most[key], active[key])
        overall = max(overall, sum(active.values()))
        calls[key] += 1
        await asyncio.sleep(0.002)
        active[key] -= 1

    queue: WorkQueue[Key] = WorkQueue(process, workers=8)
    async with running(queue):
        for i in range(60):
            queue.add("ab"[i % 2])
            queue.add("c")
            await asyncio.sleep(0.0005)
        await idle(queue)
    assert set(most) == {"a", "b", "c"}
    assert max(most.values()) == 1
    assert overall >= 2  # different keys do run side by side
    assert all(n < 60 for n in calls.values())  # events collapsed into fewer runs


async def test_different_keys_run_in_parallel() -> None:
    rec = Recorder()
    release = rec.block("slow")
    queue: WorkQueue[Key] = WorkQueue(rec, workers=2)
    async with running(queue):
        queue.add("slow")
        queue.add("fast")
        await eventually(lambda: "fast" in rec.calls and rec.started["slow"].is_set())
        release.set()
        await idle(queue)
    assert sorted(rec.calls) == ["fast", "slow"]


# --------------------------------------------------------------------------- timed work


async def test_add_after_runs_later() -> None:
    rec = Recorder()
    queue: WorkQueue[Key] = WorkQueue(rec)
    loop = asyncio.get_running_loop()
    async with running(queue):
        begin = loop.time()
        queue.add_after("a", 0.02)
        assert queue.scheduled() == 1
        assert queue.pending() == 0
        await asyncio.wait_for(rec.started["a"].wait(), TIMEOUT)
        assert loop.time() - begin >= 0.015
        await idle(queue)
    assert rec.calls == ["a"]
    assert queue.scheduled() == 0


@pytest.mark.parametrize("delays", [(5.0, 0.01), (0.01, 5.0), (5.0, 0.01, 3.0)])
async def test_add_after_keeps_the_earliest_due_time(delays: tuple[float, ...]) -> None:
    rec = Recorder()
    queue: WorkQueue[Key] = WorkQueue(rec)
    async with running(queue):
        for delay in delays:
            queue.add_after("a", delay)
        assert queue.scheduled() == 1
        await asyncio.wait_for(rec.started["a"].wait(), 1.0)
        await idle(queue)
        assert queue.scheduled() == 0  # the later requests were folded into the earlier one
    assert rec.calls == ["a"]


async def test_timed_keys_run_in_due_order() -> None:
    rec = Recorder()
    queue: WorkQueue[Key] = WorkQueue(rec, workers=1)
    async with running(queue):
        queue.add_after("late", 0.03)
        queue.add_after("early", 0.01)
        queue.add_after("middle", 0.02)
        await eventually(lambda: len(rec.calls) == 3)
    assert rec.calls == ["early", "middle", "late"]


@pytest.mark.parametrize("delay", [0.0, -1.0])
async def test_add_after_without_delay_is_immediate(delay: float) -> None:
    rec = Recorder()
    queue: WorkQueue[Key] = WorkQueue(rec)
    queue.add_after("a", delay)
    assert queue.scheduled() == 0
    assert queue.pending() == 1
    async with running(queue):
        await idle(queue)
    assert rec.calls == ["a"]


async def test_forget_cancels_timed_work() -> None:
    rec = Recorder()
    queue: WorkQueue[Key] = WorkQueue(rec)
    async with running(queue):
        queue.add_after("gone", 0.01)
        queue.add_after("kept", 0.01)
        queue.forget("gone")
        assert queue.scheduled() == 1
        await eventually(lambda: "kept" in rec.calls)
        await asyncio.sleep(0.02)
    assert rec.calls == ["kept"]


async def test_timed_work_follows_the_injected_clock() -> None:
    now = [100.0]
    rec = Recorder()
    queue: WorkQueue[Key] = WorkQueue(rec, monotonic=lambda: now[0])
    async with running(queue):
        queue.add_after("a", 0.005)
        await asyncio.sleep(0.03)
        assert rec.calls == []  # the queue's clock stands still: not due yet
        now[0] += 0.005
        await asyncio.wait_for(rec.started["a"].wait(), TIMEOUT)
    assert rec.calls == ["a"]


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    ("failures", "max_backoff", "expected"),
    [
        (1, 300.0, [1.0]),
        (4, 300.0, [1.0, 2.0, 4.0, 8.0]),
        (5, 3.0, [1.0, 2.0, 3.0, 3.0, 3.0]),  # capped
    ],
)
async def test_failures_retry_with_backoff(
    failures: int, max_backoff: float, expected: list[float]
) -> None:
    rec = Recorder()
    rec.fail["a"] = failures
    queue: WorkQueue[Key] = WorkQueue(rec, workers=1, max_backoff=max_backoff)
    delays = spy_backoff(queue)
    async with running(queue):
        queue.add("a")
        await eventually(lambda: len(rec.calls) == failures + 1 and queue.pending() == 0)
        await asyncio.sleep(0.01)
    assert delays == expected
    assert rec.calls == ["a"] * (failures + 1)  # retried until it succeeded, then left alone


async def test_success_resets_the_backoff() -> None:
    rec = Recorder()
    rec.fail["a"] = 2
    queue: WorkQueue[Key] = WorkQueue(rec, workers=1)
    delays = spy_backoff(queue)
    async with running(queue):
        queue.add("a")
        await eventually(lambda: len(rec.calls) == 3 and queue.pending() == 0)
        rec.fail["a"] = 1
        queue.add("a")
        await eventually(lambda: len(rec.calls) == 5 and queue.pending() == 0)
    assert delays == [1.0, 2.0, 1.0]


async def test_forget_resets_the_backoff() -> None:
    rec = Recorder()
    rec.always_fail.add("a")
    queue: WorkQueue[Key] = WorkQueue(rec, workers=1)
    delays = spy_backoff(queue, scale=1e6)  # retries never come due during the test
    async with running(queue):
        queue.add("a")
        await eventually(lambda: len(delays) == 1)
        queue.forget("a")
        assert queue.scheduled() == 0
        queue.add("a")
        await eventually(lambda: len(delays) == 2)
    assert delays == [1.0, 1.0]


async def test_a_failing_key_does_not_block_the_others() -> None:
    rec = Recorder()
    rec.always_fail.add("broken")
    queue: WorkQueue[Key] = WorkQueue(rec, workers=1, max_backoff=0.002)
    async with running(queue):
        queue.add("broken")
        queue.add("healthy")
        await eventually(lambda: rec.calls.count("broken") >= 5)
        queue.add("other")
        await eventually(lambda: "other" in rec.calls)
    assert rec.calls.count("healthy") == 1
    assert rec.calls.count("other") == 1


async def test_a_failure_is_logged_with_the_key(caplog: pytest.LogCaptureFixture) -> None:
    rec = Recorder()
    rec.fail["team-a/payments-api"] = 1
    queue: WorkQueue[Key] = WorkQueue(rec, workers=1)
    spy_backoff(queue)
    with caplog.at_level(logging.WARNING, logger="nhi.workqueue"):
        async with running(queue):
            queue.add("team-a/payments-api")
            await eventually(lambda: len(rec.calls) == 2 and queue.pending() == 0)
    (record,) = [r for r in caplog.records if r.name == "nhi.workqueue"]
    fields: Any = record.__dict__
    assert record.getMessage() == "reconcile failed, retrying"
    assert fields["item"] == "team-a/payments-api"
    assert fields["error"] == "team-a/payments-api failed"
    assert fields["retry_in"] == 1.0


async def test_nothing_runs_a_failed_key_before_its_retry() -> None:
    """The events of a failing run's own writes (and timed looks) wait for its backoff: a
    failure that writes something must not loop at the speed of the watch."""
    now = [100.0]
    rec = Recorder()
    rec.always_fail.add("a")
    retried: list[Key] = []
    queue: WorkQueue[Key] = WorkQueue(
        rec, workers=1, monotonic=lambda: now[0], on_retry=retried.append
    )
    async with running(queue):
        queue.add("a")
        await eventually(lambda: len(rec.calls) == 1 and queue.pending() == 0)
        for _ in range(50):
            queue.add("a")  # its own status write coming back, a child's event...
            queue.add_after("a", 0.0001)  # a timed look planned meanwhile
            await asyncio.sleep(0)
        await asyncio.sleep(0.02)
        assert rec.calls == ["a"]  # still waiting for the 1 s retry
        now[0] += 1.0
        await eventually(lambda: len(rec.calls) == 2)
        await asyncio.sleep(0.02)
        assert rec.calls == ["a", "a"]
    assert retried == ["a", "a"]


async def test_events_during_a_failing_run_wait_for_the_retry() -> None:
    now = [100.0]
    rec = Recorder()
    rec.fail["a"] = 1
    release = rec.block("a")
    queue: WorkQueue[Key] = WorkQueue(rec, workers=1, monotonic=lambda: now[0])
    async with running(queue):
        queue.add("a")
        await asyncio.wait_for(rec.started["a"].wait(), TIMEOUT)
        queue.add("a")  # arrives while it runs (and is about to fail)
        release.set()
        await eventually(lambda: queue.pending() == 0)
        await asyncio.sleep(0.02)
        assert rec.calls == ["a"]
        now[0] += 1.0
        await eventually(lambda: len(rec.calls) == 2)


async def test_a_fresh_add_runs_a_failed_key_at_once() -> None:
    """Someone edited it: their fix is tried now, not after a backoff of minutes."""
    now = [100.0]
    rec = Recorder()
    rec.fail["a"] = 3
    queue: WorkQueue[Key] = WorkQueue(rec, workers=1, monotonic=lambda: now[0])
    delays = spy_backoff(queue, scale=1e6)
    async with running(queue):
        queue.add("a")
        await eventually(lambda: len(delays) == 1)
        queue.add("a", fresh=True)
        await eventually(lambda: len(rec.calls) == 2 and len(delays) == 2)
    assert delays == [1.0, 1.0]  # the edit reset the backoff


async def test_an_edit_while_a_failing_run_runs_is_tried_right_after() -> None:
    now = [100.0]
    rec = Recorder()
    rec.fail["a"] = 1
    release = rec.block("a")
    queue: WorkQueue[Key] = WorkQueue(rec, workers=1, monotonic=lambda: now[0])
    async with running(queue):
        queue.add("a")
        await asyncio.wait_for(rec.started["a"].wait(), TIMEOUT)
        queue.add("a", fresh=True)  # the user fixed the spec while the old one failed
        release.set()
        await eventually(lambda: len(rec.calls) == 2 and queue.pending() == 0)


async def test_a_next_look_planned_in_the_past_backs_off() -> None:
    """A reconcile that plans its next look for a time already past (a renewal time before
    its issuance) does not run again at once: 1 s, 2 s, 4 s... until it plans a future time."""
    rec = Recorder()
    queue: WorkQueue[Key] = WorkQueue(rec, workers=1)
    delays = spy_backoff(queue, scale=1e6)
    queue.schedule_next("a", -5.0)
    queue.schedule_next("a", 0.0)
    queue.schedule_next("a", -0.1)
    queue.schedule_next("a", 30.0)
    queue.schedule_next("a", -1.0)
    assert delays == [1.0, 2.0, 4.0, 30.0, 1.0]


# --------------------------------------------------------------------------- idle, stop


async def test_wait_idle_on_an_empty_queue_returns_at_once() -> None:
    queue: WorkQueue[Key] = WorkQueue(Recorder())
    await asyncio.wait_for(queue.wait_idle(), 0.1)


async def test_wait_idle_waits_for_running_work() -> None:
    rec = Recorder()
    release = rec.block("a")
    queue: WorkQueue[Key] = WorkQueue(rec)
    async with running(queue):
        queue.add("a")
        queue.add("b")
        await asyncio.wait_for(rec.started["a"].wait(), TIMEOUT)
        waiter = asyncio.ensure_future(queue.wait_idle())
        await asyncio.sleep(0.01)
        assert not waiter.done()
        assert queue.pending() == 1
        release.set()
        await asyncio.wait_for(waiter, TIMEOUT)
        assert queue.pending() == 0
    assert sorted(rec.calls) == ["a", "b"]


async def test_wait_idle_does_not_wait_for_timed_work() -> None:
    queue: WorkQueue[Key] = WorkQueue(Recorder())
    async with running(queue):
        queue.add_after("renewal", 3600)
        await asyncio.wait_for(queue.wait_idle(), 0.1)
        assert queue.scheduled() == 1


async def test_stop_cancels_work_in_progress() -> None:
    rec = Recorder()
    rec.block("a")
    queue: WorkQueue[Key] = WorkQueue(rec, workers=2)
    queue.start()
    queue.start()  # idempotent: still one set of workers
    queue.add("a")
    await asyncio.wait_for(rec.started["a"].wait(), TIMEOUT)
    await asyncio.wait_for(queue.stop(), TIMEOUT)
    queue.add("b")
    await asyncio.sleep(0.01)
    assert rec.calls == ["a"]

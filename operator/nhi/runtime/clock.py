"""The one clock of a running operator, injected into everything that reads time.

Two readings: :meth:`Clock.now` (UTC wall time, for due times, timestamps and expiry
decisions) and :meth:`Clock.monotonic` (seconds, for delays and ages, which a wall-clock
step must not stretch or shorten). Tests give a :class:`ManualClock` and walk it forward
instead of sleeping.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> dt.datetime: ...

    def monotonic(self) -> float: ...


class SystemClock:
    """The machine's clocks."""

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that stands still until :meth:`advance` moves both readings together."""

    def __init__(self, start: dt.datetime, monotonic: float = 1000.0) -> None:
        self._now = start
        self._monotonic = monotonic

    def now(self) -> dt.datetime:
        return self._now

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, seconds: float) -> None:
        self._now += dt.timedelta(seconds=seconds)
        self._monotonic += seconds

"""One asyncio lock per key, made on first use: the one per-key lock helper."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class KeyedLocks(Generic[K]):
    def __init__(self) -> None:
        self._locks: dict[K, asyncio.Lock] = {}

    def __call__(self, key: K) -> asyncio.Lock:
        """The lock of ``key`` (the same one every time until it is forgotten)."""
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    def forget(self, key: K) -> None:
        self._locks.pop(key, None)

    def __len__(self) -> int:
        return len(self._locks)

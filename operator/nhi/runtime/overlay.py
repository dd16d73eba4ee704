"""What the operator keeps in memory about the objects it manages.

Watch caches lag behind the operator's own writes by a few milliseconds. A reconcile that
runs in that gap must not mistake "not yet seen" for "missing", or it would issue a
credential twice. So every write the operator makes is remembered here until the watch
catches up with it (an object with the same or a newer resourceVersion arrives).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

#: After this long an entry is dropped even if the watch never showed it (e.g. someone else
#: changed the object meanwhile): the watch cache is then the truth again.
MAX_AGE = 60.0

# Fields of a child worth keeping; a Secret's data is never kept, only its metadata.
KEEP = ("rules", "roleRef", "subjects", "automountServiceAccountToken", "type")
META = ("name", "namespace", "uid", "resourceVersion", "labels", "annotations", "ownerReferences")

ChildId = tuple[str, str, str]  # kind, namespace, name


def slim(kind: str, body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body.get("metadata") or {}
    out: dict[str, Any] = {"kind": kind, "metadata": {k: meta[k] for k in META if k in meta}}
    for f in KEEP:
        if f in body:
            out[f] = body[f]
    return out


def _rv(obj: Mapping[str, Any] | None) -> int:
    try:
        return int(((obj or {}).get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


class WriteOverlay:
    """The operator's own recent writes, until the watch cache has caught up with them."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._objects: dict[ChildId, dict[str, Any] | None] = {}  # None: deleted by us
        self._when: dict[ChildId, float] = {}

    def written(self, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        key = (str(obj.get("kind")), str(meta.get("namespace", "")), str(meta.get("name")))
        self._objects[key] = slim(str(obj.get("kind")), obj)
        self._when[key] = self._monotonic()

    def deleted(self, kind: str, namespace: str, name: str) -> None:
        key = (kind, namespace, name)
        self._objects[key] = None
        self._when[key] = self._monotonic()

    def _drop(self, key: ChildId) -> None:
        self._objects.pop(key, None)
        self._when.pop(key, None)

    def seen(self, kind: str, body: Mapping[str, Any], deleted: bool) -> None:
        """The watch delivered ``body``: forget our write once the watch has caught up."""
        meta = body.get("metadata") or {}
        key = (kind, str(meta.get("namespace", "")), str(meta.get("name")))
        if key not in self._objects:
            return
        mine = self._objects[key]
        if mine is None:
            if deleted:
                self._drop(key)
            return
        mine_uid = (mine.get("metadata") or {}).get("uid")
        if mine_uid and meta.get("uid") and meta.get("uid") != mine_uid:
            # An older incarnation of the name (e.g. its deletion arriving late): not ours.
            return
        if deleted or _rv(body) >= _rv(mine):
            self._drop(key)

    def __len__(self) -> int:
        return len(self._objects)

    def resolve(
        self, key: ChildId, cached: dict[str, Any] | None
    ) -> tuple[bool, dict[str, Any] | None]:
        """(found in overlay, object to use). Drops entries the cache has caught up with."""
        if key not in self._objects:
            return False, cached
        if self._monotonic() - self._when.get(key, 0.0) > MAX_AGE:
            self._drop(key)
            return False, cached
        mine = self._objects[key]
        if mine is None:
            if cached is None:
                self._drop(key)
            return True, None
        if cached is not None and _rv(cached) >= _rv(mine):
            self._drop(key)
            return True, cached
        return True, mine

    def keys_for(self, namespace: str, identity: str, label: str, ns_label: str) -> list[ChildId]:
        out = []
        for key, obj in self._objects.items():
            labels = ((obj or {}).get("metadata") or {}).get("labels") or {}
            if obj is None or labels.get(label) != identity:
                continue
            if (labels.get(ns_label) or key[1]) == namespace:
                out.append(key)
        return out

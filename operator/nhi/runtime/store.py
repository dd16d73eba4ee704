"""The stores a controller reads instead of the API server, filled by its watch caches.

- :class:`ObjectStore`: the objects a controller reconciles, as compact JSON (a parsed body
  takes 3-5 times the memory of its text, and reading one back costs microseconds), without
  managedFields, corrected by the controller's own writes until the watch catches up, and
  knowing which watch events are only the echo of those writes.
- :class:`OwnerIndex`: the objects a controller made, by the object that owns them, also as
  compact JSON and corrected by the :class:`~nhi.runtime.overlay.WriteOverlay`.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Mapping
from typing import Any, Generic, Protocol, TypeVar

from nhi.runtime.informer import Key, OnChange
from nhi.runtime.overlay import WriteOverlay


def pack(obj: Mapping[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))


def unpack(text: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(text)
    return value


def without_managed_fields(body: Mapping[str, Any]) -> dict[str, Any]:
    """The object without managedFields (the largest part nobody here reads)."""
    out = dict(body)
    meta = dict(out.get("metadata") or {})
    meta.pop("managedFields", None)
    out["metadata"] = meta
    return out


def resource_version(obj: Mapping[str, Any]) -> int:
    """The resourceVersion as a number (0 when missing or not a number)."""
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def inputs(body: Mapping[str, Any]) -> tuple[Any, ...]:
    """What of an object a reconcile acts on, besides its status."""
    meta = body.get("metadata") or {}
    return (
        meta.get("uid"),
        meta.get("generation"),
        meta.get("labels"),
        meta.get("annotations"),
        meta.get("deletionTimestamp"),
        meta.get("finalizers"),
    )


def keep_in(into: dict[Key, Any]) -> OnChange:
    """A watch-cache consumer that keeps each value in ``into`` (None: drops it)."""

    def changed(key: Key, old: Any, new: Any) -> None:
        if new is None:
            into.pop(key, None)
        else:
            into[key] = new

    return changed


class Seen(enum.Enum):
    """What a watch event of a reconciled object asks for."""

    #: The controller's own write coming back (or an older state): that reconcile saw it all.
    ECHO = "echo"
    #: Something changed: reconcile (after the retry, if the last run failed).
    CHANGED = "changed"
    #: What a reconcile acts on changed (someone edited it): reconcile at once.
    EDITED = "edited"


class ObjectStore:
    """The objects of one kind a controller reconciles, by (namespace, name)."""

    def __init__(self) -> None:
        #: As delivered by the watch, managedFields dropped, packed.
        self._texts: dict[Key, str] = {}
        #: As last written by the controller (status patches), until the watch catches up.
        self._mine: dict[Key, dict[str, Any]] = {}
        #: resourceVersion of a write whose reconcile saw everything that write returned
        #: (same inputs): its watch event, and older ones, need no reconcile.
        self._echoes: dict[Key, int] = {}
        #: Counts the changes the watch delivered: equal counts, same objects.
        self.version = 0

    def __len__(self) -> int:
        return len(self._texts)

    def __contains__(self, key: Key) -> bool:
        return key in self._texts

    def observed(self, key: Key, text: str, body: Mapping[str, Any]) -> Seen:
        """The watch delivered ``body`` (packed: ``text``); keep it."""
        self.version += 1
        before = self._texts.get(key)
        self._texts[key] = text
        edited = before is not None and inputs(unpack(before)) != inputs(body)
        echo = self._echoes.get(key)
        if echo is not None:
            if resource_version(body) <= echo:
                if resource_version(body) == echo:
                    del self._echoes[key]
                return Seen.ECHO
            del self._echoes[key]
        return Seen.EDITED if edited else Seen.CHANGED

    def gone(self, key: Key) -> None:
        self.version += 1
        self._texts.pop(key, None)
        self._mine.pop(key, None)
        self._echoes.pop(key, None)

    def written(self, obj: Mapping[str, Any]) -> None:
        """The controller wrote ``obj``: read it instead of an older watch state."""
        meta = obj.get("metadata") or {}
        key = (str(meta.get("namespace", "")), str(meta.get("name")))
        self._mine[key] = without_managed_fields(obj)

    def reconciled(self, key: Key, body: Mapping[str, Any]) -> None:
        """A reconcile of ``body`` ended: the echo of its last write needs no other one."""
        mine = self._mine.get(key)
        if mine is not None and inputs(mine) == inputs(body):
            self._echoes[key] = resource_version(mine)

    def get(self, key: Key) -> dict[str, Any] | None:
        """The object (parsed anew: the caller may keep or change it); None when gone."""
        text = self._texts.get(key)
        cached = unpack(text) if text is not None else None
        mine = self._mine.get(key)
        if mine is None:
            return cached
        if cached is None or resource_version(cached) >= resource_version(mine):
            # The watch has caught up with our write (or the object is gone).
            self._mine.pop(key, None)
            return cached
        return mine

    def keys(self) -> list[Key]:
        return list(self._texts)

    def texts(self) -> list[tuple[Key, str]]:
        """Every object's packed text as the watch delivered it (cheap to search)."""
        return list(self._texts.items())

    def bodies(self) -> list[dict[str, Any]]:
        """Every object as the watch delivered it (parsed anew)."""
        return [unpack(text) for text in list(self._texts.values())]


class ObjectRef(Protocol):
    @property
    def kind(self) -> str: ...

    @property
    def namespace(self) -> str: ...

    @property
    def name(self) -> str: ...


R = TypeVar("R", bound=ObjectRef)


class OwnerIndex(Generic[R]):
    """Objects by the object that owns them, each as packed JSON, keyed by ``ref``."""

    def __init__(
        self,
        overlay: WriteOverlay,
        owner: Callable[[Mapping[str, Any]], Key],
        ref: Callable[[str, str, str], R],
        owner_labels: tuple[str, str],
    ) -> None:
        self.overlay = overlay
        self._owner = owner
        self._ref = ref
        #: The labels naming an owner and its namespace (how the overlay finds our writes).
        self._labels = owner_labels
        self._owned: dict[Key, dict[R, str]] = {}

    def changed(
        self, kind: str, key: Key, old: str | None, new: str | None
    ) -> tuple[Key | None, Key | None]:
        """The watch changed an object (packed, None: absent): the owners before and after."""
        ref = self._ref(kind, key[0], key[1])
        before = unpack(old) if old is not None else None
        after = unpack(new) if new is not None else None
        owner_before = self._owner(before) if before is not None else None
        owner_after = self._owner(after) if after is not None else None
        if owner_before is not None:
            bucket = self._owned.get(owner_before)
            if bucket is not None:
                bucket.pop(ref, None)
                if not bucket:
                    del self._owned[owner_before]
        if owner_after is not None and new is not None:
            self._owned.setdefault(owner_after, {})[ref] = new
        if len(self.overlay):
            self.overlay.seen(kind, after or before or {}, deleted=after is None)
        return owner_before, owner_after

    def of(self, namespace: str, name: str) -> dict[R, dict[str, Any]]:
        """The owner's objects: the watch caches, corrected by our own recent writes."""
        cached = {k: unpack(v) for k, v in (self._owned.get((namespace, name)) or {}).items()}
        if not len(self.overlay):
            return cached
        keys = set(cached) | {
            self._ref(*k) for k in self.overlay.keys_for(namespace, name, *self._labels)
        }
        out: dict[R, dict[str, Any]] = {}
        for key in keys:
            _, obj = self.overlay.resolve((key.kind, key.namespace, key.name), cached.get(key))
            if obj is not None:
                out[key] = obj
        return out

"""The stores a controller reads: its objects corrected by its own writes, the echoes of
those writes told apart from anyone else's change, and its children found by their owner."""

from __future__ import annotations

from typing import Any

import pytest

from nhi.builders.rbac import ChildKey
from nhi.runtime.overlay import WriteOverlay
from nhi.runtime.store import ObjectStore, OwnerIndex, Seen, pack, unpack

pytestmark = pytest.mark.unit

KEY = ("team-a", "app")


def obj(rv: int, generation: int = 1, **meta: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": KEY[0],
            "name": KEY[1],
            "uid": "u1",
            "generation": generation,
            "resourceVersion": str(rv),
            "managedFields": [{"manager": "kubectl"}],
            **meta,
        },
        "spec": {"x": generation},
    }


def see(store: ObjectStore, body: dict[str, Any]) -> Seen:
    return store.observed(KEY, pack(body), body)


def test_an_edit_is_told_from_any_other_change() -> None:
    store = ObjectStore()
    assert see(store, obj(1)) is Seen.CHANGED  # new
    assert see(store, obj(2)) is Seen.CHANGED  # its status, say
    assert see(store, obj(3, generation=2)) is Seen.EDITED
    assert see(store, obj(4, generation=2, labels={"a": "b"})) is Seen.EDITED
    assert store.version == 4


def test_our_write_is_read_until_the_watch_catches_up() -> None:
    store = ObjectStore()
    see(store, obj(1))
    store.written(obj(5, status={"ready": True}))
    mine = store.get(KEY) or {}
    assert mine["metadata"]["resourceVersion"] == "5"
    assert "managedFields" not in mine["metadata"]
    see(store, obj(5))
    assert (store.get(KEY) or {})["metadata"]["resourceVersion"] == "5"
    assert store._mine == {}


def test_the_echo_of_a_reconciled_write_needs_no_reconcile() -> None:
    store = ObjectStore()
    see(store, obj(1))
    store.written(obj(3))
    store.reconciled(KEY, obj(1))  # same inputs as what it wrote
    assert see(store, obj(2)) is Seen.ECHO  # older than our write
    assert see(store, obj(3)) is Seen.ECHO
    assert see(store, obj(4)) is Seen.CHANGED


def test_a_write_that_changed_the_inputs_is_not_an_echo() -> None:
    store = ObjectStore()
    see(store, obj(1))
    store.written(obj(3, finalizers=["nhi.dev/cleanup"]))
    store.reconciled(KEY, obj(1))
    assert see(store, obj(3, finalizers=["nhi.dev/cleanup"])) is Seen.EDITED


def test_a_gone_object_is_forgotten() -> None:
    store = ObjectStore()
    see(store, obj(1))
    store.written(obj(2))
    store.gone(KEY)
    assert store.get(KEY) is None and KEY not in store and len(store) == 0


def child(name: str, rv: int, owner: str) -> dict[str, Any]:
    return {
        "kind": "Role",
        "metadata": {
            "namespace": "team-a",
            "name": name,
            "resourceVersion": str(rv),
            "labels": {"owner": owner},
        },
    }


def by_label(o: Any) -> tuple[str, str]:
    meta = o.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str((meta.get("labels") or {}).get("owner") or ""))


def test_children_are_found_by_their_owner_and_move_with_it() -> None:
    overlay = WriteOverlay()
    index: OwnerIndex[ChildKey] = OwnerIndex(overlay, by_label, ChildKey, ("owner", "owner-ns"))
    ref = ChildKey("Role", "team-a", "r")
    first = pack(child("r", 1, "app"))
    assert index.changed("Role", ("team-a", "r"), None, first) == (None, ("team-a", "app"))
    assert index.of("team-a", "app") == {ref: unpack(first)}
    moved = pack(child("r", 2, "other"))
    owners = index.changed("Role", ("team-a", "r"), first, moved)
    assert owners == (("team-a", "app"), ("team-a", "other"))
    assert index.of("team-a", "app") == {}
    assert index.changed("Role", ("team-a", "r"), moved, None) == (("team-a", "other"), None)
    assert index._owned == {}


def test_children_read_through_our_own_writes() -> None:
    overlay = WriteOverlay()
    index: OwnerIndex[ChildKey] = OwnerIndex(overlay, by_label, ChildKey, ("owner", "owner-ns"))
    index.changed("Role", ("team-a", "old"), None, pack(child("old", 1, "app")))
    overlay.written(child("new", 5, "app"))
    overlay.deleted("Role", "team-a", "old")
    assert list(index.of("team-a", "app")) == [ChildKey("Role", "team-a", "new")]
    # The watch catches up: the overlay forgets, the index knows.
    index.changed("Role", ("team-a", "new"), None, pack(child("new", 5, "app")))
    index.changed("Role", ("team-a", "old"), pack(child("old", 1, "app")), None)
    assert len(overlay) == 0
    assert list(index.of("team-a", "app")) == [ChildKey("Role", "team-a", "new")]

"""WriteOverlay: the operator's own writes hide a watch cache that has not caught up yet, so a
reconcile in that gap neither issues a credential twice nor re-creates what it just deleted."""

from __future__ import annotations

from typing import Any

import pytest

from nhi.runtime import overlay as cache
from nhi.runtime.overlay import MAX_AGE, WriteOverlay

pytestmark = pytest.mark.unit

NS = "team-a"
KEY = ("Secret", NS, "payments-api-tok")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def secret(
    rv: int | str, uid: str = "uid-1", name: str = "payments-api-tok", **meta: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": uid,
            "resourceVersion": str(rv),
            "labels": {"nhi.dev/identity": "payments-api"},
            "annotations": {"nhi.dev/serial": str(rv)},
            **meta,
        },
        "type": "Opaque",
        "data": {"token": "c2VjcmV0"},
    }


def rv_of(resolved: tuple[bool, dict[str, Any] | None]) -> str | None:
    _, obj = resolved
    return None if obj is None else str(obj["metadata"]["resourceVersion"])


def written(rv: int, clock: Clock | None = None, **kwargs: Any) -> WriteOverlay:
    overlay = WriteOverlay(clock.monotonic) if clock is not None else WriteOverlay()
    overlay.written(secret(rv, **kwargs))
    return overlay


def test_nothing_written_passes_the_cache_through() -> None:
    cached = secret(5)
    assert WriteOverlay().resolve(KEY, cached) == (False, cached)
    assert WriteOverlay().resolve(KEY, None) == (False, None)


@pytest.mark.parametrize(
    ("cached_rv", "uses_cache", "entry_kept"),
    [
        (None, False, True),  # created by us, not in the cache yet
        (9, False, True),  # the cache still holds the previous version
        (10, True, False),  # the watch delivered our write
        (11, True, False),  # ...or something newer
    ],
)
def test_write_hides_a_stale_cache(
    cached_rv: int | None, uses_cache: bool, entry_kept: bool
) -> None:
    overlay = written(10)
    cached = None if cached_rv is None else secret(cached_rv)
    found, obj = overlay.resolve(KEY, cached)
    assert found
    if uses_cache:
        assert obj is cached
    else:
        assert obj is not None
        assert obj["metadata"]["resourceVersion"] == "10"
        assert obj["metadata"]["annotations"] == {"nhi.dev/serial": "10"}
    assert (len(overlay) == 1) is entry_kept


def test_write_is_remembered_without_secret_data() -> None:
    overlay = written(10)
    _, obj = overlay.resolve(KEY, None)
    assert obj is not None
    assert "data" not in obj
    assert obj["kind"] == "Secret"
    assert obj["type"] == "Opaque"
    assert obj["metadata"]["labels"] == {"nhi.dev/identity": "payments-api"}


def test_slim_keeps_what_decisions_need() -> None:
    role = {
        "kind": "Role",
        "metadata": {
            "name": "nhi-x",
            "namespace": NS,
            "uid": "u",
            "resourceVersion": "3",
            "ownerReferences": [{"uid": "owner"}],
            "managedFields": [{"manager": "nhi-operator"}],
        },
        "rules": [{"verbs": ["get"]}],
    }
    assert cache.slim("Role", role) == {
        "kind": "Role",
        "metadata": {
            "name": "nhi-x",
            "namespace": NS,
            "uid": "u",
            "resourceVersion": "3",
            "ownerReferences": [{"uid": "owner"}],
        },
        "rules": [{"verbs": ["get"]}],
    }


@pytest.mark.parametrize(
    ("seen_rv", "deleted", "dropped"),
    [
        (9, False, False),  # an older event in flight: keep ours
        (10, False, True),  # the watch caught up
        (12, False, True),
        (9, True, True),  # the object we wrote was deleted since
    ],
)
def test_watch_events_drop_the_write(seen_rv: int, deleted: bool, dropped: bool) -> None:
    overlay = written(10)
    overlay.seen("Secret", secret(seen_rv), deleted=deleted)
    assert (len(overlay) == 0) is dropped
    if not dropped:
        assert rv_of(overlay.resolve(KEY, secret(seen_rv))) == "10"


def test_late_delete_of_an_older_incarnation_keeps_the_write() -> None:
    # We re-created the Secret (new uid); the DELETE of the old one arrives afterwards.
    overlay = written(20, uid="uid-new")
    overlay.seen("Secret", secret(15, uid="uid-old"), deleted=True)
    assert len(overlay) == 1
    found, obj = overlay.resolve(KEY, None)
    assert found
    assert obj is not None
    assert obj["metadata"]["uid"] == "uid-new"


def test_older_incarnation_update_keeps_the_write() -> None:
    overlay = written(20, uid="uid-new")
    overlay.seen("Secret", secret(25, uid="uid-old"), deleted=False)
    assert len(overlay) == 1


def test_events_for_other_objects_are_ignored() -> None:
    overlay = written(10)
    overlay.seen("Secret", secret(99, name="other"), deleted=True)
    overlay.seen("ConfigMap", {"metadata": {"name": KEY[2], "namespace": NS}}, deleted=True)
    assert len(overlay) == 1


# --------------------------------------------------------------------------- tombstones


def test_tombstone_hides_the_stale_cached_object() -> None:
    overlay = WriteOverlay()
    overlay.deleted(*KEY)
    assert overlay.resolve(KEY, secret(10)) == (True, None)
    assert len(overlay) == 1  # the cache still has it: keep hiding


def test_tombstone_is_dropped_once_the_cache_lost_the_object() -> None:
    overlay = WriteOverlay()
    overlay.deleted(*KEY)
    assert overlay.resolve(KEY, None) == (True, None)
    assert len(overlay) == 0


def test_tombstone_is_dropped_by_the_delete_event() -> None:
    overlay = WriteOverlay()
    overlay.deleted(*KEY)
    overlay.seen("Secret", secret(10), deleted=False)  # an update from before the delete
    assert len(overlay) == 1
    overlay.seen("Secret", secret(11), deleted=True)
    assert len(overlay) == 0


def test_a_write_after_a_delete_replaces_the_tombstone() -> None:
    overlay = WriteOverlay()
    overlay.deleted(*KEY)
    overlay.written(secret(30, uid="uid-new"))
    found, obj = overlay.resolve(KEY, None)
    assert found
    assert obj is not None
    assert obj["metadata"]["uid"] == "uid-new"


def test_a_delete_after_a_write_replaces_the_write() -> None:
    overlay = written(10)
    overlay.deleted(*KEY)
    assert overlay.resolve(KEY, secret(10)) == (True, None)


# --------------------------------------------------------------------------- expiry


@pytest.mark.parametrize(
    ("age", "expired"),
    [(0.0, False), (MAX_AGE - 0.5, False), (MAX_AGE, False), (MAX_AGE + 0.5, True)],
)
def test_entries_expire(clock: Clock, age: float, expired: bool) -> None:
    overlay = written(10, clock)
    tombstones = WriteOverlay(clock.monotonic)
    tombstones.deleted(*KEY)
    clock.now += age
    cached = secret(5)  # the watch never caught up (someone else changed the object)
    if expired:
        assert overlay.resolve(KEY, cached) == (False, cached)
        assert tombstones.resolve(KEY, cached) == (False, cached)
        assert len(overlay) == len(tombstones) == 0
    else:
        assert rv_of(overlay.resolve(KEY, cached)) == "10"
        assert tombstones.resolve(KEY, cached) == (True, None)


def test_a_new_write_restarts_the_clock(clock: Clock) -> None:
    overlay = written(10, clock)
    clock.now += MAX_AGE - 1
    overlay.written(secret(11))
    clock.now += MAX_AGE - 1
    assert rv_of(overlay.resolve(KEY, secret(5))) == "11"


def test_resource_versions_compare_as_numbers() -> None:
    overlay = written(10)
    # "9" > "10" as strings; as numbers the cache is still behind.
    assert rv_of(overlay.resolve(KEY, secret("9"))) == "10"


def test_unparseable_resource_version_counts_as_oldest() -> None:
    overlay = written(10)
    assert rv_of(overlay.resolve(KEY, secret("not-a-number"))) == "10"


# --------------------------------------------------------------------------- keys_for


def test_keys_for_finds_an_identitys_writes() -> None:
    overlay = WriteOverlay()
    overlay.written(secret(1, name="payments-api-tok"))
    overlay.written(secret(2, name="other-tok", labels={"nhi.dev/identity": "other"}))
    overlay.written(
        {
            "kind": "ClusterRole",
            "metadata": {
                "name": "nhi:team-a:payments-api",
                "labels": {
                    "nhi.dev/identity": "payments-api",
                    "nhi.dev/identity-namespace": NS,
                },
            },
        }
    )
    overlay.written(
        {
            "kind": "ClusterRole",
            "metadata": {
                "name": "nhi:team-b:payments-api",
                "labels": {
                    "nhi.dev/identity": "payments-api",
                    "nhi.dev/identity-namespace": "team-b",
                },
            },
        }
    )
    overlay.deleted("Role", NS, "nhi-payments-api")
    keys = overlay.keys_for(NS, "payments-api", "nhi.dev/identity", "nhi.dev/identity-namespace")
    assert sorted(keys) == [
        ("ClusterRole", "", "nhi:team-a:payments-api"),
        ("Secret", NS, "payments-api-tok"),
    ]

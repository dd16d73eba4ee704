"""Finalizer patches: one JSON patch each, guarded so a concurrent change of the list is
refused by the API server instead of losing someone else's finalizer."""

from __future__ import annotations

from typing import Any

import pytest

from nhi.runtime import finalizers

pytestmark = pytest.mark.unit

OURS = "nhi.dev/cleanup"


def body(*names: str, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "app", "finalizers": list(names)}
    if deleting:
        meta["deletionTimestamp"] = "2030-01-01T00:00:00Z"
    return {"metadata": meta}


def test_adding_to_no_finalizers_creates_the_list() -> None:
    assert finalizers.add(body(), OURS) == [
        {"op": "add", "path": "/metadata/finalizers", "value": [OURS]}
    ]
    assert finalizers.add({"metadata": {}}, OURS) == finalizers.add(body(), OURS)


def test_adding_beside_others_is_guarded_by_the_list_seen() -> None:
    assert finalizers.add(body("other.io/keep"), OURS) == [
        {"op": "test", "path": "/metadata/finalizers", "value": ["other.io/keep"]},
        {"op": "add", "path": "/metadata/finalizers/-", "value": OURS},
    ]


def test_removing_is_guarded_by_the_position_seen() -> None:
    assert finalizers.remove(body("other.io/keep", OURS), OURS) == [
        {"op": "test", "path": "/metadata/finalizers/1", "value": OURS},
        {"op": "remove", "path": "/metadata/finalizers/1"},
    ]
    with pytest.raises(ValueError):
        finalizers.remove(body("other.io/keep"), OURS)


@pytest.mark.parametrize(
    ("obj", "has", "deleting"),
    [
        (body(), False, False),
        (body(OURS), True, False),
        (body("other.io/keep", deleting=True), False, True),
        ({}, False, False),
    ],
)
def test_reading_a_body(obj: dict[str, Any], has: bool, deleting: bool) -> None:
    assert finalizers.has(obj, OURS) is has
    assert finalizers.deleting(obj) is deleting

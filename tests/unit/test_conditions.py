"""Conditions as a pure function: what ``kubectl wait --for=condition=Ready`` and kstatus read."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pytest

from nhi.models import conditions as cond
from tests.unit.factories import T0

pytestmark = pytest.mark.unit

EARLIER = "2029-12-31T00:00:00Z"
NOW = T0 + dt.timedelta(minutes=5, microseconds=700)
NOW_TEXT = "2030-01-01T12:05:00Z"


def condition(type_: str, status: str, **fields: Any) -> dict[str, Any]:
    base = {
        "type": type_,
        "status": status,
        "reason": "Before",
        "message": "before",
        "observedGeneration": 1,
        "lastTransitionTime": EARLIER,
    }
    base.update(fields)
    return base


@pytest.mark.parametrize(
    ("old_status", "new_status", "transition"),
    [
        ("True", "True", EARLIER),  # same status: the transition time stays
        ("False", "False", EARLIER),
        ("Unknown", "Unknown", EARLIER),
        ("False", "True", NOW_TEXT),  # a change of status is a transition
        ("True", "False", NOW_TEXT),
        ("Unknown", "True", NOW_TEXT),
        (None, "True", NOW_TEXT),  # a new condition starts now
    ],
)
def test_last_transition_time(old_status: str | None, new_status: str, transition: str) -> None:
    old = [] if old_status is None else [condition("Ready", old_status)]
    (ready,) = cond.set_condition(old, "Ready", new_status, "Provisioned", "all set", 4, NOW)
    assert ready == {
        "type": "Ready",
        "status": new_status,
        "reason": "Provisioned",
        "message": "all set",
        "observedGeneration": 4,
        "lastTransitionTime": transition,
    }


def test_same_status_new_reason_keeps_the_transition_but_updates_the_rest() -> None:
    old = [condition("Ready", "False", reason="ApiError", message="timeout")]
    (ready,) = cond.set_condition(old, "Ready", "False", "ServiceAccountConflict", "taken", 9, NOW)
    assert ready["lastTransitionTime"] == EARLIER
    assert (ready["reason"], ready["message"], ready["observedGeneration"]) == (
        "ServiceAccountConflict",
        "taken",
        9,
    )


def test_missing_transition_time_is_filled_in() -> None:
    old = [condition("Ready", "True", lastTransitionTime=None)]
    (ready,) = cond.set_condition(old, "Ready", "True", "Provisioned", "", 1, NOW)
    assert ready["lastTransitionTime"] == NOW_TEXT


def test_observed_generation_always_follows() -> None:
    old = [condition("Ready", "True", observedGeneration=1)]
    (ready,) = cond.set_condition(old, "Ready", "True", "Before", "before", 2, NOW)
    assert ready["observedGeneration"] == 2


def test_order_is_kept_and_new_conditions_are_appended() -> None:
    old = [
        condition("Reconciling", "False"),
        condition("Ready", "False"),
        condition("Stalled", "True"),
    ]
    out = cond.set_condition(old, "Ready", "True", "Provisioned", "", 2, NOW)
    assert [c["type"] for c in out] == ["Reconciling", "Ready", "Stalled"]
    out = cond.set_condition(out, "Degraded", "False", "None", "", 2, NOW)
    assert [c["type"] for c in out] == ["Reconciling", "Ready", "Stalled", "Degraded"]
    # The others are untouched.
    assert out[0] == old[0]
    assert out[2] == old[2]


def test_input_is_not_mutated_and_output_is_a_copy() -> None:
    old = [condition("Ready", "False"), condition("Stalled", "True")]
    snapshot = copy.deepcopy(old)
    out = cond.set_condition(old, "Ready", "True", "Provisioned", "", 2, NOW)
    assert old == snapshot
    out[1]["status"] = "changed"
    assert old[1]["status"] == "True"


def test_only_one_condition_per_type() -> None:
    out: list[dict[str, Any]] = []
    for status in ("False", "True", "True", "False"):
        out = cond.set_condition(out, "Ready", status, "R", "", 1, NOW)
    assert [c["type"] for c in out] == ["Ready"]


def test_time_is_rfc3339_utc_whole_seconds() -> None:
    tz = dt.timezone(dt.timedelta(hours=-5))
    (ready,) = cond.set_condition([], "Ready", "True", "R", "", 1, NOW.astimezone(tz))
    assert ready["lastTransitionTime"] == NOW_TEXT


def test_remove_get_is_true() -> None:
    conds = [condition("Ready", "True"), condition("Stalled", "False")]
    assert cond.is_true(conds, "Ready")
    assert not cond.is_true(conds, "Stalled")
    assert not cond.is_true(conds, "Reconciling")
    assert cond.get_condition(conds, "Stalled") == conds[1]
    assert cond.get_condition(conds, "Reconciling") is None
    assert cond.remove_condition(conds, "Ready") == [conds[1]]
    assert cond.remove_condition(conds, "Missing") == conds


def test_a_message_longer_than_the_crd_stores_is_cut() -> None:
    """A status with a longer message would be refused, and the object could never show why
    it is not Ready (many policy violations at once make long messages)."""
    long = "x" * (cond.MAX_MESSAGE + 5000)
    (out,) = cond.set_condition([], cond.READY, cond.FALSE, "PolicyViolation", long, 1, NOW)
    assert len(out["message"]) == cond.MAX_MESSAGE
    assert out["message"].endswith(" [...]")
    (short,) = cond.set_condition([], cond.READY, cond.FALSE, "R", "fine", 1, NOW)
    assert short["message"] == "fine"

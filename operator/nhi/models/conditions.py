"""kstatus-compatible conditions as a pure function of (old conditions, new facts)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from nhi.models.duration import rfc3339

READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"

TRUE = "True"
FALSE = "False"
UNKNOWN = "Unknown"

Condition = dict[str, Any]

#: The longest message the CRDs store (maxLength of conditions[].message): a longer one (many
#: policy violations at once) is cut, or the status could never be written.
MAX_MESSAGE = 32768
_CUT = " [...]"


def set_condition(
    conditions: Sequence[Mapping[str, Any]],
    type_: str,
    status: str,
    reason: str,
    message: str,
    generation: int,
    now: dt.datetime,
) -> list[Condition]:
    """Return a new list with ``type_`` set.

    ``lastTransitionTime`` is kept when the status did not change; ``observedGeneration``
    is always set. The order of the other conditions is preserved.
    """
    out: list[Condition] = []
    found = False
    for cond in conditions:
        if cond.get("type") != type_:
            out.append(dict(cond))
            continue
        found = True
        transition = cond.get("lastTransitionTime") if cond.get("status") == status else None
        out.append(_make(type_, status, reason, message, generation, transition or rfc3339(now)))
    if not found:
        out.append(_make(type_, status, reason, message, generation, rfc3339(now)))
    return out


def remove_condition(conditions: Sequence[Mapping[str, Any]], type_: str) -> list[Condition]:
    return [dict(c) for c in conditions if c.get("type") != type_]


def get_condition(conditions: Sequence[Mapping[str, Any]], type_: str) -> Mapping[str, Any] | None:
    for cond in conditions:
        if cond.get("type") == type_:
            return cond
    return None


def is_true(conditions: Sequence[Mapping[str, Any]], type_: str) -> bool:
    cond = get_condition(conditions, type_)
    return cond is not None and cond.get("status") == TRUE


def _make(
    type_: str, status: str, reason: str, message: str, generation: int, transition: str
) -> Condition:
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - len(_CUT)] + _CUT
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": transition,
    }


def kstatus_conditions(
    conditions: Sequence[Mapping[str, Any]],
    *,
    ready: bool,
    stalled: bool,
    reason: str,
    message: str,
    generation: int,
    now: dt.datetime,
    settled: bool = False,
) -> list[Condition]:
    """Set Ready, Reconciling and Stalled together, the way kstatus reads them.

    Ready: everything is in place. Stalled: a terminal error that needs a change. Otherwise
    work is pending (Reconciling), unless the object is ``settled``: not ready on purpose,
    with nothing pending (e.g. a revoked identity).
    """
    reconciling = not ready and not stalled and not settled
    out = set_condition(
        conditions, READY, TRUE if ready else FALSE, reason, message, generation, now
    )
    out = set_condition(
        out,
        RECONCILING,
        TRUE if reconciling else FALSE,
        reason,
        message if reconciling else "nothing pending",
        generation,
        now,
    )
    return set_condition(
        out,
        STALLED,
        TRUE if stalled else FALSE,
        reason,
        message if stalled else "no terminal error",
        generation,
        now,
    )


def status_changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether writing ``new`` would change any of its fields in the stored status ``old``."""
    return any(old.get(k) != v for k, v in new.items())

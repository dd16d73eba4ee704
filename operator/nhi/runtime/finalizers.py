"""Finalizers as pure functions over an object's body: each change is one JSON patch.

Every patch is guarded by ``test`` operations on what it was computed from, so a concurrent
change of the list makes the API server refuse it (409, or 422 when a ``test`` fails)
instead of losing someone else's finalizer; the caller retries on the object's newer state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: The content type of the patches below.
JSON_PATCH = "application/json-patch+json"

Patch = list[dict[str, Any]]


def names(body: Mapping[str, Any] | None) -> list[str]:
    """The object's finalizers (none for None: an object that is gone)."""
    return list(((body or {}).get("metadata") or {}).get("finalizers") or ())


def deleting(body: Mapping[str, Any]) -> bool:
    """The object has a deletion timestamp: it goes once its finalizers are removed."""
    return bool((body.get("metadata") or {}).get("deletionTimestamp"))


def has(body: Mapping[str, Any], finalizer: str) -> bool:
    return finalizer in ((body.get("metadata") or {}).get("finalizers") or ())


def add(body: Mapping[str, Any], finalizer: str) -> Patch:
    """The patch that appends ``finalizer``, provided the list is still the one seen."""
    finalizers = names(body)
    if not finalizers:
        return [{"op": "add", "path": "/metadata/finalizers", "value": [finalizer]}]
    return [
        {"op": "test", "path": "/metadata/finalizers", "value": finalizers},
        {"op": "add", "path": "/metadata/finalizers/-", "value": finalizer},
    ]


def remove(body: Mapping[str, Any], finalizer: str) -> Patch:
    """The patch that removes ``finalizer``, provided it is still where it was seen.

    Raises ValueError when the body does not hold it.
    """
    index = names(body).index(finalizer)
    return [
        {"op": "test", "path": f"/metadata/finalizers/{index}", "value": finalizer},
        {"op": "remove", "path": f"/metadata/finalizers/{index}"},
    ]

"""Who made an existing ConfigMap: the check before the operator writes or deletes one.

Labels and field managers prove nothing (whoever can write a ConfigMap can set them); the
provenance tag the operator writes, bound to the ConfigMap's own UID, does. An object an
earlier operator version made is recognised by its labels only if it is older than the
operator's provenance key (nobody can back-date an object).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any, Literal

from nhi.crypto import provenance_valid
from nhi.models.issuer import PROVENANCE_ANNOTATION

Origin = Literal["ours", "legacy", "foreign"]


def configmap_origin(
    cm: Mapping[str, Any],
    *,
    key: bytes,
    purpose: str,
    created_before: dt.datetime | None = None,
    legacy: Callable[[Mapping[str, Any]], bool] | None = None,
) -> Origin:
    """Who made an existing ConfigMap: the operator for ``purpose`` (``ours``), an earlier
    operator version (``legacy``), or anyone else (``foreign``).

    ``ours`` needs the provenance tag of the ConfigMap's own UID (labels and field managers
    prove nothing: whoever can write a ConfigMap can set them). ``legacy``: no tag at all,
    ``legacy(cm)`` holds (the labels an earlier version wrote), and created before
    ``created_before`` (when this version's key was made: nobody can back-date an object).
    """
    meta = cm.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    uid = str(meta.get("uid") or "")
    tag = annotations.get(PROVENANCE_ANNOTATION)
    if tag is not None:
        return "ours" if provenance_valid(key, uid, purpose, tag) else "foreign"
    created = _timestamp(meta.get("creationTimestamp"))
    if (
        legacy is not None
        and created_before is not None
        and created is not None
        and created < created_before
        and legacy(cm)
    ):
        return "legacy"
    return "foreign"


def _timestamp(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None

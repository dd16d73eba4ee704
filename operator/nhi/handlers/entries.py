"""What the operator's watch caches keep of each object (the informers' transforms).

The operator's own children are kept as slim packed JSON (a Secret's data never: Secrets are
watched as metadata only); any other object of the same kind only as what a decision needs
of it (a foreign ServiceAccount: whether it may be adopted; any other Secret: its
resourceVersion, for the issuers that read it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from nhi.models.meta import (
    CREDENTIAL_LABEL,
    IDENTITY_LABEL,
    IDENTITY_NAMESPACE_LABEL,
    MANAGED_BY,
    MANAGED_BY_KEY,
)
from nhi.models.workload import Workload, workload_from_body
from nhi.runtime.informer import Key
from nhi.runtime.overlay import slim
from nhi.runtime.store import pack, unpack, without_managed_fields

#: Marks a cache entry that is not one of the operator's children (only what the watch keeps
#: of any object of that kind); a child's entry is its slim JSON, which starts with "{".
FOREIGN = "L"


def owner(obj: Mapping[str, Any]) -> Key:
    """The identity a child belongs to, by its labels: (namespace, name)."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    return (
        str(labels.get(IDENTITY_NAMESPACE_LABEL) or meta.get("namespace") or ""),
        str(labels.get(IDENTITY_LABEL) or ""),
    )


def labels(obj: Mapping[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


def is_child(obj: Mapping[str, Any], *required: str) -> bool:
    have = (obj.get("metadata") or {}).get("labels") or {}
    return have.get(MANAGED_BY_KEY) == MANAGED_BY and all(
        k in have for k in (IDENTITY_LABEL, *required)
    )


def child_entry(entry: str | None) -> str | None:
    """The slim JSON of a child's cache entry; None for any other entry (or none)."""
    return entry if entry is not None and entry.startswith("{") else None


def identity_entry(obj: Mapping[str, Any]) -> str:
    return pack(without_managed_fields(obj))


def slimmer(kind: str) -> Callable[[Mapping[str, Any]], str]:
    return lambda obj: pack(slim(kind, obj))


def workload(kind: str) -> Callable[[Mapping[str, Any]], Workload | None]:
    return lambda obj: workload_from_body(kind, obj)


def secret_entry(obj: Mapping[str, Any]) -> str:
    """A Secret's cache entry: a credential Secret's slim metadata, else its resourceVersion."""
    if is_child(obj, CREDENTIAL_LABEL):
        return pack(slim("Secret", obj))
    return str((obj.get("metadata") or {}).get("resourceVersion") or "-")


def entry_version(entry: str | None) -> str:
    if entry is None:
        return ""
    mine = child_entry(entry)
    if mine is None:
        return entry
    return str((unpack(mine).get("metadata") or {}).get("resourceVersion") or "-")


def service_account_entry(obj: Mapping[str, Any]) -> str:
    """A ServiceAccount's cache entry: the operator's own as a child; any other as what tells
    whether it may be adopted (uid, labels, ownerReferences)."""
    if is_child(obj):
        return pack(slim("ServiceAccount", obj))
    meta = obj.get("metadata") or {}
    keep = {k: meta[k] for k in ("uid", "labels", "ownerReferences") if meta.get(k)}
    return FOREIGN + pack(keep)


def service_account(namespace: str, name: str, entry: str) -> dict[str, Any]:
    """A ServiceAccount from its entry: a child's slim JSON, or a foreign one's metadata."""
    mine = child_entry(entry)
    if mine is not None:
        return unpack(mine)
    return {"metadata": {"namespace": namespace, "name": name, **unpack(entry[1:])}}

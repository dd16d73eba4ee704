"""Who controls an object: the proof the operator needs before it writes or deletes one.

The operator holds broad RBAC; the person who wrote a MachineIdentity may hold almost none. So
it acts only on objects the identity owns, and ownership is proven by the controller
ownerReference's UID, which names one incarnation of one MachineIdentity. Labels prove
nothing: anyone who may edit an object may set them.

Cluster-scoped children (ClusterRole, ClusterRoleBinding) cannot carry an ownerReference to a
namespaced MachineIdentity (the garbage collector rejects it), so they carry the identity's UID
in the :data:`OWNER_UID_ANNOTATION` annotation instead; only cluster administrators and the
operator may write cluster-scoped RBAC objects at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nhi import GROUP
from nhi.models.meta import (
    IDENTITY_LABEL,
    IDENTITY_NAMESPACE_LABEL,
    MANAGED_BY,
    MANAGED_BY_KEY,
    OWNER_UID_ANNOTATION,
)

IDENTITY_KIND = "MachineIdentity"


def _meta(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return (obj or {}).get("metadata") or {}


def controller_ref(obj: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The object's controller ownerReference, or None."""
    for ref in _meta(obj).get("ownerReferences") or ():
        if ref.get("controller"):
            return dict(ref)
    return None


def _is_identity_ref(ref: Mapping[str, Any]) -> bool:
    group = str(ref.get("apiVersion", "")).partition("/")[0]
    return ref.get("kind") == IDENTITY_KIND and group == GROUP


def owner_uid(obj: Mapping[str, Any] | None) -> str | None:
    """The UID of the MachineIdentity that controls ``obj``, or None."""
    ref = controller_ref(obj)
    if ref is not None:
        return str(ref.get("uid") or "") if _is_identity_ref(ref) else None
    meta = _meta(obj)
    if meta.get("namespace"):
        return None
    uid = (meta.get("annotations") or {}).get(OWNER_UID_ANNOTATION)
    return str(uid) if uid else None


def owned_by(
    obj: Mapping[str, Any] | None, uid: str, *, namespace: str = "", name: str = ""
) -> bool:
    """Whether the identity with ``uid`` controls ``obj``.

    A cluster-scoped child written before the owner-UID annotation existed is recognised by
    the labels naming the identity (``namespace``/``name``): no tenant can write such an object.
    """
    if obj is None or not uid:
        return False
    found = owner_uid(obj)
    if found is not None:
        return found == uid
    meta = _meta(obj)
    if meta.get("namespace") or not name:
        return False
    labels = meta.get("labels") or {}
    return (
        labels.get(MANAGED_BY_KEY) == MANAGED_BY
        and labels.get(IDENTITY_LABEL) == name
        and labels.get(IDENTITY_NAMESPACE_LABEL) == namespace
    )


def describe_owner(obj: Mapping[str, Any] | None) -> str:
    """Who controls ``obj``, in words for a condition message (never a value of it)."""
    if obj is None:
        return "it is being replaced"
    ref = controller_ref(obj)
    if ref is not None:
        what = f"{ref.get('kind')}/{ref.get('name')}"
        if _is_identity_ref(ref):
            return f"it belongs to {what} (uid {ref.get('uid')})"
        return f"it is controlled by {what}"
    uid = owner_uid(obj)
    if uid:
        return f"it belongs to another MachineIdentity (uid {uid})"
    return "it was not created by nhi-operator for this identity"


@dataclass(frozen=True)
class Claim:
    """An object the identity's spec points at but does not own."""

    field: str
    kind: str
    namespace: str
    name: str
    owner: str

    @property
    def message(self) -> str:
        where = f" in namespace {self.namespace}" if self.namespace else ""
        return (
            f"{self.field}: {self.kind} {self.name!r}{where} already exists and {self.owner}; "
            "nhi-operator leaves it untouched: choose another name, or delete that object"
        )


class OwnershipConflict(Exception):
    """A write would have touched an object the identity does not own."""

    def __init__(self, claim: Claim) -> None:
        super().__init__(claim.message)
        self.claim = claim


GRANT_KIND = "AccessGrant"


def controlled_by_grant(obj: Mapping[str, Any] | None, uid: str) -> bool:
    """Whether the AccessGrant with ``uid`` controls ``obj`` (labels prove nothing)."""
    ref = controller_ref(obj)
    if ref is None or not uid:
        return False
    group = str(ref.get("apiVersion", "")).partition("/")[0]
    return ref.get("kind") == GRANT_KIND and group == GROUP and ref.get("uid") == uid

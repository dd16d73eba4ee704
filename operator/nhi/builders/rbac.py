"""Pure builders: a MachineIdentity model in, the desired child objects out.

Child names are deterministic, so the same identity always maps to the same objects and a
re-run of any handler finds what an interrupted run left behind.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nhi import API_VERSION
from nhi.models.identity import KIND, MachineIdentity, RoleRef
from nhi.models.meta import (
    ADOPTED_FROM_ANNOTATION,
    IDENTITY_LABEL,
    IDENTITY_NAMESPACE_LABEL,
    MANAGED_BY,
    MANAGED_BY_KEY,
    OWNER_UID_ANNOTATION,
)

RBAC = "rbac.authorization.k8s.io/v1"

#: Kinds the operator creates for an identity's access, in the order they are applied.
NAMESPACED_KINDS = ("ServiceAccount", "Role", "RoleBinding")
CLUSTER_KINDS = ("ClusterRole", "ClusterRoleBinding")


@dataclass(frozen=True, order=True)
class ChildKey:
    """Identifies one child object: kind, namespace ('' when cluster-scoped), name."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}"


def child_key(obj: dict[str, Any]) -> ChildKey:
    meta = obj["metadata"]
    return ChildKey(obj["kind"], meta.get("namespace", ""), meta["name"])


def _bounded(name: str, limit: int = 253) -> str:
    """Keep a generated name within Kubernetes' limit, stable and unique by hashing."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{name[: limit - 11]}-{digest}"


def labels(identity: MachineIdentity, cluster_scoped: bool = False) -> dict[str, str]:
    out = {MANAGED_BY_KEY: MANAGED_BY, IDENTITY_LABEL: identity.name}
    if cluster_scoped:
        out[IDENTITY_NAMESPACE_LABEL] = identity.namespace
    return out


def owner_reference(identity: MachineIdentity) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": identity.name,
        "uid": identity.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _meta(identity: MachineIdentity, name: str, namespaced: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": labels(identity, not namespaced)}
    if namespaced:
        meta["namespace"] = identity.namespace
        meta["ownerReferences"] = [owner_reference(identity)]
    else:
        # No ownerReference can name a namespaced owner here: the UID proves ownership.
        meta["annotations"] = {OWNER_UID_ANNOTATION: identity.uid}
    return meta


def role_name(identity: MachineIdentity) -> str:
    return _bounded(f"nhi-{identity.name}")


def cluster_role_name(identity: MachineIdentity) -> str:
    return _bounded(f"nhi:{identity.namespace}:{identity.name}")


def role_ref_binding_name(identity: MachineIdentity, ref: RoleRef) -> str:
    """``nhi:<identity>:<kind>:<role>``. MachineIdentity names cannot hold a colon (they are
    DNS subdomains) but may hold dots, so the identity's part ends at the first colon after
    ``nhi:``, and no binding name of one identity can equal another identity's names. (The
    former ``nhi-<identity>.<kind>.<role>`` could: identity ``a`` binding Role ``x`` and the
    rules binding of identity ``a.role.x`` were both ``nhi-a.role.x``.)"""
    return _bounded(f"nhi:{identity.name}:{ref.kind.lower()}:{ref.name}")


def _subject(identity: MachineIdentity) -> list[dict[str, str]]:
    return [
        {
            "kind": "ServiceAccount",
            "name": identity.spec.service_account,
            "namespace": identity.namespace,
        }
    ]


def build_service_account(
    identity: MachineIdentity, adopted_from: str | None = None
) -> dict[str, Any]:
    """The identity's ServiceAccount; ``adopted_from``: the adopted one's state before (JSON)."""
    meta = _meta(identity, identity.spec.service_account)
    meta["annotations"] = {"nhi.dev/owner": identity.spec.owner}
    if adopted_from is not None:
        meta["annotations"][ADOPTED_FROM_ANNOTATION] = adopted_from
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": meta,
        "automountServiceAccountToken": identity.spec.automount_token,
    }


def build_role(identity: MachineIdentity) -> dict[str, Any]:
    return {
        "apiVersion": RBAC,
        "kind": "Role",
        "metadata": _meta(identity, role_name(identity)),
        "rules": [r.to_k8s() for r in identity.spec.rules],
    }


def build_role_binding(identity: MachineIdentity) -> dict[str, Any]:
    return {
        "apiVersion": RBAC,
        "kind": "RoleBinding",
        "metadata": _meta(identity, role_name(identity)),
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": role_name(identity),
        },
        "subjects": _subject(identity),
    }


def build_role_ref_binding(identity: MachineIdentity, ref: RoleRef) -> dict[str, Any]:
    """A RoleBinding in the identity's namespace for an existing Role or ClusterRole.

    A ClusterRole referenced here is bound with a RoleBinding, so its rules apply in the
    identity's namespace only: binding ``view`` does not grant reading every namespace.
    """
    return {
        "apiVersion": RBAC,
        "kind": "RoleBinding",
        "metadata": _meta(identity, role_ref_binding_name(identity, ref)),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": ref.kind, "name": ref.name},
        "subjects": _subject(identity),
    }


def build_cluster_role(identity: MachineIdentity) -> dict[str, Any]:
    return {
        "apiVersion": RBAC,
        "kind": "ClusterRole",
        "metadata": _meta(identity, cluster_role_name(identity), namespaced=False),
        "rules": [r.to_k8s() for r in identity.spec.cluster_rules],
    }


def build_cluster_role_binding(identity: MachineIdentity) -> dict[str, Any]:
    return {
        "apiVersion": RBAC,
        "kind": "ClusterRoleBinding",
        "metadata": _meta(identity, cluster_role_name(identity), namespaced=False),
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": cluster_role_name(identity),
        },
        "subjects": _subject(identity),
    }


def desired_access(
    identity: MachineIdentity, *, with_bindings: bool = True, adopted_from: str | None = None
) -> list[dict[str, Any]]:
    """Every object that gives the identity its access, ServiceAccount first.

    ``with_bindings=False`` leaves out the bindings: the shape of a revoked identity that
    keeps no access.
    """
    spec = identity.spec
    out = [build_service_account(identity, adopted_from)]
    if spec.rules:
        out.append(build_role(identity))
        if with_bindings:
            out.append(build_role_binding(identity))
    if with_bindings:
        out.extend(build_role_ref_binding(identity, ref) for ref in spec.role_refs)
    if spec.cluster_rules:
        out.append(build_cluster_role(identity))
        if with_bindings:
            out.append(build_cluster_role_binding(identity))
    return out


def adoption_snapshot(sa: Mapping[str, Any]) -> str:
    """What adopting changes on a ServiceAccount, as it was before (JSON, for the annotation
    :data:`ADOPTED_FROM_ANNOTATION`): restored when the identity lets it go."""
    meta = sa.get("metadata") or {}
    return json.dumps(
        {
            "labels": dict(meta.get("labels") or {}),
            "annotations": dict(meta.get("annotations") or {}),
            "automountServiceAccountToken": sa.get("automountServiceAccountToken"),
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )


def release_patch(sa: Mapping[str, Any], identity_uid: str) -> list[dict[str, Any]]:
    """A JSON patch that gives an adopted ServiceAccount back as it was before the adoption:
    its labels, annotations and automount setting restored, the identity's ownerReference
    removed. Guarded by the ServiceAccount's UID, so a namesake is never changed."""
    meta = sa.get("metadata") or {}
    try:
        before = json.loads((meta.get("annotations") or {}).get(ADOPTED_FROM_ANNOTATION) or "")
        if not isinstance(before, dict):
            raise ValueError("not an object")
    except ValueError:
        # Unreadable record: take away only what the operator put there.
        ours = {MANAGED_BY_KEY, IDENTITY_LABEL}
        before = {
            "labels": {k: v for k, v in (meta.get("labels") or {}).items() if k not in ours},
            "annotations": {
                k: v
                for k, v in (meta.get("annotations") or {}).items()
                if k not in ("nhi.dev/owner", ADOPTED_FROM_ANNOTATION)
            },
            "automountServiceAccountToken": sa.get("automountServiceAccountToken"),
        }
    refs = [r for r in meta.get("ownerReferences") or () if r.get("uid") != identity_uid]
    ops: list[dict[str, Any]] = [
        {"op": "test", "path": "/metadata/uid", "value": meta.get("uid")},
        {"op": "add", "path": "/metadata/labels", "value": dict(before.get("labels") or {})},
        {
            "op": "add",
            "path": "/metadata/annotations",
            "value": dict(before.get("annotations") or {}),
        },
        {"op": "add", "path": "/metadata/ownerReferences", "value": refs},
    ]
    automount = before.get("automountServiceAccountToken")
    if isinstance(automount, bool):
        ops.append({"op": "add", "path": "/automountServiceAccountToken", "value": automount})
    elif "automountServiceAccountToken" in sa:
        ops.append({"op": "remove", "path": "/automountServiceAccountToken"})
    return ops


def is_adopted(sa: Mapping[str, Any] | None) -> bool:
    return ADOPTED_FROM_ANNOTATION in (((sa or {}).get("metadata") or {}).get("annotations") or {})


def desired_keys(identity: MachineIdentity) -> list[ChildKey]:
    """Every object the identity would write: its access objects and credential Secrets."""
    keys = [child_key(o) for o in desired_access(identity)]
    keys += [
        ChildKey("Secret", identity.namespace, c.secret_name) for c in identity.spec.credentials
    ]
    return keys


def field_for(identity: MachineIdentity, key: ChildKey) -> str:
    """The spec field a child's name comes from, to name it in a conflict."""
    spec = identity.spec
    if key.kind == "ServiceAccount":
        return "spec.serviceAccount.name"
    if key.kind == "Secret":
        for i, cred in enumerate(spec.credentials):
            if cred.secret_name == key.name:
                return f"spec.credentials[{i}].secretName"
        return "spec.credentials"
    if key.kind in CLUSTER_KINDS:
        return "spec.permissions.clusterRules"
    for i, ref in enumerate(spec.role_refs):
        if key.kind == "RoleBinding" and key.name == role_ref_binding_name(identity, ref):
            return f"spec.permissions.roleRefs[{i}]"
    return "spec.permissions.rules"


#: The fields of each kind that the operator owns; drift in these is corrected.
OWNED_FIELDS: dict[str, tuple[str, ...]] = {
    "ServiceAccount": ("automountServiceAccountToken",),
    "Role": ("rules",),
    "ClusterRole": ("rules",),
    "RoleBinding": ("roleRef", "subjects"),
    "ClusterRoleBinding": ("roleRef", "subjects"),
}


def _norm(value: Any) -> Any:
    """Normalise for comparison: drop empty lists/dicts the API server omits."""
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items() if v not in (None, [], {})}
    if isinstance(value, list):
        return [_norm(v) for v in value]
    return value


def differs(desired: dict[str, Any], actual: dict[str, Any] | None) -> bool:
    """True when ``actual`` lacks something ``desired`` sets (fields, labels, owner)."""
    if actual is None:
        return True
    for f in OWNED_FIELDS.get(desired["kind"], ()):
        if _norm(desired.get(f)) != _norm(actual.get(f)):
            return True
    want_meta, have_meta = desired["metadata"], actual.get("metadata") or {}
    have_labels = have_meta.get("labels") or {}
    if any(have_labels.get(k) != v for k, v in want_meta.get("labels", {}).items()):
        return True
    have_ann = have_meta.get("annotations") or {}
    if any(have_ann.get(k) != v for k, v in (want_meta.get("annotations") or {}).items()):
        return True
    want_uids = {o["uid"] for o in want_meta.get("ownerReferences", [])}
    have_uids = {o.get("uid") for o in have_meta.get("ownerReferences") or []}
    return not want_uids <= have_uids

"""An AccessGrant's children: one Role with its rules and one RoleBinding per role it binds,
each for the identity's ServiceAccount, each controlled by the grant (its ownerReference's
UID is the proof the operator needs before it updates or deletes one)."""

from __future__ import annotations

from typing import Any

from nhi import API_VERSION
from nhi.builders.rbac import differs as differs
from nhi.models.grant import GRANT_LABEL, KIND, AccessGrant
from nhi.models.meta import MANAGED_BY, MANAGED_BY_KEY

RBAC_API = "rbac.authorization.k8s.io/v1"
RBAC_GROUP = "rbac.authorization.k8s.io"


def grant_labels(grant: AccessGrant) -> dict[str, str]:
    return {MANAGED_BY_KEY: MANAGED_BY, GRANT_LABEL: grant.name}


def _meta(grant: AccessGrant, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": grant.namespace,
        "labels": grant_labels(grant),
        "ownerReferences": [
            {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": grant.name,
                "uid": grant.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }


def role_name(grant: AccessGrant) -> str:
    """``nhi-grant-<grant>``: grant names are at most 63 characters (the CRD says so)."""
    return f"nhi-grant-{grant.name}"


def ref_binding_name(grant: AccessGrant, index: int) -> str:
    return f"nhi-grant-{grant.name}-ref-{index}"


def _subjects(grant: AccessGrant, service_account: str) -> list[dict[str, str]]:
    return [{"kind": "ServiceAccount", "name": service_account, "namespace": grant.namespace}]


def build_children(grant: AccessGrant, service_account: str) -> list[dict[str, Any]]:
    """The Role and RoleBindings that exist while the grant is Active."""
    out: list[dict[str, Any]] = []
    if grant.rules:
        name = role_name(grant)
        out.append(
            {
                "apiVersion": RBAC_API,
                "kind": "Role",
                "metadata": _meta(grant, name),
                "rules": [r.to_k8s() for r in grant.rules],
            }
        )
        out.append(
            {
                "apiVersion": RBAC_API,
                "kind": "RoleBinding",
                "metadata": _meta(grant, name),
                "roleRef": {"apiGroup": RBAC_GROUP, "kind": "Role", "name": name},
                "subjects": _subjects(grant, service_account),
            }
        )
    for i, ref in enumerate(grant.role_refs):
        out.append(
            {
                "apiVersion": RBAC_API,
                "kind": "RoleBinding",
                "metadata": _meta(grant, ref_binding_name(grant, i)),
                "roleRef": {"apiGroup": RBAC_GROUP, "kind": ref.kind, "name": ref.name},
                "subjects": _subjects(grant, service_account),
            }
        )
    return out

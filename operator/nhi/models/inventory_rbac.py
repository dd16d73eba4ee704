"""What the inventory knows of RBAC: each role by its rules, each binding by its
ServiceAccount subjects (and the groups every ServiceAccount belongs to). Parsed once at the
edge like every record of :mod:`nhi.models.inventory`: any body is accepted, none raises.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nhi.models.inventory import Meta, ObjectRef, meta_from_body, metadata_of


def _tuple(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(str(v) for v in value if isinstance(v, str))


@dataclass(frozen=True)
class Rule:
    """One RBAC policy rule."""

    verbs: tuple[str, ...] = ()
    api_groups: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    resource_names: tuple[str, ...] = ()
    non_resource_urls: tuple[str, ...] = ()


def _rules(value: Any) -> tuple[Rule, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(
        Rule(
            verbs=_tuple(r.get("verbs")),
            api_groups=_tuple(r.get("apiGroups")),
            resources=_tuple(r.get("resources")),
            resource_names=_tuple(r.get("resourceNames")),
            non_resource_urls=_tuple(r.get("nonResourceURLs")),
        )
        for r in value
        if isinstance(r, Mapping)
    )


@dataclass(frozen=True)
class RoleInfo:
    kind: str  # Role or ClusterRole
    namespace: str
    name: str
    rules: tuple[Rule, ...] = ()

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef(self.kind, self.namespace, self.name)


def role_from_body(kind: str, body: Mapping[str, Any]) -> RoleInfo:
    meta = metadata_of(body)
    return RoleInfo(
        kind=kind,
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        rules=_rules(body.get("rules")),
    )


@dataclass(frozen=True, order=True)
class Subject:
    kind: str  # ServiceAccount, Group (User subjects are not kept)
    name: str
    namespace: str = ""


#: Groups every ServiceAccount (of one namespace) belongs to.
ALL_SERVICE_ACCOUNTS = "system:serviceaccounts"


def _subjects(value: Any, default_namespace: str) -> tuple[Subject, ...]:
    if not isinstance(value, list):
        return ()
    out = []
    for s in value:
        if not isinstance(s, Mapping):
            continue
        kind, name = str(s.get("kind") or ""), str(s.get("name") or "")
        if kind == "ServiceAccount" and name:
            out.append(Subject(kind, name, str(s.get("namespace") or default_namespace)))
        elif kind == "Group" and (
            name == ALL_SERVICE_ACCOUNTS or name.startswith(ALL_SERVICE_ACCOUNTS + ":")
        ):
            out.append(Subject(kind, name))
    return tuple(out)


@dataclass(frozen=True)
class BindingInfo:
    """A RoleBinding or ClusterRoleBinding, with only its ServiceAccount subjects."""

    kind: str
    meta: Meta
    role_kind: str
    role_name: str
    subjects: tuple[Subject, ...] = ()

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef(self.kind, self.meta.namespace, self.meta.name)

    @property
    def role_ref(self) -> ObjectRef:
        ns = self.meta.namespace if self.role_kind == "Role" else ""
        return ObjectRef(self.role_kind, ns, self.role_name)


def binding_from_body(kind: str, body: Mapping[str, Any]) -> BindingInfo | None:
    """The binding, or None when none of its subjects is a ServiceAccount (or their group)."""
    meta = meta_from_body(body)
    subjects = _subjects(body.get("subjects"), meta.namespace)
    if not subjects:
        return None
    ref = body.get("roleRef")
    ref = ref if isinstance(ref, Mapping) else {}
    return BindingInfo(
        kind=kind,
        meta=Meta(meta.namespace, meta.name, meta.uid, meta.created, meta.labels),
        role_kind=str(ref.get("kind") or ""),
        role_name=str(ref.get("name") or ""),
        subjects=subjects,
    )

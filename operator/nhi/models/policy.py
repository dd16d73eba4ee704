"""The IdentityPolicy model (cluster-scoped guardrails for self-service identities)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nhi.models.identity import LabelSelector, _selector


@dataclass(frozen=True)
class IdentityPolicy:
    name: str
    namespace_selector: LabelSelector
    select_all: bool
    enforcement: str = "Deny"
    allowed_cluster_roles: tuple[str, ...] = ()
    allow_cluster_rules: bool = False

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> IdentityPolicy:
        spec = body.get("spec") or {}
        raw_sel = spec.get("namespaceSelector")
        selector = _selector(raw_sel, "spec.namespaceSelector")
        return cls(
            name=str((body.get("metadata") or {}).get("name", "")),
            namespace_selector=selector,
            # An absent or empty namespaceSelector selects every namespace.
            select_all=selector.empty,
            enforcement=str(spec.get("enforcement", "Deny")),
            allowed_cluster_roles=tuple(str(r) for r in spec.get("allowedClusterRoles") or ()),
            allow_cluster_rules=bool(spec.get("allowClusterRules", False)),
        )

    def selects(self, namespace_labels: Mapping[str, str]) -> bool:
        return self.select_all or self.namespace_selector.matches(namespace_labels)

"""Whether an identity may hold cluster-scoped permissions.

Cluster-scoped permissions (``permissions.clusterRules`` and ``roleRefs`` of kind
ClusterRole) reach beyond the identity's namespace, so they are refused unless an
IdentityPolicy that selects the namespace allows them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from nhi.models.identity import Spec
from nhi.models.policy import IdentityPolicy


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str = ""
    message: str = ""


ALLOWED = Verdict(True)


def check_cluster_permissions(
    spec: Spec, policies: Sequence[IdentityPolicy], namespace_labels: Mapping[str, str]
) -> Verdict:
    selecting = [p for p in policies if p.selects(namespace_labels)]
    if spec.cluster_rules and not any(p.allow_cluster_rules for p in selecting):
        return Verdict(
            False,
            "ClusterPermissionsNotAllowed",
            "spec.permissions.clusterRules: cluster-wide rules need an IdentityPolicy that "
            "selects this namespace with allowClusterRules: true",
        )
    for i, ref in enumerate(spec.role_refs):
        if ref.kind != "ClusterRole":
            continue
        if not any(ref.name in p.allowed_cluster_roles for p in selecting):
            return Verdict(
                False,
                "ClusterPermissionsNotAllowed",
                f"spec.permissions.roleRefs[{i}]: ClusterRole {ref.name!r} is not in the "
                "allowedClusterRoles of any IdentityPolicy that selects this namespace",
            )
    return ALLOWED

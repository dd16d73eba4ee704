"""Whether an identity may hold cluster-scoped permissions.

Cluster-scoped permissions (``permissions.clusterRules`` and ``roleRefs`` of kind
ClusterRole) reach beyond the identity's namespace, so they are refused unless an
IdentityPolicy that selects the namespace allows them. So do named Vault policies added to the
workload's Vault role (``spec.vault.access.policies``): each must be listed in the
``allowedVaultPolicies`` of an IdentityPolicy that selects the namespace.
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
VAULT_POLICIES_NOT_ALLOWED = "VaultPoliciesNotAllowed"


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
    access = spec.vault.access if spec.vault is not None else None
    for i, name in enumerate(access.policies if access is not None else ()):
        if not any(name in p.allowed_vault_policies for p in selecting):
            return Verdict(
                False,
                VAULT_POLICIES_NOT_ALLOWED,
                f"spec.vault.access.policies[{i}]: Vault policy {name!r} is not in the "
                "allowedVaultPolicies of any IdentityPolicy that selects this namespace",
            )
    return ALLOWED


def allowed_vault_policies(
    spec: Spec, policies: Sequence[IdentityPolicy], namespace_labels: Mapping[str, str]
) -> tuple[str, ...]:
    """The named Vault policies of ``spec.vault.access`` that an IdentityPolicy selecting the
    namespace still allows (what the workload's role may keep when the others are refused)."""
    access = spec.vault.access if spec.vault is not None else None
    selecting = [p for p in policies if p.selects(namespace_labels)]
    return tuple(
        name
        for name in (access.policies if access is not None else ())
        if any(name in p.allowed_vault_policies for p in selecting)
    )

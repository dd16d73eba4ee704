"""Cluster-scoped permissions need an IdentityPolicy that selects the namespace and allows them;
a refusal names the field the user has to change."""

from __future__ import annotations

from typing import Any

import pytest

from nhi.models.policy import IdentityPolicy
from nhi.policies.cluster import ALLOWED, check_cluster_permissions
from tests.unit.factories import make_identity, make_policy, rule

pytestmark = pytest.mark.unit

PROD = {"env": "prod", "kubernetes.io/metadata.name": "team-a"}
CLUSTER_RULES = {"clusterRules": [rule(resources=("nodes",))]}
VIEW = {"roleRefs": [{"kind": "Role", "name": "reader"}, {"kind": "ClusterRole", "name": "view"}]}
BOTH = {**CLUSTER_RULES, **VIEW}

ALLOW_RULES = make_policy("rules", allowClusterRules=True)
ALLOW_VIEW = make_policy("view", allowedClusterRoles=["view"])
ALLOW_ALL = make_policy("all", allowClusterRules=True, allowedClusterRoles=["view", "edit"])
PROD_ONLY = {"namespaceSelector": {"matchLabels": {"env": "prod"}}}
DEV_ONLY = {"namespaceSelector": {"matchLabels": {"env": "dev"}}}
RULES_IN_PROD = make_policy("prod-rules", allowClusterRules=True, **PROD_ONLY)
RULES_IN_DEV = make_policy("dev-rules", allowClusterRules=True, **DEV_ONLY)
VIEW_IN_DEV = make_policy("dev-view", allowedClusterRoles=["view"], **DEV_ONLY)
VIEW_OUTSIDE_PROD = make_policy(
    "not-prod",
    allowedClusterRoles=["view"],
    namespaceSelector={
        "matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]}]
    },
)

CLUSTER_RULES_REFUSED = "spec.permissions.clusterRules"
VIEW_REFUSED = "spec.permissions.roleRefs[1]"

CASES = [
    # (id, permissions, policies, refusal's field path or None when allowed)
    ("namespaced rules need no policy", {"rules": [rule()]}, [], None),
    ("a Role ref needs no policy", {"roleRefs": [{"kind": "Role", "name": "r"}]}, [], None),
    ("nothing at all", {}, [], None),
    ("cluster rules without a policy", CLUSTER_RULES, [], CLUSTER_RULES_REFUSED),
    ("cluster rules allowed", CLUSTER_RULES, [ALLOW_RULES], None),
    ("cluster rules, policy allows only roles", CLUSTER_RULES, [ALLOW_VIEW], CLUSTER_RULES_REFUSED),
    ("ClusterRole ref without a policy", VIEW, [], VIEW_REFUSED),
    ("ClusterRole ref allowed", VIEW, [ALLOW_VIEW], None),
    ("ClusterRole ref, policy allows only rules", VIEW, [ALLOW_RULES], VIEW_REFUSED),
    (
        "ClusterRole ref, policy allows another role",
        VIEW,
        [make_policy(allowedClusterRoles=["edit", "view-all"])],
        VIEW_REFUSED,
    ),
    ("both, one policy allows both", BOTH, [ALLOW_ALL], None),
    ("both, two policies allow one each", BOTH, [ALLOW_RULES, ALLOW_VIEW], None),
    ("both, rules refused first", BOTH, [ALLOW_VIEW], CLUSTER_RULES_REFUSED),
    ("both, role refused", BOTH, [ALLOW_RULES], VIEW_REFUSED),
    ("policy selects the namespace", CLUSTER_RULES, [RULES_IN_PROD], None),
    ("policy selects other namespaces", CLUSTER_RULES, [RULES_IN_DEV], CLUSTER_RULES_REFUSED),
    ("role allowed only elsewhere", VIEW, [VIEW_IN_DEV], VIEW_REFUSED),
    ("NotIn excludes the namespace", VIEW, [VIEW_OUTSIDE_PROD], VIEW_REFUSED),
    ("a selecting policy among others", CLUSTER_RULES, [RULES_IN_DEV, RULES_IN_PROD], None),
    (
        "the first ClusterRole ref that is not allowed is named",
        {
            "roleRefs": [
                {"kind": "ClusterRole", "name": "view"},
                {"kind": "Role", "name": "reader"},
                {"kind": "ClusterRole", "name": "edit"},
            ]
        },
        [ALLOW_VIEW],
        "spec.permissions.roleRefs[2]",
    ),
]


@pytest.mark.parametrize(
    ("permissions", "policies", "refused_field"),
    [pytest.param(p, pol, r, id=i) for i, p, pol, r in CASES],
)
def test_cluster_permissions(
    permissions: dict[str, Any], policies: list[IdentityPolicy], refused_field: str | None
) -> None:
    spec = make_identity(permissions=permissions).spec
    verdict = check_cluster_permissions(spec, policies, PROD)
    if refused_field is None:
        assert verdict == ALLOWED
        assert verdict.allowed
    else:
        assert not verdict.allowed
        assert verdict.reason == "ClusterPermissionsNotAllowed"
        assert verdict.message.startswith(f"{refused_field}: ")


def test_refusal_messages_say_what_to_do() -> None:
    rules = check_cluster_permissions(make_identity(permissions=CLUSTER_RULES).spec, [], PROD)
    assert "allowClusterRules: true" in rules.message
    view = check_cluster_permissions(make_identity(permissions=VIEW).spec, [], PROD)
    assert "ClusterRole 'view'" in view.message
    assert "allowedClusterRoles" in view.message


def test_namespace_without_labels() -> None:
    spec = make_identity(permissions=CLUSTER_RULES).spec
    assert check_cluster_permissions(spec, [ALLOW_RULES], {}).allowed  # selects every namespace
    assert not check_cluster_permissions(spec, [RULES_IN_PROD], {}).allowed


VAULT_EXTRA = {
    "issuerRef": {"name": "vault-pki"},
    "access": {"policies": ["reports-read", "metrics-read"]},
}


@pytest.mark.parametrize(
    ("policies", "refused"),
    [
        ([], "spec.vault.access.policies[0]: Vault policy 'reports-read'"),
        (
            [make_policy("reports", allowedVaultPolicies=["reports-read"])],
            "spec.vault.access.policies[1]: Vault policy 'metrics-read'",
        ),
        (
            [
                make_policy("reports", allowedVaultPolicies=["reports-read"]),
                make_policy("metrics", allowedVaultPolicies=["metrics-read"]),
            ],
            None,
        ),
        (
            [make_policy("dev", allowedVaultPolicies=["reports-read", "metrics-read"], **DEV_ONLY)],
            "spec.vault.access.policies[0]",
        ),
    ],
)
def test_named_vault_policies_need_an_identity_policy_listing_them(
    policies: list[IdentityPolicy], refused: str | None
) -> None:
    identity = make_identity(vault=VAULT_EXTRA)
    verdict = check_cluster_permissions(identity.spec, policies, PROD)
    if refused is None:
        assert verdict == ALLOWED
    else:
        assert verdict.reason == "VaultPoliciesNotAllowed"
        assert verdict.message.startswith(refused)
        assert "allowedVaultPolicies of any IdentityPolicy that selects this namespace" in (
            verdict.message
        )


def test_a_role_keeps_only_the_vault_policies_still_allowed() -> None:
    from nhi.policies.cluster import allowed_vault_policies

    spec = make_identity(vault=VAULT_EXTRA).spec
    assert allowed_vault_policies(spec, [], PROD) == ()
    reports = make_policy("reports", allowedVaultPolicies=["reports-read"])
    assert allowed_vault_policies(spec, [reports], PROD) == ("reports-read",)
    dev = make_policy("dev", allowedVaultPolicies=["reports-read", "metrics-read"], **DEV_ONLY)
    assert allowed_vault_policies(spec, [dev], PROD) == ()
    assert allowed_vault_policies(make_identity().spec, [reports], PROD) == ()

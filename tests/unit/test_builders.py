"""Builders: the child objects an identity turns into, their names, labels and owners, and
the drift check that decides whether an object must be applied again."""

from __future__ import annotations

import base64
import copy
import re
from collections.abc import Callable
from typing import Any

import pytest

from nhi.builders.rbac import (
    ChildKey,
    build_cluster_role,
    build_cluster_role_binding,
    build_role,
    build_role_binding,
    build_role_ref_binding,
    build_service_account,
    child_key,
    cluster_role_name,
    desired_access,
    differs,
    role_name,
    role_ref_binding_name,
)
from nhi.builders.secrets import build_credential_secret, token_request
from nhi.models.identity import MachineIdentity, RoleRef
from tests.unit.factories import (
    NAME,
    NAMESPACE,
    OWNER,
    UID,
    credential,
    make_identity,
    rule,
    server_copy,
)

pytestmark = pytest.mark.unit

MANAGED = {"app.kubernetes.io/managed-by": "nhi-operator", "nhi.dev/identity": NAME}
OWNER_REF = {
    "apiVersion": "nhi.dev/v1alpha1",
    "kind": "MachineIdentity",
    "name": NAME,
    "uid": UID,
    "controller": True,
    "blockOwnerDeletion": True,
}
ALL_PERMISSIONS = {
    "rules": [rule()],
    "clusterRules": [rule(resources=("nodes",))],
    "roleRefs": [{"kind": "Role", "name": "reader"}, {"kind": "ClusterRole", "name": "view"}],
}


def kinds(objs: list[dict[str, Any]]) -> list[str]:
    return [o["kind"] for o in objs]


# --------------------------------------------------------------------------- which objects


@pytest.mark.parametrize(
    ("permissions", "with_bindings", "expected"),
    [
        ({}, True, ["ServiceAccount"]),
        ({"rules": [rule()]}, True, ["ServiceAccount", "Role", "RoleBinding"]),
        (
            {"roleRefs": [{"kind": "Role", "name": "reader"}]},
            True,
            ["ServiceAccount", "RoleBinding"],
        ),
        # A ClusterRole referenced by name is bound in the namespace only: no ClusterRoleBinding.
        (
            {"roleRefs": [{"kind": "ClusterRole", "name": "view"}]},
            True,
            ["ServiceAccount", "RoleBinding"],
        ),
        (
            {"clusterRules": [rule(resources=("nodes",))]},
            True,
            ["ServiceAccount", "ClusterRole", "ClusterRoleBinding"],
        ),
        (
            ALL_PERMISSIONS,
            True,
            [
                "ServiceAccount",
                "Role",
                "RoleBinding",
                "RoleBinding",
                "RoleBinding",
                "ClusterRole",
                "ClusterRoleBinding",
            ],
        ),
        # Revoked: the roles stay, no binding gives them to the ServiceAccount.
        (ALL_PERMISSIONS, False, ["ServiceAccount", "Role", "ClusterRole"]),
    ],
)
def test_desired_access_kinds(
    permissions: dict[str, Any], with_bindings: bool, expected: list[str]
) -> None:
    identity = make_identity(permissions=permissions)
    assert kinds(desired_access(identity, with_bindings=with_bindings)) == expected


def test_child_keys_are_unique() -> None:
    objs = desired_access(make_identity(permissions=ALL_PERMISSIONS))
    keys = [child_key(o) for o in objs]
    assert len(set(keys)) == len(keys)
    assert ChildKey("ClusterRole", "", f"nhi:{NAMESPACE}:{NAME}") in keys


# --------------------------------------------------------------------------- names


def test_child_names() -> None:
    identity = make_identity(serviceAccount={"name": "ledger-sa"}, permissions=ALL_PERMISSIONS)
    sa, role, binding, ref_role, ref_cluster, cluster_role, cluster_binding = desired_access(
        identity
    )
    assert sa["metadata"]["name"] == "ledger-sa"
    assert role["metadata"]["name"] == binding["metadata"]["name"] == f"nhi-{NAME}"
    assert ref_role["metadata"]["name"] == f"nhi:{NAME}:role:reader"
    assert ref_cluster["metadata"]["name"] == f"nhi:{NAME}:clusterrole:view"
    # Cluster-scoped names carry the namespace: two namespaces may hold the same identity name.
    assert cluster_role["metadata"]["name"] == f"nhi:{NAMESPACE}:{NAME}"
    assert cluster_binding["metadata"]["name"] == f"nhi:{NAMESPACE}:{NAME}"


def test_cluster_names_differ_between_namespaces() -> None:
    a = make_identity(namespace="team-a", permissions=ALL_PERMISSIONS)
    b = make_identity(namespace="team-b", permissions=ALL_PERMISSIONS)
    assert cluster_role_name(a) != cluster_role_name(b)
    assert role_name(a) == role_name(b)  # namespaced: the namespace tells them apart


def test_a_cluster_role_name_with_colons_is_kept_in_the_binding_name() -> None:
    identity = make_identity()
    ref = RoleRef("ClusterRole", "system:auth-delegator")
    assert role_ref_binding_name(identity, ref) == f"nhi:{NAME}:clusterrole:system:auth-delegator"


def test_derived_names_of_two_identities_never_collide() -> None:
    dotted = make_identity(name="a.role.x", permissions={"rules": [rule()]})
    plain = make_identity(name="a", permissions={"roleRefs": [{"kind": "Role", "name": "x"}]})
    names = {o["metadata"]["name"] for o in desired_access(dotted) if o["kind"] == "RoleBinding"}
    other = {o["metadata"]["name"] for o in desired_access(plain) if o["kind"] == "RoleBinding"}
    assert names and other and not names & other


NAME_FUNCS: list[Callable[[MachineIdentity], str]] = [
    role_name,
    cluster_role_name,
    lambda i: role_ref_binding_name(i, RoleRef("ClusterRole", "v" * 250)),
    lambda i: role_ref_binding_name(i, RoleRef("Role", "reader")),
]


@pytest.mark.parametrize("length", [63, 240, 249, 250, 253, 300])
@pytest.mark.parametrize("name_of", NAME_FUNCS)
def test_long_names_stay_bounded_and_stable(
    length: int, name_of: Callable[[MachineIdentity], str]
) -> None:
    def long_identity(last: str) -> MachineIdentity:
        return make_identity(name="a" * (length - 1) + last, serviceAccount={"name": "sa"})

    first, again, other = long_identity("x"), long_identity("x"), long_identity("y")
    assert len(name_of(first)) <= 253
    assert name_of(first) == name_of(again)  # deterministic: a re-run finds the same object
    assert name_of(first) != name_of(other)  # a hash keeps truncated names apart


def test_long_names_keep_their_readable_prefix() -> None:
    identity = make_identity(name="a" * 300, serviceAccount={"name": "sa"})
    name = role_name(identity)
    assert len(name) == 253
    assert name.startswith("nhi-aaaa")
    assert re.fullmatch(r"nhi-a+-[0-9a-f]{10}", name)


def test_short_names_are_not_hashed() -> None:
    identity = make_identity(name="a" * 249, serviceAccount={"name": "sa"})
    assert role_name(identity) == "nhi-" + "a" * 249  # exactly 253


def test_role_refs_that_differ_only_by_colon_get_distinct_bindings() -> None:
    identity = make_identity(
        permissions={
            "roleRefs": [
                {"kind": "ClusterRole", "name": "system:foo"},
                {"kind": "ClusterRole", "name": "system-foo"},
            ]
        }
    )
    keys = [child_key(o) for o in desired_access(identity)]
    assert len(set(keys)) == len(keys)


def test_binding_names_of_two_identities_never_collide() -> None:
    a = make_identity(name="a", permissions={"roleRefs": [{"kind": "Role", "name": "x"}]})
    b = make_identity(name="a-role-x", permissions={"rules": [rule()]})
    keys_a = {child_key(o) for o in desired_access(a) if o["kind"] != "ServiceAccount"}
    keys_b = {child_key(o) for o in desired_access(b) if o["kind"] != "ServiceAccount"}
    assert not keys_a & keys_b


# --------------------------------------------------------------------------- metadata


def test_namespaced_children_are_owned_and_labelled() -> None:
    identity = make_identity(permissions=ALL_PERMISSIONS)
    namespaced = [o for o in desired_access(identity) if not o["kind"].startswith("Cluster")]
    assert len(namespaced) == 5
    for obj in namespaced:
        meta = obj["metadata"]
        assert meta["namespace"] == NAMESPACE
        assert meta["labels"] == MANAGED
        assert meta["ownerReferences"] == [OWNER_REF]


def test_cluster_children_carry_the_namespace_label_and_no_owner() -> None:
    # An ownerReference from a cluster-scoped object to a namespaced one is invalid; the
    # namespace label is how the operator finds (and deletes) them.
    identity = make_identity(permissions=ALL_PERMISSIONS)
    for obj in (build_cluster_role(identity), build_cluster_role_binding(identity)):
        meta = obj["metadata"]
        assert "namespace" not in meta
        assert "ownerReferences" not in meta
        assert meta["labels"] == {**MANAGED, "nhi.dev/identity-namespace": NAMESPACE}


def test_service_account() -> None:
    sa = build_service_account(make_identity(serviceAccount={"automountToken": True}))
    assert sa["apiVersion"] == "v1"
    assert sa["metadata"]["annotations"] == {"nhi.dev/owner": OWNER}
    assert sa["automountServiceAccountToken"] is True
    assert build_service_account(make_identity())["automountServiceAccountToken"] is False


def test_role_and_binding() -> None:
    identity = make_identity(
        serviceAccount={"name": "ledger-sa"},
        permissions={"rules": [rule(), rule(resources=("secrets",), resourceNames=["ledger"])]},
    )
    role = build_role(identity)
    assert role["apiVersion"] == "rbac.authorization.k8s.io/v1"
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]},
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "verbs": ["get", "list"],
            "resourceNames": ["ledger"],
        },
    ]
    binding = build_role_binding(identity)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": f"nhi-{NAME}",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "ledger-sa", "namespace": NAMESPACE}
    ]


@pytest.mark.parametrize("kind", ["Role", "ClusterRole"])
def test_role_ref_binding_is_a_namespaced_role_binding(kind: str) -> None:
    identity = make_identity()
    binding = build_role_ref_binding(identity, RoleRef(kind, "view"))
    assert binding["kind"] == "RoleBinding"
    assert binding["metadata"]["namespace"] == NAMESPACE
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": kind,
        "name": "view",
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}]


def test_cluster_role_and_binding() -> None:
    identity = make_identity(
        permissions={"clusterRules": [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]}
    )
    assert build_cluster_role(identity)["rules"] == [
        {"nonResourceURLs": ["/metrics"], "verbs": ["get"]}
    ]
    binding = build_cluster_role_binding(identity)
    assert binding["roleRef"]["kind"] == "ClusterRole"
    assert binding["roleRef"]["name"] == cluster_role_name(identity)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}]


# --------------------------------------------------------------------------- drift


def _set(*path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(obj: dict[str, Any]) -> None:
        *parents, leaf = path
        for p in parents:
            obj = obj[p]
        obj[leaf] = value

    return mutate


def _drop(*path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(obj: dict[str, Any]) -> None:
        *parents, leaf = path
        for p in parents:
            obj = obj[p]
        del obj[leaf]

    return mutate


def _noop(obj: dict[str, Any]) -> None:
    return None


def _add_empty_resource_names(obj: dict[str, Any]) -> None:
    obj["rules"][0]["resourceNames"] = []


def _add_owner(obj: dict[str, Any]) -> None:
    obj["metadata"]["ownerReferences"].append({"uid": "someone-else", "kind": "Deployment"})


def _add_subject(obj: dict[str, Any]) -> None:
    obj["subjects"].append({"kind": "User", "name": "mallory"})


def _edit_rule(obj: dict[str, Any]) -> None:
    obj["rules"][0]["verbs"].append("delete")


BUILD = {
    "ServiceAccount": build_service_account,
    "Role": build_role,
    "RoleBinding": build_role_binding,
    "ClusterRole": build_cluster_role,
    "ClusterRoleBinding": build_cluster_role_binding,
}

DRIFT_CASES = [
    # (id, kind, mutation of the server's copy, differs)
    *[(f"{k} in sync", k, _noop, False) for k in BUILD],
    ("Role rules edited", "Role", _edit_rule, True),
    ("Role rules emptied", "Role", _set("rules", value=[]), True),
    ("ClusterRole rules edited", "ClusterRole", _edit_rule, True),
    ("Role empty resourceNames omitted", "Role", _add_empty_resource_names, False),
    ("RoleBinding subject added", "RoleBinding", _add_subject, True),
    (
        "RoleBinding subject renamed",
        "RoleBinding",
        _set("subjects", value=[{"kind": "User"}]),
        True,
    ),
    ("RoleBinding roleRef changed", "RoleBinding", _set("roleRef", "name", value="admin"), True),
    ("ClusterRoleBinding subjects removed", "ClusterRoleBinding", _drop("subjects"), True),
    (
        "ClusterRoleBinding roleRef changed",
        "ClusterRoleBinding",
        _set("roleRef", "name", value="x"),
        True,
    ),
    (
        "SA automount flipped",
        "ServiceAccount",
        _set("automountServiceAccountToken", value=True),
        True,
    ),
    ("SA automount removed", "ServiceAccount", _drop("automountServiceAccountToken"), True),
    (
        "SA owner annotation edited",
        "ServiceAccount",
        _set("metadata", "annotations", value={}),
        True,
    ),
    ("identity label removed", "Role", _drop("metadata", "labels", "nhi.dev/identity"), True),
    (
        "managed-by label changed",
        "RoleBinding",
        _set("metadata", "labels", "app.kubernetes.io/managed-by", value="helm"),
        True,
    ),
    (
        "namespace label of a cluster object removed",
        "ClusterRole",
        _drop("metadata", "labels", "nhi.dev/identity-namespace"),
        True,
    ),
    ("ownerReference removed", "Role", _set("metadata", "ownerReferences", value=[]), True),
    ("another ownerReference added", "Role", _add_owner, False),
    (
        "SA secrets listed by the server",
        "ServiceAccount",
        _set("secrets", value=[{"name": "t"}]),
        False,
    ),
    ("server metadata changed", "Role", _set("metadata", "resourceVersion", value="999"), False),
]


@pytest.mark.parametrize(
    ("kind", "mutate", "expected"),
    [pytest.param(k, m, e, id=i) for i, k, m, e in DRIFT_CASES],
)
def test_differs(kind: str, mutate: Callable[[dict[str, Any]], None], expected: bool) -> None:
    identity = make_identity(permissions=ALL_PERMISSIONS)
    desired = BUILD[kind](identity)
    actual = server_copy(desired)
    mutate(actual)
    assert differs(desired, actual) is expected


def test_differs_when_missing() -> None:
    assert differs(build_service_account(make_identity()), None)


def test_differs_does_not_mutate() -> None:
    identity = make_identity(permissions=ALL_PERMISSIONS)
    desired = build_role(identity)
    actual = server_copy(desired)
    before = (copy.deepcopy(desired), copy.deepcopy(actual))
    differs(desired, actual)
    assert (desired, actual) == before


# --------------------------------------------------------------------------- Secrets


@pytest.mark.parametrize(
    ("ctype", "secret_type"),
    [
        ("ServiceAccountToken", "Opaque"),
        ("X509", "kubernetes.io/tls"),
        ("StaticSecret", "Opaque"),
    ],
)
def test_credential_secret_type(ctype: str, secret_type: str) -> None:
    identity = make_identity(credentials=[credential("c", ctype)])
    (cred,) = identity.spec.credentials
    secret = build_credential_secret(identity, cred, None, {})
    assert secret["type"] == secret_type
    assert secret["metadata"]["annotations"]["nhi.dev/credential-type"] == ctype


def test_credential_secret_metadata() -> None:
    identity = make_identity(credentials=[credential("api-token", secretName="ledger-token")])
    (cred,) = identity.spec.credentials
    secret = build_credential_secret(identity, cred, None, {"nhi.dev/serial": "42"})
    assert secret["apiVersion"] == "v1"
    assert secret["kind"] == "Secret"
    meta = secret["metadata"]
    assert meta["name"] == "ledger-token"
    assert meta["namespace"] == NAMESPACE
    assert meta["labels"] == {**MANAGED, "nhi.dev/credential": "api-token"}
    assert meta["annotations"] == {
        "nhi.dev/credential-type": "ServiceAccountToken",
        "nhi.dev/serial": "42",
    }
    assert meta["ownerReferences"] == [OWNER_REF]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (None, None),  # a token's anchor: the Secret exists before the token is written
        ({}, {}),
        ({"token": b"eyJhbGciOi"}, {"token": base64.b64encode(b"eyJhbGciOi").decode()}),
        (
            {"tls.crt": b"-----BEGIN CERTIFICATE-----\n", "tls.key": b"\x00\xff\x10"},
            {
                "tls.crt": "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==",
                "tls.key": "AP8Q",
            },
        ),
    ],
)
def test_credential_secret_data_is_base64(
    data: dict[str, bytes] | None, expected: dict[str, str] | None
) -> None:
    identity = make_identity(credentials=[credential("c", "X509")])
    (cred,) = identity.spec.credentials
    secret = build_credential_secret(identity, cred, data, {})
    if expected is None:
        assert "data" not in secret
        assert "stringData" not in secret
    else:
        assert secret["data"] == expected
        assert {k: base64.b64decode(v) for k, v in secret["data"].items()} == data


@pytest.mark.parametrize(
    ("fields", "expected_spec"),
    [
        (
            {},
            {
                "expirationSeconds": 3600,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "name": "tok-secret",
                    "uid": "secret-uid",
                },
            },
        ),
        (
            {"ttl": "48h", "audiences": ["vault", "https://ledger.example"]},
            {
                "expirationSeconds": 172800,
                "audiences": ["vault", "https://ledger.example"],
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "name": "tok-secret",
                    "uid": "secret-uid",
                },
            },
        ),
        (
            {"ttl": "10m30.9s"},
            {
                "expirationSeconds": 630,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "name": "tok-secret",
                    "uid": "secret-uid",
                },
            },
        ),
    ],
)
def test_token_request(fields: dict[str, Any], expected_spec: dict[str, Any]) -> None:
    (cred,) = make_identity(credentials=[credential("tok", **fields)]).spec.credentials
    request = token_request(cred, "tok-secret", "secret-uid")
    assert request == {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": expected_spec,
    }
    assert isinstance(request["spec"]["expirationSeconds"], int)

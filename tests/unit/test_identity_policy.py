"""IdentityPolicy: the model, the pure checks, the admission review, status and webhook TLS."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from nhi.models.identity import MachineIdentity, Spec, SpecError
from nhi.models.policy import IdentityPolicy
from nhi.policies import identity_policy as ip
from nhi.policies.cluster import check_cluster_permissions
from nhi.reconcilers.policy import AdmissionReviewer, Requester
from nhi.reconcilers.policy_status import compute_policy_status
from tests.unit.factories import NAMESPACE, T0, credential, make_body, make_identity, rule

pytestmark = pytest.mark.unit


def policy(name: str = "baseline", **spec: Any) -> IdentityPolicy:
    return IdentityPolicy.from_body({"metadata": {"name": name}, "spec": spec})


def fields(violations: list[ip.Violation]) -> list[tuple[str, str]]:
    return [(v.rule, v.field) for v in violations]


# ------------------------------------------------------------------------------ the model


def test_policy_defaults_follow_the_crd() -> None:
    p = policy()
    assert p.enforcement == "Deny"
    assert p.require_owner and p.forbid_wildcards
    assert not p.allow_cluster_rules and not p.delegate_permissions
    assert p.allowed_cluster_roles == ()
    assert p.allowed_issuers is None  # omitted: any issuer
    assert p.max_ttl == () and p.max_valid_for is None
    assert p.select_all


def test_policy_fields_are_parsed() -> None:
    p = policy(
        enforcement="Warn",
        maxTTL={"ServiceAccountToken": "24h", "X509": "90m"},
        maxValidFor="720h",
        forbiddenRules=[{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}],
        allowedIssuers=[{"kind": "IdentityIssuer", "name": "team-ca"}],
        delegatePermissions=True,
        forbidWildcards=False,
    )
    assert p.enforcement == "Warn"
    assert p.max_ttl_for("ServiceAccountToken") == dt.timedelta(hours=24)
    assert p.max_ttl_for("X509") == dt.timedelta(minutes=90)
    assert p.max_ttl_for("StaticSecret") is None
    assert p.max_valid_for == dt.timedelta(hours=720)
    assert p.forbidden_rules[0].resources == ("secrets",)
    assert p.allowed_issuers is not None and p.allowed_issuers[0].name == "team-ca"
    assert p.delegate_permissions and not p.forbid_wildcards


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"enforcement": "Audit"}, "spec.enforcement"),
        ({"maxTTL": {"X509": "forever"}}, "spec.maxTTL.X509"),
        ({"maxValidFor": "1 day"}, "spec.maxValidFor"),
        ({"forbiddenRules": [{"apiGroups": "x"}]}, "spec.forbiddenRules[0].apiGroups"),
    ],
)
def test_invalid_policy_names_the_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as err:
        policy(**spec)
    assert err.value.path == field


# ------------------------------------------------------------------------------ evaluate

TOKEN_48H = {"credentials": [credential(ttl="48h")]}
CASES: list[tuple[str, dict[str, Any], dict[str, Any], list[tuple[str, str]]]] = [
    # (case, policy spec, identity spec overrides, expected (rule, field) violations)
    ("maxTTL over", {"maxTTL": {"ServiceAccountToken": "24h"}}, TOKEN_48H,
     [("maxTTL", "spec.credentials[0].ttl")]),
    ("maxTTL at the limit", {"maxTTL": {"ServiceAccountToken": "48h"}}, TOKEN_48H, []),
    ("maxTTL other type", {"maxTTL": {"X509": "1h"}}, TOKEN_48H, []),
    ("maxTTL default ttl", {"maxTTL": {"StaticSecret": "24h"}},
     {"credentials": [credential("k", "StaticSecret")]},  # default 720h
     [("maxTTL", "spec.credentials[0].ttl")]),
    ("maxValidFor missing", {"maxValidFor": "72h"}, {},
     [("maxValidFor", "spec.lifetime.validFor")]),
    ("maxValidFor over", {"maxValidFor": "72h"}, {"lifetime": {"validFor": "100h"}},
     [("maxValidFor", "spec.lifetime.validFor")]),
    ("maxValidFor within", {"maxValidFor": "72h"}, {"lifetime": {"validFor": "72h"}}, []),
    ("wildcard verb", {}, {"permissions": {"rules": [rule(verbs=("*",))]}},
     [("forbidWildcards", "spec.permissions.rules[0].verbs")]),
    ("wildcard resource and group", {},
     {"permissions": {"clusterRules": [rule(resources=("*",), api_groups=("*",))]}},
     [("forbidWildcards", "spec.permissions.clusterRules[0].apiGroups"),
      ("forbidWildcards", "spec.permissions.clusterRules[0].resources"),
      ("allowClusterRules", "spec.permissions.clusterRules")]),
    ("wildcard subresource", {}, {"permissions": {"rules": [rule(resources=("*/scale",))]}},
     [("forbidWildcards", "spec.permissions.rules[0].resources")]),
    ("wildcards allowed", {"forbidWildcards": False},
     {"permissions": {"rules": [rule(verbs=("*",))]}}, []),
    ("forbidden overlap", {"forbiddenRules": [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["list", "watch"]}]},
     {"permissions": {"rules": [rule(resources=("configmaps", "secrets"), verbs=("get", "list"))]}},
     [("forbiddenRules[0]", "spec.permissions.rules[0]")]),
    ("forbidden other verb", {"forbiddenRules": [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["list", "watch"]}]},
     {"permissions": {"rules": [rule(resources=("secrets",), verbs=("get",))]}}, []),
    ("forbidden other group", {"forbiddenRules": [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}]},
     {"permissions": {"rules": [rule(resources=("secrets",), api_groups=("example.com",))]}},
     []),
    ("forbidden wildcard in policy", {"forbiddenRules": [
        {"apiGroups": ["*"], "resources": ["pods/exec"], "verbs": ["*"]}]},
     {"permissions": {"rules": [rule(resources=("pods/exec",), verbs=("create",))]}},
     [("forbiddenRules[0]", "spec.permissions.rules[0]")]),
    ("wildcard verb meets forbidden", {"forbidWildcards": False, "forbiddenRules": [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}]},
     {"permissions": {"rules": [rule(resources=("secrets",), verbs=("*",))]}},
     [("forbiddenRules[0]", "spec.permissions.rules[0]")]),
    ("forbidden subresource form", {"forbidWildcards": False, "forbiddenRules": [
        {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["update"]}]},
     {"permissions": {"rules": [rule(resources=("*/scale",), api_groups=("apps",),
                                     verbs=("update",))]}},
     [("forbiddenRules[0]", "spec.permissions.rules[0]")]),
    ("forbidden applies to cluster rules", {"allowClusterRules": True, "forbiddenRules": [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["delete"]}]},
     {"permissions": {"clusterRules": [rule(resources=("nodes",), verbs=("delete",))]}},
     [("forbiddenRules[0]", "spec.permissions.clusterRules[0]")]),
    ("cluster role not listed", {"allowedClusterRoles": ["view"]},
     {"permissions": {"roleRefs": [{"kind": "ClusterRole", "name": "edit"}]}},
     [("allowedClusterRoles", "spec.permissions.roleRefs[0]")]),
    ("cluster role omitted list", {},
     {"permissions": {"roleRefs": [{"kind": "ClusterRole", "name": "view"}]}},
     [("allowedClusterRoles", "spec.permissions.roleRefs[0]")]),
    ("cluster role listed", {"allowedClusterRoles": ["view"]},
     {"permissions": {"roleRefs": [{"kind": "ClusterRole", "name": "view"},
                                   {"kind": "Role", "name": "anything"}]}}, []),
    ("issuer not allowed", {"allowedIssuers": [{"kind": "ClusterIdentityIssuer", "name": "a"}]},
     {"credentials": [credential("m", "X509", issuerRef={"name": "b"})]},
     [("allowedIssuers", "spec.credentials[0].issuerRef")]),
    ("issuer kind matters", {"allowedIssuers": [{"kind": "ClusterIdentityIssuer", "name": "a"}]},
     {"credentials": [credential("m", "X509", issuerRef={"kind": "IdentityIssuer", "name": "a"})]},
     [("allowedIssuers", "spec.credentials[0].issuerRef")]),
    ("issuer allowed", {"allowedIssuers": [{"kind": "ClusterIdentityIssuer", "name": "a"}]},
     {"credentials": [credential("m", "X509", issuerRef={"name": "a"})]}, []),
    ("issuers omitted", {}, {"credentials": [credential("m", "X509")]}, []),
    ("vault issuer not allowed",
     {"allowedIssuers": [{"kind": "ClusterIdentityIssuer", "name": "a"}]},
     {"vault": {"issuerRef": {"name": "vault-pki"}}},
     [("allowedIssuers", "spec.vault.issuerRef")]),
    ("vault issuer allowed", {"allowedIssuers": [{"kind": "ClusterIdentityIssuer", "name": "a"}]},
     {"vault": {"issuerRef": {"name": "a"}}}, []),
    ("cluster rules refused", {},
     {"permissions": {"clusterRules": [rule(resources=("nodes",))]}},
     [("allowClusterRules", "spec.permissions.clusterRules")]),
    ("cluster rules allowed", {"allowClusterRules": True},
     {"permissions": {"clusterRules": [rule(resources=("nodes",))]}}, []),
    ("compliant", {"maxTTL": {"ServiceAccountToken": "24h"}, "allowedClusterRoles": ["view"]},
     {"permissions": {"rules": [rule()], "roleRefs": [{"kind": "ClusterRole", "name": "view"}]},
      "credentials": [credential(ttl="1h")]}, []),
]  # fmt: skip


@pytest.mark.parametrize(
    ("policy_spec", "overrides", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_evaluate(
    policy_spec: dict[str, Any], overrides: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    violations = ip.evaluate(make_identity(**overrides), [policy(**policy_spec)], {})
    assert fields(violations) == expected
    for v in violations:
        assert v.message.startswith(f'IdentityPolicy "baseline" ({v.rule}): {v.field} ')
        assert v.denies


def test_max_ttl_message_names_policy_rule_field_and_limit() -> None:
    [v] = ip.evaluate(
        make_identity(**TOKEN_48H), [policy(maxTTL={"ServiceAccountToken": "24h"})], {}
    )
    assert v.message == (
        'IdentityPolicy "baseline" (maxTTL): spec.credentials[0].ttl 48h exceeds the maximum '
        "24h for ServiceAccountToken"
    )
    assert (v.policy, v.rule, v.field, v.enforcement) == (
        "baseline",
        "maxTTL",
        "spec.credentials[0].ttl",
        "Deny",
    )


def test_forbidden_rule_message_names_the_grant() -> None:
    p = policy(forbiddenRules=[{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}])
    [v] = ip.evaluate(make_identity(permissions={"rules": [rule(resources=("secrets",))]}), [p], {})
    assert "grants list on secrets" in v.message


def test_require_owner_is_checked_on_the_model() -> None:
    # The schema and the model already refuse a blank owner; the policy is defence in depth.
    identity = MachineIdentity(NAMESPACE, "x", "u", 1, Spec(owner=" ", service_account="x"))
    assert fields(ip.evaluate(identity, [policy()], {})) == [("requireOwner", "spec.owner")]
    assert ip.evaluate(identity, [policy(requireOwner=False)], {}) == []


def test_warn_policies_warn_and_every_selecting_policy_applies() -> None:
    identity = make_identity(
        credentials=[credential(ttl="48h")],
        permissions={"roleRefs": [{"kind": "ClusterRole", "name": "view"}]},
    )
    loose = policy("a-loose", enforcement="Warn", maxTTL={"ServiceAccountToken": "24h"})
    strict = policy("b-strict", allowedClusterRoles=[])
    other = policy("c-other", namespaceSelector={"matchLabels": {"team": "b"}})
    violations = ip.evaluate(identity, [strict, other, loose], {"team": "a"})
    # a-loose does not list view either: it warns about that too.
    assert [(v.policy, v.rule, v.enforcement) for v in violations] == [
        ("a-loose", "maxTTL", "Warn"),
        ("a-loose", "allowedClusterRoles", "Warn"),
        ("b-strict", "allowedClusterRoles", "Deny"),
    ]
    assert [v.policy for v in ip.denials(violations)] == ["b-strict"]
    assert {v.policy for v in ip.warnings(violations)} == {"a-loose"}
    assert ip.summary(violations).count("IdentityPolicy") == 3


def test_only_selecting_policies_apply() -> None:
    identity = make_identity(credentials=[credential(ttl="48h")])
    p = policy(
        namespaceSelector={"matchLabels": {"env": "prod"}}, maxTTL={"ServiceAccountToken": "1h"}
    )
    assert ip.evaluate(identity, [p], {"env": "dev"}) == []
    assert len(ip.evaluate(identity, [p], {"env": "prod"})) == 1
    assert ip.evaluate(identity, [], {}) == []


def test_delegation_needs_a_selecting_policy() -> None:
    p = policy(delegatePermissions=True, namespaceSelector={"matchLabels": {"env": "dev"}})
    assert ip.delegates_permissions([p], {"env": "dev"})
    assert not ip.delegates_permissions([p], {"env": "prod"})
    assert not ip.delegates_permissions([policy()], {})


def test_cluster_permissions_check_keeps_working() -> None:
    spec = make_identity(permissions={"clusterRules": [rule(resources=("nodes",))]}).spec
    assert not check_cluster_permissions(spec, [], {}).allowed
    assert check_cluster_permissions(spec, [policy(allowClusterRules=True)], {}).allowed


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (dt.timedelta(hours=48), "48h"),
        (dt.timedelta(hours=1, minutes=30), "1h30m"),
        (dt.timedelta(seconds=90), "1m30s"),
        (dt.timedelta(0), "0s"),
        (dt.timedelta(seconds=1.5), "1.5s"),
    ],
)
def test_short_duration(delta: dt.timedelta, text: str) -> None:
    assert ip.short_duration(delta) == text


# ------------------------------------------------------------------------------ access


def test_grant_checks_cover_every_combination() -> None:
    identity = make_identity(
        permissions={
            "rules": [
                rule(
                    resources=("configmaps", "pods/log"), verbs=("get",), resourceNames=["a", "b"]
                ),
                rule(resources=("configmaps",), verbs=("get",), resourceNames=["a"]),  # dup
            ],
            "clusterRules": [
                rule(resources=("nodes",), verbs=("list",)),
                {"nonResourceURLs": ["/healthz"], "verbs": ["get"]},
            ],
        }
    )
    checks = ip.grant_checks(identity)
    described = [c.describe() for c in checks]
    assert described == [
        f"get configmaps named 'a' in namespace {NAMESPACE}",
        f"get configmaps named 'b' in namespace {NAMESPACE}",
        f"get pods/log named 'a' in namespace {NAMESPACE}",
        f"get pods/log named 'b' in namespace {NAMESPACE}",
        "list nodes cluster-wide",
        "get /healthz",
    ]
    assert checks[2].review_spec() == {
        "resourceAttributes": {
            "verb": "get",
            "group": "",
            "resource": "pods",
            "subresource": "log",
            "name": "a",
            "namespace": NAMESPACE,
        }
    }
    assert checks[-1].review_spec() == {
        "nonResourceAttributes": {"path": "/healthz", "verb": "get"}
    }


def test_role_bind_checks() -> None:
    identity = make_identity(
        permissions={
            "roleRefs": [{"kind": "Role", "name": "r"}, {"kind": "ClusterRole", "name": "view"}]
        }
    )
    checks = ip.role_bind_checks(identity)
    assert [(c.verb, c.resource, c.name, c.namespace, c.group) for c in checks] == [
        ("bind", "roles", "r", NAMESPACE, "rbac.authorization.k8s.io"),
        ("bind", "clusterroles", "view", NAMESPACE, "rbac.authorization.k8s.io"),
    ]


def test_raw_rule_checks_skip_non_resource_urls_in_a_namespace() -> None:
    raw = {"nonResourceURLs": ["/metrics"], "verbs": ["get"]}
    assert ip.raw_rule_checks("f", raw, "ns") == []
    assert len(ip.raw_rule_checks("f", raw, "")) == 1


def test_spec_changed() -> None:
    a = make_body()
    b = make_body(annotations={"x": "y"})
    assert not ip.spec_changed(a, b)
    assert ip.spec_changed(a, make_body(purpose="other"))
    assert ip.spec_changed(None, a)


# ------------------------------------------------------------------------------ admission


class FakeApi:
    """Answers SubjectAccessReviews from a set of (user, verb, resource, name) grants."""

    def __init__(
        self,
        grants: set[tuple[str, ...]],
        roles: dict[str, Any] | None = None,
        objects: dict[tuple[str, str], dict[str, Any]] | None = None,
        identities: list[dict[str, Any]] | None = None,
    ) -> None:
        self.grants = grants
        self.roles = roles or {}
        self.reviews: list[dict[str, Any]] = []
        #: (kind, name) -> object that exists in the identity's namespace.
        self.objects = objects or {}
        self.identities = identities or []

    async def get_metadata(self, kind: str, namespace: str | None, name: str) -> Any:
        return self.objects.get((kind, name))

    async def list(self, kind: str, namespace: str | None = None, **_: Any) -> Any:
        assert kind == "MachineIdentity"
        return self.identities

    async def request(self, method: str, path: str, **kw: Any) -> Any:
        if path.endswith("subjectaccessreviews"):
            spec = kw["body"]["spec"]
            self.reviews.append(spec)
            attrs = spec.get("resourceAttributes") or spec.get("nonResourceAttributes")
            key = (spec["user"], attrs["verb"], attrs.get("resource", attrs.get("path")))
            allowed = key in self.grants or (*key, attrs.get("name", "")) in self.grants
            return {"status": {"allowed": allowed}}
        name = kw["params"]["fieldSelector"].split("=", 1)[1]
        role = self.roles.get(name)
        return {"items": [role] if role else []}


ALICE = {"username": "alice", "groups": ["devs"], "uid": "42", "extra": {"scopes": ["a"]}}


async def review(
    api: FakeApi,
    body: dict[str, Any],
    policies: list[IdentityPolicy] | None = None,
    operation: str = "CREATE",
    old: dict[str, Any] | None = None,
) -> Any:
    reviewer = AdmissionReviewer(api)  # type: ignore[arg-type]
    return await reviewer.review(
        operation=operation,
        new=body,
        old=old,
        userinfo=ALICE,
        policies=policies or [],
        namespace_labels={},
    )


async def test_requester_must_hold_what_the_identity_grants() -> None:
    body = make_body(permissions={"rules": [rule(resources=("secrets",), verbs=("get",))]})
    api = FakeApi(set())
    result = await review(api, body)
    assert not result.allowed
    assert result.denied[0].startswith("spec.permissions.rules[0]: alice may not grant get secrets")
    assert "privilege escalation" in result.denied[0]
    # The whole userInfo goes into the review.
    assert api.reviews[0]["groups"] == ["devs"]
    assert api.reviews[0]["uid"] == "42"
    assert api.reviews[0]["extra"] == {"scopes": ["a"]}

    api = FakeApi({("alice", "get", "secrets")})
    assert (await review(api, body)).allowed


async def test_delegate_permissions_skips_the_check() -> None:
    body = make_body(permissions={"rules": [rule(resources=("secrets",), verbs=("get",))]})
    api = FakeApi(set())
    assert (await review(api, body, [policy(delegatePermissions=True)])).allowed
    assert api.reviews == []


async def test_role_refs_need_bind_or_every_rule_of_the_role() -> None:
    body = make_body(permissions={"roleRefs": [{"kind": "Role", "name": "reader"}]})
    roles = {"reader": {"rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}}
    denied = await review(FakeApi(set(), roles), body)
    assert "may not bind Role 'reader'" in denied.message
    assert f"get pods in namespace {NAMESPACE}" in denied.message
    assert (await review(FakeApi({("alice", "bind", "roles", "reader")}, roles), body)).allowed
    assert (await review(FakeApi({("alice", "get", "pods")}, roles), body)).allowed
    missing = await review(FakeApi(set()), body)
    assert "does not exist" in missing.message


async def test_warn_admits_with_warnings_and_deny_refuses() -> None:
    body = make_body(credentials=[credential(ttl="48h")])
    api = FakeApi(set())
    warn = await review(
        api, body, [policy(enforcement="Warn", maxTTL={"ServiceAccountToken": "1h"})]
    )
    assert warn.allowed and "(maxTTL)" in warn.warnings[0]
    deny = await review(api, body, [policy(maxTTL={"ServiceAccountToken": "1h"})])
    assert not deny.allowed and "(maxTTL)" in deny.message


async def test_metadata_only_updates_and_deletions_are_never_refused() -> None:
    bad = make_body(credentials=[credential(ttl="48h")])
    strict = [policy(maxTTL={"ServiceAccountToken": "1h"})]
    api = FakeApi(set())
    finalized = make_body(credentials=[credential(ttl="48h")])
    finalized["metadata"]["finalizers"] = ["nhi.dev/finalizer"]
    assert (await review(api, finalized, strict, "UPDATE", old=bad)).allowed
    changed = make_body(credentials=[credential(ttl="49h")])
    assert not (await review(api, changed, strict, "UPDATE", old=bad)).allowed
    changed["metadata"]["deletionTimestamp"] = "2030-01-01T00:00:00Z"
    assert (await review(api, changed, strict, "UPDATE", old=bad)).allowed


async def test_cluster_rules_without_any_policy_are_refused_at_admission() -> None:
    body = make_body(permissions={"clusterRules": [rule(resources=("nodes",))]})
    api = FakeApi({("alice", "get", "nodes"), ("alice", "list", "nodes")})
    result = await review(api, body)
    identity = MachineIdentity.from_body(body)
    assert result.denied == [check_cluster_permissions(identity.spec, [], {}).message]
    assert result.denied[0].startswith("spec.permissions.clusterRules")


def test_requester_from_userinfo() -> None:
    r = Requester.from_userinfo(ALICE)
    assert r.review_spec() == {
        "user": "alice",
        "groups": ["devs"],
        "uid": "42",
        "extra": {"scopes": ["a"]},
    }


# ------------------------------------------------------------------------------ status


def _policy_body(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "baseline", "generation": 2}, "spec": spec}


def test_policy_status_counts_covered_and_violating() -> None:
    ok = make_identity(name="ok")
    bad = make_identity(name="bad", credentials=[credential(ttl="48h")])
    elsewhere = make_identity(name="far", namespace="other", credentials=[credential(ttl="48h")])
    labels = {NAMESPACE: {"team": "a"}, "other": {"team": "b"}}
    body = _policy_body(
        namespaceSelector={"matchLabels": {"team": "a"}}, maxTTL={"ServiceAccountToken": "1h"}
    )
    status = compute_policy_status(
        body,
        [ok, bad, elsewhere, None],
        [NAMESPACE, NAMESPACE, "other", NAMESPACE],
        lambda ns: labels.get(ns, {}),
        T0,
    )
    assert status["identitiesCovered"] == 3
    assert status["identitiesViolating"] == 1
    assert status["observedGeneration"] == 2
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and "1 breaks the policy" in ready["message"]

    # Recomputing later with nothing changed keeps the transition time (no status churn).
    again = compute_policy_status(
        {**body, "status": status},
        [ok, bad, elsewhere, None],
        [NAMESPACE, NAMESPACE, "other", NAMESPACE],
        lambda ns: labels.get(ns, {}),
        T0 + dt.timedelta(hours=1),
    )
    assert again == status


def test_invalid_policy_status_is_stalled() -> None:
    status = compute_policy_status(_policy_body(maxValidFor="soon"), [], [], lambda ns: {}, T0)
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True" and "spec.maxValidFor" in stalled["message"]


def test_needs_review_skips_metadata_only_updates_and_deletions() -> None:
    from nhi.reconcilers.policy import needs_review

    body = make_body()
    assert needs_review("CREATE", body, None)
    assert not needs_review("UPDATE", make_body(labels={"a": "b"}), body)
    assert needs_review("UPDATE", make_body(purpose="x"), body)
    deleting = make_body(purpose="x")
    deleting["metadata"]["deletionTimestamp"] = "2030-01-01T00:00:00Z"
    assert not needs_review("UPDATE", deleting, body)
    assert not needs_review("DELETE", None, body)


async def test_status_writer_patches_only_what_changed() -> None:
    from nhi.reconcilers.policy_status import PolicyStatusWriter

    class Recorder:
        def __init__(self) -> None:
            self.patches: list[tuple[str, dict[str, Any]]] = []

        async def patch(self, kind: str, ns: Any, name: str, body: Any, **kw: Any) -> Any:
            assert (kind, kw.get("subresource")) == ("IdentityPolicy", "status")
            self.patches.append((name, body))
            return {}

    api = Recorder()
    writer = PolicyStatusWriter(api, lambda: T0)  # type: ignore[arg-type]
    pol = _policy_body(maxTTL={"ServiceAccountToken": "1h"})
    bodies = [make_body(name="a"), make_body(name="b", credentials=[credential(ttl="2h")])]
    assert await writer.sync([pol], bodies, lambda ns: {}) == 1
    [(name, patch)] = api.patches
    assert name == "baseline"
    assert (patch["status"]["identitiesCovered"], patch["status"]["identitiesViolating"]) == (2, 1)
    # The cache now holds the written status: nothing to do.
    pol["status"] = patch["status"]
    assert await writer.sync([pol], bodies, lambda ns: {}) == 0
    # An identity being deleted no longer counts.
    bodies[1]["metadata"]["deletionTimestamp"] = "2030-01-01T00:00:00Z"
    assert await writer.sync([pol], bodies, lambda ns: {}) == 1
    assert api.patches[-1][1]["status"]["identitiesCovered"] == 1

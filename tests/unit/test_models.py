"""The MachineIdentity and IdentityPolicy models: defaults, label selectors, durations, and
errors that name the field and the rule (what a user sees in the Ready condition)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from nhi.models.duration import format_duration, parse_duration, parse_time, rfc3339
from nhi.models.identity import (
    DEFAULT_TTL,
    Credential,
    Generator,
    IssuerRef,
    LabelSelector,
    MachineIdentity,
    PolicyRule,
    RoleRef,
    SpecError,
    parse_spec,
)
from tests.unit.factories import (
    NAME,
    NAMESPACE,
    OMIT,
    OWNER,
    UID,
    credential,
    make_body,
    make_identity,
    make_policy,
    rule,
)

pytestmark = pytest.mark.unit

H = dt.timedelta(hours=1)
M = dt.timedelta(minutes=1)
S = dt.timedelta(seconds=1)

# --------------------------------------------------------------------------- defaults


def test_minimal_spec_defaults() -> None:
    identity = make_identity()
    spec = identity.spec
    assert spec.owner == OWNER
    assert spec.service_account == NAME  # serviceAccount.name defaults to metadata.name
    assert spec.automount_token is False
    assert spec.renew_before_fraction == 0.33
    assert spec.renew_before is None
    assert spec.valid_for is None
    assert spec.on_workload_deletion == "Revoke"
    assert spec.grace_period == 2 * M
    assert spec.purpose == ""
    assert spec.selector.empty
    assert spec.rollout_on_rotation is False
    assert (spec.rules, spec.cluster_rules, spec.role_refs, spec.credentials) == ((),) * 4
    assert not spec.wants_cluster_permissions


def test_identity_metadata() -> None:
    body = make_body(
        generation=7,
        annotations={"nhi.dev/adopt": "true"},
        labels={"team": "payments"},
        status={"phase": "Active"},
    )
    body["metadata"]["deletionTimestamp"] = "2030-01-01T00:00:00Z"
    identity = MachineIdentity.from_body(body)
    assert identity.key == (NAMESPACE, NAME)
    assert identity.uid == UID
    assert identity.generation == 7
    assert identity.annotations == {"nhi.dev/adopt": "true"}
    assert identity.labels == {"team": "payments"}
    assert identity.status == {"phase": "Active"}
    assert identity.deleting
    assert not make_identity().deleting


def test_owner_is_trimmed() -> None:
    assert make_identity(owner="  team-payments \n").spec.owner == "team-payments"


def test_explicit_fields() -> None:
    spec = make_identity(
        purpose="reads the ledger",
        serviceAccount={"name": "ledger-reader", "automountToken": True},
        workloads={"selector": {"matchLabels": {"app": "ledger"}}, "rolloutOnRotation": True},
        rotation={"renewBefore": "15m"},
        lifetime={"validFor": "720h"},
        revocation={"onWorkloadDeletion": "Retain", "gracePeriod": "10m"},
    ).spec
    assert spec.purpose == "reads the ledger"
    assert spec.service_account == "ledger-reader"
    assert spec.automount_token is True
    assert spec.selector == LabelSelector(match_labels=(("app", "ledger"),))
    assert spec.rollout_on_rotation is True
    assert spec.renew_before == 15 * M
    assert spec.renew_before_fraction is None  # one or the other, never both
    assert spec.valid_for == 720 * H
    assert spec.on_workload_deletion == "Retain"
    assert spec.grace_period == 10 * M


def test_permissions_are_parsed_in_order() -> None:
    spec = make_identity(
        permissions={
            "rules": [rule(resources=("configmaps",), resourceNames=["ledger"])],
            "clusterRules": [
                {"nonResourceURLs": ["/healthz"], "verbs": ["get"]},
                rule(api_groups=("apps",), resources=("deployments",), verbs=("list",)),
            ],
            "roleRefs": [
                {"kind": "Role", "name": "reader"},
                {"kind": "ClusterRole", "name": "view"},
            ],
        }
    ).spec
    assert spec.rules == (PolicyRule(("",), ("configmaps",), ("get", "list"), ("ledger",)),)
    assert spec.cluster_rules == (
        PolicyRule((), (), ("get",), (), ("/healthz",)),
        PolicyRule(("apps",), ("deployments",), ("list",)),
    )
    assert spec.role_refs == (RoleRef("Role", "reader"), RoleRef("ClusterRole", "view"))
    assert spec.wants_cluster_permissions


@pytest.mark.parametrize(
    ("permissions", "wants_cluster"),
    [
        ({}, False),
        ({"rules": [rule()]}, False),
        ({"roleRefs": [{"kind": "Role", "name": "reader"}]}, False),
        ({"roleRefs": [{"kind": "ClusterRole", "name": "view"}]}, True),
        ({"clusterRules": [rule()]}, True),
    ],
)
def test_wants_cluster_permissions(permissions: dict[str, Any], wants_cluster: bool) -> None:
    assert make_identity(permissions=permissions).spec.wants_cluster_permissions is wants_cluster


@pytest.mark.parametrize(
    ("rule_", "expected"),
    [
        (
            PolicyRule(("",), ("pods",), ("get",)),
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
        ),
        (
            PolicyRule(("",), ("configmaps",), ("get",), ("ledger",)),
            {
                "apiGroups": [""],
                "resources": ["configmaps"],
                "verbs": ["get"],
                "resourceNames": ["ledger"],
            },
        ),
        (
            PolicyRule((), (), ("get",), (), ("/healthz", "/metrics")),
            {"nonResourceURLs": ["/healthz", "/metrics"], "verbs": ["get"]},
        ),
    ],
)
def test_policy_rule_to_k8s(rule_: PolicyRule, expected: dict[str, Any]) -> None:
    assert rule_.to_k8s() == expected


# --------------------------------------------------------------------------- credentials


@pytest.mark.parametrize(
    ("ctype", "ttl"),
    [
        ("ServiceAccountToken", 1 * H),
        ("X509", 24 * H),
        ("StaticSecret", 720 * H),
    ],
)
def test_default_ttl_per_type(ctype: str, ttl: dt.timedelta) -> None:
    (cred,) = make_identity(credentials=[credential("c", ctype)]).spec.credentials
    assert cred.ttl == ttl == DEFAULT_TTL[ctype]


def test_credential_defaults() -> None:
    token, cert, static = make_identity(
        credentials=[
            credential("api-token"),
            credential("mtls", "X509"),
            credential("db-password", "StaticSecret"),
        ]
    ).spec.credentials
    # The Secret is named <identity>-<credential> unless secretName says otherwise.
    assert token == Credential("api-token", "ServiceAccountToken", f"{NAME}.api-token", 1 * H)
    assert cert.secret_name == f"{NAME}.mtls"
    # issuerRef.kind defaults to ClusterIdentityIssuer, the key to ECDSA-P256.
    assert cert.issuer_ref == IssuerRef("ClusterIdentityIssuer", "mesh-ca")
    assert cert.key_algorithm == "ECDSA-P256"
    assert cert.generator is None
    # A StaticSecret always has a generator: 32 alphanumeric characters by default.
    assert static.generator == Generator(length=32, charset="alphanumeric")
    assert static.secret_name == f"{NAME}.db-password"


def test_credential_explicit_fields() -> None:
    token, cert, static = make_identity(
        credentials=[
            credential("api-token", secretName="ledger-token", ttl="2h", audiences=["vault"]),
            credential(
                "mtls",
                "X509",
                ttl="1h30m",
                keyAlgorithm="Ed25519",
                dnsNames=["ledger.team-a.svc"],
                issuerRef={"kind": "IdentityIssuer", "name": "team-ca"},
            ),
            credential("db-password", "StaticSecret", generator={"length": 64, "charset": "hex"}),
        ]
    ).spec.credentials
    assert token.secret_name == "ledger-token"
    assert token.ttl == 2 * H
    assert token.audiences == ("vault",)
    assert cert.ttl == 90 * M
    assert cert.key_algorithm == "Ed25519"
    assert cert.dns_names == ("ledger.team-a.svc",)
    assert cert.issuer_ref == IssuerRef("IdentityIssuer", "team-ca")
    assert static.generator == Generator(64, "hex")


def test_default_secret_name_follows_the_identity_name() -> None:
    (cred,) = make_identity(
        name="ledger", serviceAccount={"name": "other-sa"}, credentials=[credential("tok")]
    ).spec.credentials
    assert cred.secret_name == "ledger.tok"


def test_default_secret_names_of_two_identities_never_collide() -> None:
    # With "<identity>-<credential>" both were "pay-api-token" and the two fought over it.
    (a,) = make_identity(name="pay-api", credentials=[credential("token")]).spec.credentials
    (b,) = make_identity(name="pay", credentials=[credential("api-token")]).spec.credentials
    assert (a.secret_name, b.secret_name) == ("pay-api.token", "pay.api-token")


def test_a_credential_issued_under_the_old_default_name_keeps_it() -> None:
    body = make_body(name="ledger", credentials=[credential("tok"), credential("new")])
    body["status"] = {"credentials": [{"name": "tok", "secretName": "ledger-tok"}]}
    tok, new = MachineIdentity.from_body(body).spec.credentials
    assert (tok.secret_name, new.secret_name) == ("ledger-tok", "ledger.new")
    # Only the old default is kept: a status naming anything else changes nothing.
    body["status"] = {"credentials": [{"name": "tok", "secretName": "db-password"}]}
    tok, _ = MachineIdentity.from_body(body).spec.credentials
    assert tok.secret_name == "ledger.tok"


# --------------------------------------------------------------------------- errors

TOKEN = "ServiceAccountToken"


def creds(*items: dict[str, Any]) -> dict[str, Any]:
    return {"credentials": list(items)}


SPEC_ERRORS = [
    # (id, spec overrides, field path, words of the rule)
    ("owner missing", {"owner": OMIT}, "spec.owner", "is required"),
    ("owner blank", {"owner": "   "}, "spec.owner", "must not be empty"),
    ("owner not a string", {"owner": 42}, "spec.owner", "is required"),
    ("serviceAccount not an object", {"serviceAccount": "sa"}, "spec.serviceAccount", "object"),
    (
        "serviceAccount name uppercase",
        {"serviceAccount": {"name": "Ledger"}},
        "spec.serviceAccount.name",
        "DNS-1123 subdomain",
    ),
    (
        "serviceAccount name too long",
        {"serviceAccount": {"name": "a" * 254}},
        "spec.serviceAccount.name",
        "DNS-1123 subdomain",
    ),
    ("workloads not an object", {"workloads": []}, "spec.workloads", "must be an object"),
    (
        "selector operator",
        {"workloads": {"selector": {"matchExpressions": [{"key": "a", "operator": "Equals"}]}}},
        "spec.workloads.selector.matchExpressions[0].operator",
        "In, NotIn, Exists, DoesNotExist",
    ),
    (
        "selector matchLabels not an object",
        {"workloads": {"selector": {"matchLabels": ["app"]}}},
        "spec.workloads.selector.matchLabels",
        "must be an object",
    ),
    (
        "selector values not strings",
        {
            "workloads": {
                "selector": {"matchExpressions": [{"key": "a", "operator": "In", "values": [1]}]}
            }
        },
        "spec.workloads.selector.matchExpressions[0].values[0]",
        "non-empty string",
    ),
    ("permissions not an object", {"permissions": "all"}, "spec.permissions", "object"),
    (
        "rules not a list",
        {"permissions": {"rules": {"verbs": ["get"]}}},
        "spec.permissions.rules",
        "must be a list",
    ),
    (
        "rule without verbs",
        {"permissions": {"rules": [rule(), rule(verbs=())]}},
        "spec.permissions.rules[1].verbs",
        "at least one verb",
    ),
    (
        "rule with an empty verb",
        {"permissions": {"rules": [rule(verbs=("get", ""))]}},
        "spec.permissions.rules[0].verbs[1]",
        "non-empty string",
    ),
    (
        "rule without resources",
        {"permissions": {"rules": [rule(resources=())]}},
        "spec.permissions.rules[0].resources",
        "at least one resource",
    ),
    (
        "namespaced rule with nonResourceURLs",
        {"permissions": {"rules": [{"nonResourceURLs": ["/healthz"], "verbs": ["get"]}]}},
        "spec.permissions.rules[0].nonResourceURLs",
        "only allowed in clusterRules",
    ),
    (
        "cluster rule without verbs",
        {"permissions": {"clusterRules": [rule(), rule(verbs=())]}},
        "spec.permissions.clusterRules[1].verbs",
        "at least one verb",
    ),
    (
        "roleRef kind",
        {"permissions": {"roleRefs": [{"kind": "Group", "name": "x"}]}},
        "spec.permissions.roleRefs[0].kind",
        "Role or ClusterRole",
    ),
    (
        "roleRef without name",
        {"permissions": {"roleRefs": [{"kind": "Role", "name": "a"}, {"kind": "ClusterRole"}]}},
        "spec.permissions.roleRefs[1].name",
        "is required",
    ),
    ("credentials not a list", {"credentials": {"name": "x"}}, "spec.credentials", "a list"),
    (
        "credential name",
        creds(credential("ok"), credential("Not_A_Label")),
        "spec.credentials[1].name",
        "DNS-1123 label",
    ),
    (
        "credential name missing",
        creds({"type": TOKEN}),
        "spec.credentials[0].name",
        "DNS-1123 label",
    ),
    (
        "credential name too long",
        creds(credential("a" * 64)),
        "spec.credentials[0].name",
        "DNS-1123 label",
    ),
    ("credential type", creds(credential("c", "Password")), "spec.credentials[0].type", "one of"),
    (
        "duplicate credential name",
        creds(credential("tok"), credential("tok", secretName="other")),
        "spec.credentials[1].name",
        "duplicate credential name 'tok'",
    ),
    (
        "secretName",
        creds(credential("tok", secretName="Bad_Name")),
        "spec.credentials[0].secretName",
        "DNS-1123 subdomain",
    ),
    (
        "ttl not a duration",
        creds(credential("a"), credential("b", ttl="1 hour")),
        "spec.credentials[1].ttl",
        "must be a duration",
    ),
    (
        "ttl a number",
        creds(credential("a", ttl=3600)),
        "spec.credentials[0].ttl",
        "must be a duration",
    ),
    (
        "ttl zero",
        creds(credential("a", ttl="0s")),
        "spec.credentials[0].ttl",
        "between 10m and 48h for ServiceAccountToken",
    ),
    (
        "token ttl under 10m",
        creds(credential("a", ttl="9m59s")),
        "spec.credentials[0].ttl",
        "between 10m and 48h for ServiceAccountToken",
    ),
    (
        "X509 ttl over a year",
        creds(credential("a", "X509", ttl="8761h", issuerRef={"name": "ca"})),
        "spec.credentials[0].ttl",
        "between 10m and 8760h for X509",
    ),
    (
        "StaticSecret ttl under an hour",
        creds(credential("a", "StaticSecret", ttl="59m")),
        "spec.credentials[0].ttl",
        "between 1h and 8760h for StaticSecret",
    ),
    (
        "ttl too large for a timedelta",
        creds(credential("a", ttl="99999999999999h")),
        "spec.credentials[0].ttl",
        "at most 87600h (10 years)",
    ),
    (
        "gracePeriod too large for a timedelta",
        {"revocation": {"gracePeriod": "99999999999999h"}},
        "spec.revocation.gracePeriod",
        "at most 87600h (10 years)",
    ),
    (
        "validFor over ten years",
        {"lifetime": {"validFor": "87601h"}},
        "spec.lifetime.validFor",
        "at most 87600h (10 years)",
    ),
    (
        "renewBeforeFraction an int too large for a float",
        {"rotation": {"renewBeforeFraction": 10**400}},
        "spec.rotation.renewBeforeFraction",
        "between 0 and 1",
    ),
    (
        "dnsNames with a label over 63 characters",
        creds(credential("a", "X509", issuerRef={"name": "ca"}, dnsNames=["a" * 64 + ".svc"])),
        "spec.credentials[0].dnsNames[0]",
        "labels of at most 63 characters",
    ),
    (
        "a selector key that is not a label key",
        {"workloads": {"selector": {"matchLabels": {"app name": "x"}}}},
        "spec.workloads.selector.matchLabels",
        "must be a label key",
    ),
    (
        "a selector value that is not a label value",
        {
            "workloads": {
                "selector": {
                    "matchExpressions": [{"key": "app", "operator": "In", "values": ["a b"]}]
                }
            }
        },
        "spec.workloads.selector.matchExpressions[0].values[0]",
        "must be a label value",
    ),
    (
        "audiences on X509",
        creds(credential("a", "X509", audiences=["vault"])),
        "spec.credentials[0].audiences",
        "only allowed for type ServiceAccountToken",
    ),
    (
        "empty audience",
        creds(credential("a", audiences=[""])),
        "spec.credentials[0].audiences[0]",
        "non-empty string",
    ),
    (
        "issuerRef on a token",
        creds(credential("a", issuerRef={"name": "mesh-ca"})),
        "spec.credentials[0].issuerRef",
        "only allowed for type X509",
    ),
    (
        "X509 without issuerRef",
        creds(credential("a", "X509", issuerRef=OMIT)),
        "spec.credentials[0].issuerRef",
        "required for type X509",
    ),
    (
        "issuerRef kind",
        creds(credential("a", "X509", issuerRef={"kind": "Issuer", "name": "x"})),
        "spec.credentials[0].issuerRef.kind",
        "IdentityIssuer or ClusterIdentityIssuer",
    ),
    (
        "issuerRef name",
        creds(credential("a", "X509", issuerRef={"kind": "IdentityIssuer"})),
        "spec.credentials[0].issuerRef.name",
        "is required",
    ),
    (
        "keyAlgorithm",
        creds(credential("a", "X509", keyAlgorithm="DSA-1024")),
        "spec.credentials[0].keyAlgorithm",
        "ECDSA-P256",
    ),
    (
        "dnsNames on a StaticSecret",
        creds(credential("a", "StaticSecret", dnsNames=["x.example"])),
        "spec.credentials[0].dnsNames",
        "only allowed for type X509",
    ),
    (
        "generator on a token",
        creds(credential("a", generator={"length": 16})),
        "spec.credentials[0].generator",
        "only allowed for type StaticSecret",
    ),
    (
        "generator too short",
        creds(credential("a", "StaticSecret", generator={"length": 7})),
        "spec.credentials[0].generator.length",
        "from 8 to 4096",
    ),
    (
        "generator too long",
        creds(credential("a", "StaticSecret", generator={"length": 4097})),
        "spec.credentials[0].generator.length",
        "from 8 to 4096",
    ),
    (
        "generator length a string",
        creds(credential("a", "StaticSecret", generator={"length": "32"})),
        "spec.credentials[0].generator.length",
        "integer",
    ),
    (
        "generator charset",
        creds(credential("a", "StaticSecret", generator={"charset": "emoji"})),
        "spec.credentials[0].generator.charset",
        "alphanumeric",
    ),
    (
        "rotation with both",
        {"rotation": {"renewBefore": "10m", "renewBeforeFraction": 0.5}},
        "spec.rotation",
        "not both",
    ),
    (
        "renewBefore",
        {"rotation": {"renewBefore": "ten minutes"}},
        "spec.rotation.renewBefore",
        "must be a duration",
    ),
    *[
        (
            f"renewBeforeFraction {value!r}",
            {"rotation": {"renewBeforeFraction": value}},
            "spec.rotation.renewBeforeFraction",
            "between 0 and 1",
        )
        for value in (0, 1, 1.5, -0.1, "0.5", None)
    ],
    ("rotation not an object", {"rotation": "fast"}, "spec.rotation", "object"),
    (
        "validFor",
        {"lifetime": {"validFor": "30d"}},
        "spec.lifetime.validFor",
        "must be a duration",
    ),
    (
        "onWorkloadDeletion",
        {"revocation": {"onWorkloadDeletion": "Delete"}},
        "spec.revocation.onWorkloadDeletion",
        "Revoke or Retain",
    ),
    (
        "gracePeriod",
        {"revocation": {"gracePeriod": "2 minutes"}},
        "spec.revocation.gracePeriod",
        "must be a duration",
    ),
]


@pytest.mark.parametrize(
    ("overrides", "path", "words"),
    [pytest.param(o, p, w, id=i) for i, o, p, w in SPEC_ERRORS],
)
def test_spec_errors_name_the_field_and_the_rule(
    overrides: dict[str, Any], path: str, words: str
) -> None:
    with pytest.raises(SpecError) as err:
        make_identity(**overrides)
    assert err.value.path == path
    assert words in err.value.rule
    assert str(err.value) == f"{path}: {err.value.rule}"


def test_identity_name_that_is_no_service_account_name() -> None:
    # Without serviceAccount.name, metadata.name is the ServiceAccount's name and must fit.
    with pytest.raises(SpecError) as err:
        make_identity(name="Payments")
    assert err.value.path == "spec.serviceAccount.name"


def test_spec_must_be_an_object() -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(["owner"], default_name=NAME)  # type: ignore[arg-type]
    assert err.value.path == "spec"


def test_secret_names_must_be_unique() -> None:
    with pytest.raises(SpecError) as err:
        make_identity(
            credentials=[
                credential("a", secretName="shared"),
                credential("b", secretName="shared"),
            ]
        )
    assert err.value.path in ("spec.credentials[0].secretName", "spec.credentials[1].secretName")
    assert err.value.rule == "must be unique among credentials"


def test_secret_name_clash_with_a_default_names_the_explicit_field() -> None:
    with pytest.raises(SpecError) as err:
        make_identity(credentials=[credential("a"), credential("b", secretName=f"{NAME}.a")])
    assert err.value.path == "spec.credentials[1].secretName"


def test_rule_with_both_resources_and_non_resource_urls_is_refused() -> None:
    both = rule(resources=("nodes",), nonResourceURLs=["/healthz"])
    with pytest.raises(SpecError) as err:
        make_identity(permissions={"clusterRules": [both]})
    assert err.value.path.startswith("spec.permissions.clusterRules[0]")


@pytest.mark.parametrize("fraction", [0.01, 0.5, 0.99, 0.33])
def test_renew_before_fraction_inside_the_bounds(fraction: float) -> None:
    assert make_identity(rotation={"renewBeforeFraction": fraction}).spec.renew_before_fraction == (
        fraction
    )


def test_token_ttl_of_exactly_ten_minutes_is_allowed() -> None:
    (cred,) = make_identity(credentials=[credential("c", ttl="10m")]).spec.credentials
    assert cred.ttl == 10 * M


@pytest.mark.parametrize("length", [8, 4096])
def test_generator_length_bounds_are_inclusive(length: int) -> None:
    (cred,) = make_identity(
        credentials=[credential("c", "StaticSecret", generator={"length": length})]
    ).spec.credentials
    assert cred.generator == Generator(length, "alphanumeric")


# --------------------------------------------------------------------------- label selectors


def selector(labels: dict[str, str] | None = None, *exprs: tuple[str, str, list[str]]) -> Any:
    raw: dict[str, Any] = {}
    if labels is not None:
        raw["matchLabels"] = labels
    if exprs:
        raw["matchExpressions"] = [{"key": k, "operator": op, "values": v} for k, op, v in exprs]
    return make_identity(workloads={"selector": raw}).spec.selector


APP = {"app": "ledger", "tier": "backend"}

SELECTOR_CASES = [
    # (id, matchLabels, matchExpressions, labels, matches)
    ("labels equal", {"app": "ledger"}, [], APP, True),
    ("labels all required", {"app": "ledger", "tier": "frontend"}, [], APP, False),
    ("labels value differs", {"app": "billing"}, [], APP, False),
    ("labels key missing", {"env": "prod"}, [], APP, False),
    ("In matches", None, [("tier", "In", ["backend", "db"])], APP, True),
    ("In other value", None, [("tier", "In", ["frontend"])], APP, False),
    ("In key missing", None, [("env", "In", ["prod"])], APP, False),
    ("NotIn other value", None, [("tier", "NotIn", ["frontend"])], APP, True),
    ("NotIn listed value", None, [("tier", "NotIn", ["backend"])], APP, False),
    ("NotIn key missing", None, [("env", "NotIn", ["prod"])], APP, True),
    ("Exists present", None, [("app", "Exists", [])], APP, True),
    ("Exists missing", None, [("env", "Exists", [])], APP, False),
    ("DoesNotExist missing", None, [("env", "DoesNotExist", [])], APP, True),
    ("DoesNotExist present", None, [("app", "DoesNotExist", [])], APP, False),
    ("labels and expressions", {"app": "ledger"}, [("tier", "In", ["backend"])], APP, True),
    (
        "labels match, expression fails",
        {"app": "ledger"},
        [("tier", "NotIn", ["backend"])],
        APP,
        False,
    ),
    ("every expression must hold", None, [("app", "Exists", []), ("x", "Exists", [])], APP, False),
    ("empty selector matches nothing", None, [], APP, False),
    ("no labels", {"app": "ledger"}, [], {}, False),
]


@pytest.mark.parametrize(
    ("match_labels", "exprs", "labels", "matches"),
    [pytest.param(m, e, labels, r, id=i) for i, m, e, labels, r in SELECTOR_CASES],
)
def test_label_selector_matches(
    match_labels: dict[str, str] | None,
    exprs: list[tuple[str, str, list[str]]],
    labels: dict[str, str],
    matches: bool,
) -> None:
    assert selector(match_labels, *exprs).matches(labels) is matches


@pytest.mark.parametrize(
    ("match_labels", "exprs", "query"),
    [
        ({"tier": "backend", "app": "ledger"}, [], "app=ledger,tier=backend"),
        (None, [("tier", "In", ["backend", "db"])], "tier in (backend,db)"),
        (None, [("tier", "NotIn", ["frontend"])], "tier notin (frontend)"),
        (None, [("app", "Exists", [])], "app"),
        (None, [("canary", "DoesNotExist", [])], "!canary"),
        (
            {"app": "ledger"},
            [("tier", "In", ["backend"]), ("canary", "DoesNotExist", [])],
            "app=ledger,tier in (backend),!canary",
        ),
    ],
)
def test_label_selector_to_query(
    match_labels: dict[str, str] | None, exprs: list[tuple[str, str, list[str]]], query: str
) -> None:
    assert selector(match_labels, *exprs).to_query() == query


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "delta"),
    [
        ("90s", 90 * S),
        ("15m", 15 * M),
        ("24h", 24 * H),
        ("1h30m", 90 * M),
        ("1h0m0s", H),
        ("1.5h", 90 * M),
        ("2h45m30s", 2 * H + 45 * M + 30 * S),
        ("500ms", dt.timedelta(milliseconds=500)),
        ("250us", dt.timedelta(microseconds=250)),
        ("250µs", dt.timedelta(microseconds=250)),
        ("2000ns", dt.timedelta(microseconds=2)),
        ("0s", dt.timedelta(0)),
        ("8760h", 365 * 24 * H),
    ],
)
def test_parse_duration(text: str, delta: dt.timedelta) -> None:
    assert parse_duration(text) == delta


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1",
        "h",
        "1d",
        "1H",
        " 1h",
        "1h ",
        "1 h",
        "-1h",
        "+1h",
        "1e3s",
        ".5h",
        "1.h",
        "1h-5m",
        60,
    ],
)
def test_parse_duration_rejects(text: Any) -> None:
    with pytest.raises(ValueError, match="must be a duration such as 90s"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (dt.timedelta(0), "0s"),
        (45 * S, "45s"),
        (90 * S, "1m30s"),
        (H, "1h0m0s"),
        (90 * M, "1h30m0s"),
        (720 * H, "720h0m0s"),
        (dt.timedelta(seconds=1.9), "1s"),  # whole seconds
        (-90 * S, "-1m30s"),
    ],
)
def test_format_duration(delta: dt.timedelta, text: str) -> None:
    assert format_duration(delta) == text


@pytest.mark.parametrize(
    "delta", [dt.timedelta(0), 59 * S, M, 61 * S, H, 25 * H + 1 * S, 8760 * H, 90 * M]
)
def test_format_then_parse_round_trips(delta: dt.timedelta) -> None:
    assert parse_duration(format_duration(delta)) == delta


@pytest.mark.parametrize(
    ("text", "canonical"), [("90m", "1h30m0s"), ("3600s", "1h0m0s"), ("1h30m", "1h30m0s")]
)
def test_parse_then_format_is_canonical(text: str, canonical: str) -> None:
    assert format_duration(parse_duration(text)) == canonical
    assert format_duration(parse_duration(canonical)) == canonical


def test_rfc3339_round_trip() -> None:
    moment = dt.datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)
    assert rfc3339(moment) == "2030-01-02T03:04:05Z"
    assert parse_time("2030-01-02T03:04:05Z") == moment.replace(microsecond=0)
    other_zone = moment.astimezone(dt.timezone(dt.timedelta(hours=2)))
    assert rfc3339(other_zone) == "2030-01-02T03:04:05Z"


# --------------------------------------------------------------------------- IdentityPolicy


def test_policy_defaults() -> None:
    policy = make_policy("baseline")
    assert policy.name == "baseline"
    assert policy.select_all
    assert policy.enforcement == "Deny"
    assert policy.allowed_cluster_roles == ()
    assert policy.allow_cluster_rules is False


def test_policy_fields() -> None:
    policy = make_policy(
        namespaceSelector={"matchLabels": {"env": "prod"}},
        enforcement="Warn",
        allowedClusterRoles=["view", "system:auth-delegator"],
        allowClusterRules=True,
    )
    assert not policy.select_all
    assert policy.enforcement == "Warn"
    assert policy.allowed_cluster_roles == ("view", "system:auth-delegator")
    assert policy.allow_cluster_rules


@pytest.mark.parametrize(
    ("namespace_selector", "labels", "selects"),
    [
        (OMIT, {}, True),
        ({}, {"env": "dev"}, True),
        ({"matchLabels": {}}, {}, True),
        ({"matchLabels": {"env": "prod"}}, {"env": "prod", "team": "a"}, True),
        ({"matchLabels": {"env": "prod"}}, {"env": "dev"}, False),
        ({"matchLabels": {"env": "prod"}}, {}, False),
        ({"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}]}, {}, False),
        ({"matchExpressions": [{"key": "env", "operator": "DoesNotExist"}]}, {}, True),
        (
            {"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]}]},
            {"env": "prod"},
            False,
        ),
    ],
)
def test_policy_selects_namespaces(
    namespace_selector: Any, labels: dict[str, str], selects: bool
) -> None:
    spec = {} if namespace_selector is OMIT else {"namespaceSelector": namespace_selector}
    assert make_policy(**spec).selects(labels) is selects


def test_policy_with_a_bad_selector_names_the_field() -> None:
    with pytest.raises(SpecError) as err:
        make_policy(namespaceSelector={"matchExpressions": [{"key": "env", "operator": "Is"}]})
    assert err.value.path == "spec.namespaceSelector.matchExpressions[0].operator"

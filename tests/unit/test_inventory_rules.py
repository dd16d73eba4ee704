"""The inventory's findings: each situation of issue 17 makes its rule fire, and the fixed
situation makes it go; attribution and classification in their order."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from nhi.models.inventory import Finding, Meta, TlsSecretInfo, managed_identity_from_body
from nhi.models.inventory_config import Exemption, InventoryConfig
from nhi.policies.findings import evaluate
from nhi.policies.inventory import build
from nhi.policies.kpis import compute
from tests.unit.inventory_factories import (
    DAY,
    T0,
    binding,
    deployment,
    identity,
    namespace,
    observed,
    ref,
    role,
    rule,
    sa,
    stamp,
    token,
    usage_status,
)

pytestmark = pytest.mark.unit

CONFIG = InventoryConfig()


def findings(obs, config: InventoryConfig = CONFIG, now: dt.datetime = T0) -> list[Finding]:
    return list(evaluate(build(obs, config), config, now))


def rules_of(obs, **kw) -> set[tuple[str, str]]:
    return {(f.rule, str(f.subject)) for f in findings(obs, **kw)}


# ------------------------------------------------------------------------------ NHI1


def test_an_unused_service_account_is_reported_once_the_bound_passed() -> None:
    fresh = observed(sas=[sa("app", "ci", created=T0 - 10 * DAY)])
    old = observed(sas=[sa("app", "ci", created=T0 - 40 * DAY)])
    assert ("unused-service-account", "ServiceAccount/app/ci") not in rules_of(fresh)
    assert ("unused-service-account", "ServiceAccount/app/ci") in rules_of(old)
    used = observed(
        sas=[sa("app", "ci", created=T0 - 40 * DAY)], workloads=[deployment("app", "web", "ci")]
    )
    assert ("unused-service-account", "ServiceAccount/app/ci") not in rules_of(used)


def test_unused_counts_from_the_last_use_the_controller_saw() -> None:
    obs = observed(sas=[sa("app", "ci")], last_used={("app", "ci"): T0 - 5 * DAY})
    assert not any(f.rule == "unused-service-account" for f in findings(obs))
    assert any(f.rule == "unused-service-account" for f in findings(obs, now=T0 + 26 * DAY))


def test_the_default_service_account_is_never_unused() -> None:
    assert rules_of(observed(sas=[sa("app", "default")])) == set()


def test_a_binding_to_a_missing_service_account_names_binding_subject_and_role() -> None:
    b = binding(
        "ClusterRoleBinding",
        "",
        "ghost",
        "ClusterRole",
        "cluster-admin",
        ("ServiceAccount", "app", "gone"),
    )
    [f] = [f for f in findings(observed(bindings=[b])) if f.rule.startswith("binding-to-missing-s")]
    assert f.severity == "critical" and f.risk == "NHI1"
    assert f.objects == (
        ref("ClusterRoleBinding", "", "ghost"),
        ref("ServiceAccount", "app", "gone"),
        ref("ClusterRole", "", "cluster-admin"),
    )
    assert "inherits" in f.message and "remove" in f.fix
    fixed = observed(bindings=[b], sas=[sa("app", "gone")])
    assert not any(f.rule == "binding-to-missing-service-account" for f in findings(fixed))


def test_a_missing_subject_outside_the_discovered_namespaces_is_not_reported() -> None:
    b = binding("RoleBinding", "app", "rb", "Role", "r", ("ServiceAccount", "other", "x"))
    obs = observed(bindings=[b], roles=[role("Role", "app", "r")], scope=("app",))
    assert not any(f.rule == "binding-to-missing-service-account" for f in findings(obs))


def test_a_token_secret_of_a_gone_or_recreated_service_account_is_orphaned() -> None:
    t = token("app", "old-token", "ci")
    assert ("orphaned-token-secret", "Secret/app/old-token") in rules_of(observed(tokens=[t]))
    recreated = observed(tokens=[t], sas=[sa("app", "ci", uid="another-uid")])
    assert ("orphaned-token-secret", "Secret/app/old-token") in rules_of(recreated)
    assert ("orphaned-token-secret", "Secret/app/old-token") not in rules_of(
        observed(tokens=[t], sas=[sa("app", "ci")])
    )


def test_a_binding_to_a_missing_role_is_a_finding_not_a_crash() -> None:
    b = binding("RoleBinding", "app", "rb", "Role", "nope", ("ServiceAccount", "app", "ci"))
    obs = observed(bindings=[b], sas=[sa("app", "ci")], workloads=[deployment("app", "w", "ci")])
    assert ("binding-to-missing-role", "RoleBinding/app/rb") in rules_of(obs)
    [ident] = [i for i in build(obs, CONFIG).identities if i.name == "ci"]
    assert ident.grants[0].role_found is False and ident.grants[0].rules == ()


# ------------------------------------------------------------------------------ NHI4


def test_legacy_tokens_recently_used_are_high_others_medium() -> None:
    recent = token("app", "t1", "ci", last_used=(T0 - 3 * DAY).date().isoformat())
    stale = token("app", "t2", "ci", last_used="2020-01-01")
    never = token("app", "t3", "ci")
    obs = observed(sas=[sa("app", "ci")], tokens=[recent, stale, never])
    sev = {str(f.subject): f.severity for f in findings(obs) if f.rule == "legacy-token-secret"}
    assert sev == {"Secret/app/t1": "high", "Secret/app/t2": "medium", "Secret/app/t3": "medium"}


def test_automounted_token_without_any_permission() -> None:
    obs = observed(sas=[sa("app", "web")], workloads=[deployment("app", "w", "web")])
    assert ("automounted-token-without-permissions", "ServiceAccount/app/web") in rules_of(obs)
    off = observed(
        sas=[sa("app", "web", automount=False)], workloads=[deployment("app", "w", "web")]
    )
    assert not any(f.rule.startswith("automounted") for f in findings(off))
    pod_on = observed(
        sas=[sa("app", "web", automount=False)],
        workloads=[deployment("app", "w", "web", automount=True)],
    )
    assert any(f.rule.startswith("automounted") for f in findings(pod_on))


# ------------------------------------------------------------------------------ NHI5


@pytest.mark.parametrize(
    ("kind", "rules", "expected", "severity"),
    [
        ("ClusterRoleBinding", None, "cluster-admin-binding", "critical"),
        ("ClusterRoleBinding", [rule(["*"], ["*"], ["*"])], "wildcard-permission", "critical"),
        ("RoleBinding", [rule(["get", "*"], ["pods"])], "wildcard-permission", "medium"),
        ("ClusterRoleBinding", [rule(["list"], ["secrets"])], "cluster-wide-secret-read", "high"),
        (
            "RoleBinding",
            [rule(["escalate"], ["roles"], ["rbac.authorization.k8s.io"])],
            "privilege-escalation-verb",
            "high",
        ),
        ("RoleBinding", [rule(["impersonate"], ["users"])], "privilege-escalation-verb", "high"),
        ("RoleBinding", [rule(["create"], ["pods/exec"])], "sensitive-subresource", "high"),
        (
            "RoleBinding",
            [rule(["create"], ["serviceaccounts/token"])],
            "sensitive-subresource",
            "high",
        ),
        ("ClusterRoleBinding", [rule(["get"], ["nodes/proxy"])], "sensitive-subresource", "high"),
    ],
)
def test_overprivileged_grants(kind: str, rules: list | None, expected: str, severity: str) -> None:
    role_name = "cluster-admin" if rules is None else "custom"
    roles = [] if rules is None else [role("ClusterRole", "", role_name, *rules)]
    b = binding(
        kind,
        "app" if kind == "RoleBinding" else "",
        "b",
        "ClusterRole",
        role_name,
        ("ServiceAccount", "app", "ci"),
    )
    obs = observed(
        sas=[sa("app", "ci")], roles=roles, bindings=[b], workloads=[deployment("app", "w", "ci")]
    )
    got = [f for f in findings(obs) if f.risk == "NHI5"]
    assert [(f.rule, f.severity) for f in got] == [(expected, severity)]
    # Fixed: a narrow role instead.
    narrow = [role("ClusterRole", "", role_name, rule(["get"], ["configmaps"]))]
    fixed = observed(
        sas=[sa("app", "ci")], roles=narrow, bindings=[b], workloads=[deployment("app", "w", "ci")]
    )
    assert not any(f.risk == "NHI5" for f in findings(fixed)) or role_name == "cluster-admin"


def test_a_group_binding_is_one_finding_on_the_group() -> None:
    b = binding(
        "ClusterRoleBinding",
        "",
        "all",
        "ClusterRole",
        "cluster-admin",
        ("Group", "", "system:serviceaccounts"),
    )
    obs = observed(sas=[sa("a", "x"), sa("b", "y")], bindings=[b])
    got = [f for f in findings(obs) if f.rule == "cluster-admin-binding"]
    assert [str(f.subject) for f in got] == ["Group/system:serviceaccounts"]
    # Still part of each identity's effective permissions.
    assert all(i.grants for i in build(obs, CONFIG).identities)


# ------------------------------------------------------------------------------ NHI7


def _tls(validity_days: int, problem: str = "") -> TlsSecretInfo:
    from nhi.models.inventory import CertificateMeta

    cert = (
        None
        if problem
        else CertificateMeta("CN=x", "CN=ca", T0 - DAY, T0 - DAY + validity_days * DAY)
    )
    return TlsSecretInfo(Meta("app", "tls", labels={}), cert, problem)


def test_long_lived_and_malformed_certificates() -> None:
    assert ("long-lived-certificate", "Secret/app/tls") in rules_of(observed(tls=[_tls(3650)]))
    assert not rules_of(observed(tls=[_tls(90)]))
    bad = findings(observed(tls=[_tls(0, "the Secret holds no tls.crt")]))
    assert [(f.rule, f.severity) for f in bad] == [("malformed-tls-secret", "low")]


def test_old_token_secret() -> None:
    old = token("app", "t", "ci", created=T0 - 100 * DAY)
    young = token("app", "t", "ci", created=T0 - 10 * DAY)
    assert ("old-token-secret", "Secret/app/t") in rules_of(
        observed(sas=[sa("app", "ci")], tokens=[old])
    )
    assert ("old-token-secret", "Secret/app/t") not in rules_of(
        observed(sas=[sa("app", "ci")], tokens=[young])
    )


# ------------------------------------------------------------------------------ NHI8


def test_bindings_across_namespaces_and_environments() -> None:
    b = binding("RoleBinding", "prod", "rb", "Role", "r", ("ServiceAccount", "dev", "ci"))
    base = dict(sas=[sa("dev", "ci")], roles=[role("Role", "prod", "r")], bindings=[b])
    plain = findings(observed(**base))
    assert [(f.rule, f.severity) for f in plain if f.risk == "NHI8"] == [
        ("cross-namespace-binding", "medium")
    ]
    envs = [namespace("prod", environment="prod"), namespace("dev", environment="dev")]
    crossed = findings(observed(**base, namespaces=envs))
    assert [(f.rule, f.severity) for f in crossed if f.risk == "NHI8"] == [
        ("cross-environment-binding", "high")
    ]
    same = binding("RoleBinding", "prod", "rb", "Role", "r", ("ServiceAccount", "prod", "ci"))
    assert not any(
        f.risk == "NHI8"
        for f in findings(
            observed(sas=[sa("prod", "ci")], roles=[role("Role", "prod", "r")], bindings=[same])
        )
    )


# ------------------------------------------------------------------------------ NHI9


def test_default_used_by_two_deployments_and_a_shared_account() -> None:
    obs = observed(
        sas=[sa("app", "default"), sa("app", "shared")],
        workloads=[
            deployment("app", "a"),
            deployment("app", "b"),
            deployment("app", "c", "shared"),
            deployment("app", "d", "shared"),
        ],
    )
    got = {(f.rule, f.severity) for f in findings(obs) if f.risk == "NHI9"}
    assert got == {("default-service-account-used", "medium"), ("shared-service-account", "medium")}
    [f] = [f for f in findings(obs) if f.rule == "default-service-account-used"]
    assert ref("Deployment", "app", "a") in f.objects and ref("Deployment", "app", "b") in f.objects


# ------------------------------------------------------------------------------ settings


def test_disabled_rules_and_exemptions() -> None:
    obs = observed(sas=[sa("app", "default")], workloads=[deployment("app", "a")])
    assert rules_of(obs)
    off = InventoryConfig(
        disabled=frozenset(
            {
                "default-service-account-used",
                "automounted-token-without-permissions",
                "unknown-owner",
            }
        )
    )
    assert rules_of(obs, config=off) == set()
    exempt = InventoryConfig(exemptions=(Exemption(namespaces=("ap*",)),))
    assert rules_of(obs, config=exempt) == set()
    other = InventoryConfig(exemptions=(Exemption(namespaces=("other",)),))
    assert rules_of(obs, config=other) == rules_of(obs)


def test_system_identities_are_not_reported_unless_asked() -> None:
    b = binding(
        "ClusterRoleBinding",
        "",
        "b",
        "ClusterRole",
        "cluster-admin",
        ("ServiceAccount", "kube-system", "ctl"),
    )
    obs = observed(sas=[sa("kube-system", "ctl")], bindings=[b])
    assert [i.state for i in build(obs, CONFIG).identities] == ["system"]
    assert findings(obs) == []
    assert findings(obs, config=InventoryConfig(include_system=True))


# ------------------------------------------------------------------------------ attribution


def test_attribution_order() -> None:
    ns = namespace("app", team="ns-team")
    cases = [
        (
            observed(
                sas=[sa("app", "ci", labels={"owner": "sa-owner"})],
                identities=[identity("app", "ci", owner="mi-owner")],
                namespaces=[ns],
            ),
            ("mi-owner", "MachineIdentity", "managed"),
        ),
        (
            observed(
                sas=[sa("app", "ci", labels={"owner": "sa-owner"})],
                workloads=[deployment("app", "w", "ci", labels={"team": "wl"})],
                namespaces=[ns],
            ),
            ("sa-owner", "ServiceAccount", "unmanaged"),
        ),
        (
            observed(
                sas=[sa("app", "ci")],
                workloads=[deployment("app", "w", "ci", labels={"team": "wl"})],
                namespaces=[ns],
            ),
            ("wl", "Deployment/app/w", "unmanaged"),
        ),
        (observed(sas=[sa("app", "ci")], namespaces=[ns]), ("ns-team", "Namespace", "unmanaged")),
        (
            observed(sas=[sa("app", "ci", annotations={"meta.helm.sh/release-name": "shop"})]),
            ("helm:shop", "tool", "unmanaged"),
        ),
        (
            observed(sas=[sa("app", "ci", labels={"argocd.argoproj.io/instance": "payments"})]),
            ("argocd:payments", "tool", "unmanaged"),
        ),
        (
            observed(
                sas=[
                    sa(
                        "app",
                        "ci",
                        labels={
                            "kustomize.toolkit.fluxcd.io/name": "apps",
                            "kustomize.toolkit.fluxcd.io/namespace": "flux",
                        },
                    )
                ]
            ),
            ("flux:flux/apps", "tool", "unmanaged"),
        ),
        (observed(sas=[sa("app", "ci")]), ("unknown", "", "unmanaged")),
    ]
    for obs, expected in cases:
        [i] = build(obs, CONFIG).identities
        assert (i.owner, i.owner_source, i.state) == expected


def test_unknown_owner_is_a_finding_when_the_identity_matters() -> None:
    obs = observed(sas=[sa("app", "ci")], workloads=[deployment("app", "w", "ci")])
    assert ("unknown-owner", "ServiceAccount/app/ci") in rules_of(obs)
    owned = observed(
        sas=[sa("app", "ci", labels={"team": "x"})], workloads=[deployment("app", "w", "ci")]
    )
    assert ("unknown-owner", "ServiceAccount/app/ci") not in rules_of(owned)


def test_unused_declared_rules_are_an_nhi5_finding_and_go_when_used() -> None:
    unused = observed(
        sas=[sa("app", "ci")],
        identities=[identity("app", "ci", usage=usage_status(1, ["rules[1]", "clusterRules[0]"]))],
    )
    (f,) = [f for f in findings(unused) if f.rule == "unused-permissions"]
    assert (f.risk, f.severity, str(f.subject)) == ("NHI5", "low", "MachineIdentity/app/ci")
    assert ref("ServiceAccount", "app", "ci") in f.objects
    assert "2 of its 3 declared rules for 30 days: rules[1], clusterRules[0]" in f.message
    assert "nhi rightsize ci -n app" in f.fix
    none_used = observed(identities=[identity("app", "ci", usage=usage_status(0, ["rules[0]"]))])
    assert [f.severity for f in findings(none_used) if f.rule == "unused-permissions"] == ["medium"]
    used = observed(identities=[identity("app", "ci", usage=usage_status(2, []))])
    no_data = observed(identities=[identity("app", "ci")])
    for obs in (used, no_data):
        assert not any(f.rule == "unused-permissions" for f in findings(obs))
    off = InventoryConfig(disabled=frozenset({"unused-permissions"}))
    assert not any(f.rule == "unused-permissions" for f in findings(unused, config=off))


@pytest.mark.parametrize(
    "usage",
    [
        {"rules": "x", "unusedRules": 3},
        {"rules": [], "unusedRules": ["rules[0]"]},
        {"rules": [{}], "unusedRules": ["a", "b", "c"], "unusedAfterSeconds": True},
        {"unusedAfterSeconds": -5},
    ],
)
def test_a_malformed_usage_status_is_read_without_raising(usage: dict[str, object]) -> None:
    mi = identity("app", "ci", usage=usage)
    assert len(mi.unused_rules) <= mi.rules_weighed and mi.unused_after_seconds >= 0


def test_kpis() -> None:
    obs = observed(
        sas=[sa("app", "a", labels={"owner": "x"}), sa("app", "b"), sa("kube-system", "c")],
        workloads=[deployment("app", "w1", "a"), deployment("app", "w2", "b")],
        identities=[identity("app", "a")],
        tokens=[token("app", "t", "b", created=T0 - 3 * DAY)],
    )
    inv = build(obs, CONFIG)
    k = compute(inv, evaluate(inv, CONFIG, T0), T0)
    assert (k.in_use, k.managed_in_use, k.coverage) == (2, 1, 0.5)
    assert (k.owned_total, k.owned) == (2, 1)
    assert dict(k.credential_ages)["7d"] == 1
    assert k.findings_by_risk["NHI4"] >= 1
    assert (k.rules_weighed, k.permissions_used) == (0, None)
    obs = observed(
        identities=[
            identity("app", "a", usage=usage_status(3, ["rules[3]"])),
            identity("app", "b", usage=usage_status(0, ["rules[0]", "rules[1]"])),
            identity("app", "c"),
        ]
    )
    inv = build(obs, CONFIG)
    k = compute(inv, evaluate(inv, CONFIG, T0), T0)
    assert (k.rules_weighed, k.rules_used, k.permissions_used) == (6, 3, 0.5)


# ------------------------------------------------------------------------------ NHI7: Secrets


def opaque(name: str, changed: dt.datetime, owner: dict[str, Any] | None = None) -> Any:
    from nhi.models.inventory import opaque_secret_from_body

    meta: dict[str, Any] = {
        "namespace": "app",
        "name": name,
        "creationTimestamp": stamp(changed - 100 * DAY),
        "managedFields": [{"manager": "kubectl", "time": stamp(changed)}, {"time": 5}],
        "annotations": {"kubectl.kubernetes.io/last-applied-configuration": '{"data": "x"}'},
    }
    if owner:
        meta["ownerReferences"] = [owner]
    return opaque_secret_from_body({"metadata": meta})


def test_an_opaque_secret_nothing_rotates_is_old_after_the_bound_from_its_last_change() -> None:
    stale = opaque("db-password", T0 - 91 * DAY)
    assert stale.changed == T0 - 91 * DAY  # the managed field's time, not the creation
    assert "last-applied" not in repr(stale) and '"data"' not in repr(stale)
    rules = rules_of(observed(secrets=[stale, opaque("fresh", T0 - 10 * DAY)]))
    assert ("old-secret", "Secret/app/db-password") in rules
    assert ("old-secret", "Secret/app/fresh") not in rules
    owned = opaque(
        "synced", T0 - 200 * DAY, {"kind": "ExternalSecret", "name": "db", "controller": True}
    )
    assert owned.controller == "ExternalSecret/db"
    assert not any(f.rule == "old-secret" for f in findings(observed(secrets=[owned])))


def test_a_static_secret_credential_not_rotated_within_the_bound_is_stale() -> None:
    status = {
        "credentials": [
            {"name": "db", "type": "StaticSecret", "secretName": "app.db",
             "lastRotationTime": stamp(T0 - 120 * DAY)},
            {"name": "api", "type": "ServiceAccountToken",
             "lastRotationTime": stamp(T0 - 120 * DAY)},
            {"name": "new", "type": "StaticSecret", "lastRotationTime": stamp(T0 - DAY)},
            "garbage",
        ]
    }  # fmt: skip
    body = {"metadata": {"namespace": "app", "name": "ci"}, "spec": {"owner": "a"}}
    mi = managed_identity_from_body(body | {"status": status})
    (f,) = [f for f in findings(observed(identities=[mi])) if f.rule == "stale-static-secret"]
    assert (f.risk, f.severity, str(f.subject)) == ("NHI7", "medium", "MachineIdentity/app/ci")
    assert ref("Secret", "app", "app.db") in f.objects and "nhi renew ci -n app" in f.fix


def test_secrets_are_looked_at_again_when_they_turn_old() -> None:
    from nhi.reconcilers.inventory import next_due

    s = opaque("soon", T0 - 90 * DAY + dt.timedelta(hours=1))
    inv = build(observed(secrets=[s]), CONFIG)
    assert next_due(inv, CONFIG, T0) == T0 + dt.timedelta(hours=1)

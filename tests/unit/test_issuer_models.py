"""The IdentityIssuer / ClusterIdentityIssuer model: defaults, sources and rule errors."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest

from nhi.models.identity import SpecError
from nhi.models.issuer import (
    CASource,
    Issuer,
    SecretKeyRef,
    SelfSignedSource,
    VaultAppRoleAuth,
    VaultKubernetesAuth,
    VaultSource,
    VaultTokenAuth,
    default_crl_configmap,
    issuer_key,
)

pytestmark = pytest.mark.unit


def make_issuer(
    kind: str = "ClusterIdentityIssuer", namespace: str | None = None, **spec: Any
) -> dict[str, Any]:
    body_spec: dict[str, Any] = {"trustDomain": "example.org", "selfSigned": {}}
    if any(k in spec for k in ("ca", "vault")):
        body_spec.pop("selfSigned")
    body_spec.update(spec)
    meta: dict[str, Any] = {"name": "mesh-ca", "uid": "u-1", "generation": 3}
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": "nhi.dev/v1alpha1", "kind": kind, "metadata": meta, "spec": body_spec}


def test_self_signed_defaults() -> None:
    issuer = Issuer.from_body(make_issuer())
    assert issuer.key == ("ClusterIdentityIssuer", "", "mesh-ca")
    assert issuer.cluster_scoped
    assert issuer.generation == 3
    assert issuer.source == SelfSignedSource("ECDSA-P256", dt.timedelta(hours=8760), None)
    assert issuer.trust_bundle_configmap == "nhi-trust-bundle"
    assert issuer.crl_configmap == "nhi-crl-clusteridentityissuer-mesh-ca"
    assert issuer.crl_validity == dt.timedelta(hours=24)
    assert issuer.home_namespace("nhi-system") == "nhi-system"


def test_self_signed_fields() -> None:
    issuer = Issuer.from_body(
        make_issuer(
            selfSigned={"keyAlgorithm": "Ed25519", "ttl": "2h", "commonName": "Mesh Root"},
            trustBundle={"configMapName": "mesh-bundle"},
            crl={"configMapName": "mesh-crl", "validity": "30m"},
        )
    )
    assert issuer.source == SelfSignedSource("Ed25519", dt.timedelta(hours=2), "Mesh Root")
    assert issuer.trust_bundle_configmap == "mesh-bundle"
    assert issuer.crl_configmap == "mesh-crl"
    assert issuer.crl_validity == dt.timedelta(minutes=30)


_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)


def test_default_crl_is_one_per_issuer() -> None:
    names = {
        Issuer.from_body(
            make_issuer(kind, ns) | {"metadata": {"name": name, "namespace": ns}}
        ).crl_configmap
        for kind, ns in (("ClusterIdentityIssuer", None), ("IdentityIssuer", "nhi-system"))
        for name in ("a", "b", "cluster-a", "clusteridentityissuer-a")
    }
    assert len(names) == 8  # two kinds x four names, all distinct
    assert default_crl_configmap("IdentityIssuer", "a") == "nhi-crl-identityissuer-a"
    assert default_crl_configmap("ClusterIdentityIssuer", "a") == "nhi-crl-clusteridentityissuer-a"
    # An explicit name is kept as it is.
    explicit = Issuer.from_body(make_issuer(crl={"configMapName": "nhi-crl"}))
    assert explicit.crl_configmap == "nhi-crl"


@pytest.mark.parametrize("kind", ["ClusterIdentityIssuer", "IdentityIssuer"])
@pytest.mark.parametrize(
    "name",
    [
        "x" * 253,
        "a." + "b" * 250,
        "x" * 221 + ".y" * 16,  # cut just after a dot
        "x" * 222 + "-" + "y" * 30,  # cut just after a dash
    ],
)
def test_long_default_crl_names_are_bounded_distinct_and_valid(kind: str, name: str) -> None:
    crl = default_crl_configmap(kind, name)
    assert len(crl) <= 253
    assert _DNS1123_SUBDOMAIN.match(crl), crl
    assert crl == default_crl_configmap(kind, name)  # deterministic
    other_kind = "IdentityIssuer" if kind == "ClusterIdentityIssuer" else "ClusterIdentityIssuer"
    assert crl != default_crl_configmap(other_kind, name)
    assert crl != default_crl_configmap(kind, name[:-1] + "z")  # same start, another name


def test_namespaced_issuer_lives_in_its_namespace() -> None:
    issuer = Issuer.from_body(make_issuer("IdentityIssuer", "team-a", ca={"secretName": "root"}))
    assert issuer.key == ("IdentityIssuer", "team-a", "mesh-ca")
    assert not issuer.cluster_scoped
    assert issuer.source == CASource("root")
    assert issuer.home_namespace("nhi-system") == "team-a"
    assert issuer.ca_secret("nhi-system") == ("team-a", "root")


@pytest.mark.parametrize(
    ("ca", "expected"),
    [
        ({"secretName": "root"}, ("nhi-system", "root")),
        ({"secretName": "root", "secretNamespace": "pki"}, ("pki", "root")),
    ],
)
def test_cluster_issuer_ca_secret_namespace(ca: dict[str, str], expected: tuple[str, str]) -> None:
    assert Issuer.from_body(make_issuer(ca=ca)).ca_secret("nhi-system") == expected


VAULT = {
    "address": "https://vault.example.org:8200/",
    "pki": {"role": "workloads"},
    "auth": {"kubernetes": {"role": "nhi-operator"}},
}


def test_vault_source_defaults() -> None:
    issuer = Issuer.from_body(make_issuer(vault=VAULT))
    assert issuer.source == VaultSource(
        address="https://vault.example.org:8200",
        pki_role="workloads",
        auth=VaultKubernetesAuth(role="nhi-operator"),
    )
    assert issuer.source.pki_mount == "pki"
    assert issuer.source.crl_url == "https://vault.example.org:8200/v1/pki/crl"
    assert issuer.source.secret_refs() == []


def test_vault_auth_secrets_default_to_the_home_namespace() -> None:
    token = {**VAULT, "auth": {"tokenSecretRef": {"name": "vault-token"}}}
    issuer = Issuer.from_body(make_issuer("IdentityIssuer", "team-a", vault=token))
    assert isinstance(issuer.source, VaultSource)
    assert issuer.source.auth == VaultTokenAuth(SecretKeyRef("vault-token", "token"))
    [ref] = issuer.source.secret_refs()
    assert issuer.secret_ref(ref, "nhi-system") == ("team-a", "vault-token")
    approle = {
        **VAULT,
        "auth": {
            "appRole": {
                "roleId": "r-1",
                "secretIdSecretRef": {"name": "ar", "namespace": "vault-auth"},
            }
        },
    }
    cluster = Issuer.from_body(make_issuer(vault=approle))
    assert isinstance(cluster.source, VaultSource)
    assert cluster.source.auth == VaultAppRoleAuth(
        "r-1", SecretKeyRef("ar", "secretId", "vault-auth")
    )
    [ref] = cluster.source.secret_refs()
    assert cluster.secret_ref(ref, "nhi-system") == ("vault-auth", "ar")


def test_a_namespaced_vault_issuer_may_not_name_another_namespaces_secret() -> None:
    own = {**VAULT, "auth": {"tokenSecretRef": {"name": "t", "namespace": "team-a"}}}
    Issuer.from_body(make_issuer("IdentityIssuer", "team-a", vault=own))
    other = {**VAULT, "auth": {"tokenSecretRef": {"name": "t", "namespace": "team-b"}}}
    with pytest.raises(SpecError) as err:
        Issuer.from_body(make_issuer("IdentityIssuer", "team-a", vault=other))
    assert err.value.path == "spec.vault.auth.tokenSecretRef.namespace"
    assert "only use Secrets of its own namespace (team-a), not team-b" in str(err.value)


def test_issuer_key_ignores_the_namespace_of_cluster_issuers() -> None:
    assert issuer_key("ClusterIdentityIssuer", "x", "team-a") == ("ClusterIdentityIssuer", "", "x")
    assert issuer_key("IdentityIssuer", "x", "team-a") == ("IdentityIssuer", "team-a", "x")


@pytest.mark.parametrize(
    ("overrides", "path"),
    [
        ({"trustDomain": "Example.ORG"}, "spec.trustDomain"),
        ({"trustDomain": None}, "spec.trustDomain"),
        ({"ca": {"secretName": "root"}, "selfSigned": {}}, "spec"),
        ({"selfSigned": None}, "spec"),
        ({"selfSigned": {"keyAlgorithm": "DSA"}}, "spec.selfSigned.keyAlgorithm"),
        ({"selfSigned": {"ttl": "30m"}}, "spec.selfSigned.ttl"),
        ({"selfSigned": {"ttl": "one year"}}, "spec.selfSigned.ttl"),
        ({"selfSigned": {"commonName": "x" * 65}}, "spec.selfSigned.commonName"),
        ({"ca": {"secretName": "Not_A_Name"}}, "spec.ca.secretName"),
        ({"ca": {}}, "spec.ca.secretName"),
        ({"ca": {"secretName": "r", "secretNamespace": "a.b"}}, "spec.ca.secretNamespace"),
        ({"vault": {**VAULT, "address": None}}, "spec.vault.address"),
        ({"vault": {**VAULT, "address": "vault:8200"}}, "spec.vault.address"),
        ({"vault": {**VAULT, "address": "https://v/?q=1"}}, "spec.vault.address"),
        ({"vault": {**VAULT, "caBundle": "not a pem"}}, "spec.vault.caBundle"),
        ({"vault": {**VAULT, "pki": {}}}, "spec.vault.pki.role"),
        ({"vault": {**VAULT, "pki": {"role": "r", "mount": "/pki"}}}, "spec.vault.pki.mount"),
        ({"vault": {**VAULT, "auth": {}}}, "spec.vault.auth"),
        (
            {"vault": {**VAULT, "auth": {"kubernetes": {"role": "a"}, "tokenSecretRef": {}}}},
            "spec.vault.auth",
        ),
        ({"vault": {**VAULT, "auth": {"kubernetes": {}}}}, "spec.vault.auth.kubernetes.role"),
        (
            {"vault": {**VAULT, "auth": {"appRole": {"roleId": "r"}}}},
            "spec.vault.auth.appRole.secretIdSecretRef.name",
        ),
        (
            {"vault": {**VAULT, "auth": {"tokenSecretRef": {"name": "t", "key": "a b"}}}},
            "spec.vault.auth.tokenSecretRef.key",
        ),
        ({"crl": {"validity": "5m"}}, "spec.crl.validity"),
        ({"crl": {"configMapName": "nhi-trust-bundle"}}, "spec.crl.configMapName"),
        ({"trustBundle": {"configMapName": "UPPER"}}, "spec.trustBundle.configMapName"),
    ],
)
def test_spec_errors_name_the_field(overrides: dict[str, Any], path: str) -> None:
    body = make_issuer()
    if ("ca" in overrides or "vault" in overrides) and "selfSigned" not in overrides:
        del body["spec"]["selfSigned"]
    body["spec"].update(overrides)
    body["spec"] = {k: v for k, v in body["spec"].items() if v is not None}
    with pytest.raises(SpecError) as err:
        Issuer.from_body(body)
    assert err.value.path == path
    assert str(err.value).startswith(f"{path}: ")


def test_secret_namespace_is_only_for_cluster_issuers() -> None:
    body = make_issuer("IdentityIssuer", "team-a", ca={"secretName": "r", "secretNamespace": "x"})
    with pytest.raises(SpecError, match="only allowed on a ClusterIdentityIssuer"):
        Issuer.from_body(body)


def test_unknown_kind_is_rejected() -> None:
    with pytest.raises(SpecError):
        Issuer.from_body(make_issuer("MachineIdentity"))


def test_a_namespaced_vault_issuer_never_logs_in_with_the_operators_own_token() -> None:
    own = {**VAULT, "auth": {"kubernetes": {"role": "r"}}}
    with pytest.raises(SpecError) as err:
        Issuer.from_body(make_issuer("IdentityIssuer", "team-a", vault=own))
    assert err.value.path == "spec.vault.auth.kubernetes.serviceAccountName"
    aud = {
        **VAULT,
        "auth": {"kubernetes": {"role": "r", "serviceAccountName": "a", "audience": "x"}},
    }
    with pytest.raises(SpecError) as err:
        Issuer.from_body(make_issuer("IdentityIssuer", "team-a", vault=aud))
    assert err.value.path == "spec.vault.auth.kubernetes.audience"
    ok = {**VAULT, "auth": {"kubernetes": {"role": "r", "serviceAccountName": "vault-login"}}}
    source = Issuer.from_body(make_issuer("IdentityIssuer", "team-a", vault=ok)).source
    assert source.auth == VaultKubernetesAuth(role="r", service_account="vault-login")  # type: ignore[union-attr]
    assert source.auth.audience == "vault"  # type: ignore[union-attr]

"""spec.vault of a MachineIdentity: where each credential's KV copy goes, and the rules."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from nhi.models.identity import MachineIdentity, SpecError
from nhi.models.issued import Issued
from nhi.models.vault_storage import KVLocation, kv_path
from nhi.policies.rotation import spec_hash
from nhi.reconcilers.vault_storage import drift

pytestmark = pytest.mark.unit

REF = {"kind": "ClusterIdentityIssuer", "name": "vault-pki"}


def body(storage: Any = None, cred: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "owner": "team-a",
        "credentials": [{"name": "key", "type": "StaticSecret", **(cred or {})}],
    }
    if storage is not None:
        spec["vault"] = storage
    return {
        "apiVersion": "nhi.dev/v1alpha1",
        "kind": "MachineIdentity",
        "metadata": {"name": "app", "namespace": "team-a", "uid": "u-1"},
        "spec": spec,
    }


def test_credentials_default_to_the_identitys_path_in_its_namespace() -> None:
    identity = MachineIdentity.from_body(body({"issuerRef": REF}))
    assert identity.spec.vault is not None
    [cred] = identity.spec.credentials
    assert cred.kv == KVLocation("secret", "app/key")
    assert kv_path("team-a", cred.kv) == "nhi/team-a/app/key"


def test_identity_and_credential_paths() -> None:
    identity = MachineIdentity.from_body(
        body({"issuerRef": REF, "kv": {"mount": "kv", "path": "payments"}})
    )
    assert identity.spec.credentials[0].kv == KVLocation("kv", "payments/key")
    own = MachineIdentity.from_body(body({"issuerRef": REF}, {"vault": {"kv": {"path": "x/y"}}}))
    assert own.spec.credentials[0].kv == KVLocation("secret", "x/y")


def test_no_vault_no_copy_and_the_same_spec_hash_as_before() -> None:
    plain = MachineIdentity.from_body(body()).spec.credentials[0]
    assert plain.kv is None
    kept = MachineIdentity.from_body(body({"issuerRef": REF})).spec.credentials[0]
    # Adding a KV copy re-issues the credential, so the copy is written now.
    assert spec_hash(kept, "app") != spec_hash(plain, "app")


@pytest.mark.parametrize(
    ("vault", "cred", "path"),
    [
        ({}, {}, "spec.vault.issuerRef.name"),
        ({"issuerRef": {"kind": "Other", "name": "x"}}, {}, "spec.vault.issuerRef.kind"),
        ({"issuerRef": REF, "kv": {"path": "../other-namespace"}}, {}, "spec.vault.kv.path"),
        ({"issuerRef": REF, "kv": {"path": "/abs"}}, {}, "spec.vault.kv.path"),
        ({"issuerRef": REF, "kv": {"mount": "a b"}}, {}, "spec.vault.kv.mount"),
        (None, {"vault": {"kv": {"path": "x"}}}, "spec.credentials[0].vault"),
        (
            {"issuerRef": REF},
            {"vault": {"kv": {"path": "a/./b"}}},
            "spec.credentials[0].vault.kv.path",
        ),
    ],
)
def test_rules_name_the_field(vault: Any, cred: dict[str, Any], path: str) -> None:
    with pytest.raises(SpecError) as err:
        MachineIdentity.from_body(body(vault, cred))
    assert err.value.path == path


def issued(**ids: str) -> Issued:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    return Issued(
        not_before=now,
        not_after=now + dt.timedelta(hours=1),
        renewal_time=now + dt.timedelta(minutes=40),
        issued_at=now,
        rotation_count=0,
        spec_hash="h",
        **ids,
    )


def meta(version: int = 2, custom: dict[str, str] | None = None, **entry: Any) -> dict[str, Any]:
    return {
        "current_version": version,
        "custom_metadata": {
            "nhi.dev/identity-uid": "u-1",
            "nhi.dev/version": "2",
            "nhi.dev/serial": "0a:0b",
            **(custom or {}),
        },
        "versions": {str(version): {"deletion_time": "", "destroyed": False, **entry}},
    }


@pytest.mark.parametrize(
    ("found", "expected"),
    [
        (meta(), None),
        (None, ("the path was deleted", True)),
        (meta(3), ("version 3 was written by someone else", True)),
        (meta(deletion_time="2026-01-01T00:00:00Z"), ("version 2 was deleted", True)),
        (meta(destroyed=True), ("version 2 was deleted", True)),
        (meta(custom={"nhi.dev/serial": "ff"}), ("the copy is not the current value", True)),
        (
            meta(custom={"nhi.dev/identity-uid": "u-2"}),
            ("the path now holds data the operator did not write", False),
        ),
    ],
)
def test_drift_says_what_changed_and_whether_to_restore(found: Any, expected: Any) -> None:
    assert drift(found, "u-1", issued(serial="0a:0b")) == expected


def test_access_policy_grants_read_on_exactly_the_identitys_copies() -> None:
    from nhi.reconcilers.vault_access import access_name, header, policy_hcl, role_body

    identity = MachineIdentity.from_body(
        body({"issuerRef": REF, "access": {"tokenTTL": "15m"}}, {"vault": {"kv": {"path": "k"}}})
    )
    assert identity.spec.vault is not None and identity.spec.vault.access is not None
    assert identity.spec.vault.access.token_ttl == 900
    name = access_name(identity)
    assert name == "nhi.team-a.app"
    hcl = policy_hcl(identity)
    assert hcl.startswith(header(identity)) and "u-1" in header(identity)
    assert 'path "secret/data/nhi/team-a/k" {\n  capabilities = ["read"]\n}' in hcl
    assert hcl.count("path ") == 1 and "*" not in hcl
    role = role_body(identity, name, 900)
    assert role["bound_service_account_names"] == ["app"]
    assert role["bound_service_account_namespaces"] == ["team-a"]
    assert role["token_policies"] == [name]


@pytest.mark.parametrize("ttl", ["1m", "25h", "soon"])
def test_access_token_ttl_is_bounded(ttl: str) -> None:
    with pytest.raises(SpecError) as err:
        MachineIdentity.from_body(body({"issuerRef": REF, "access": {"tokenTTL": ttl}}))
    assert err.value.path == "spec.vault.access.tokenTTL"


@pytest.mark.parametrize("name", ["root", "nhi.team-a.other", "a b"])
def test_access_policies_never_root_nor_the_operators_own(name: str) -> None:
    with pytest.raises(SpecError) as err:
        MachineIdentity.from_body(body({"issuerRef": REF, "access": {"policies": [name]}}))
    assert err.value.path == "spec.vault.access.policies[0]"


def test_store_defaults_to_both_and_a_credential_may_differ() -> None:
    both = MachineIdentity.from_body(body({"issuerRef": REF}))
    assert both.spec.credentials[0].kv is not None
    assert not both.spec.credentials[0].kv.vault_only
    only = MachineIdentity.from_body(body({"issuerRef": REF, "store": "VaultOnly"}))
    assert only.spec.credentials[0].kv is not None and only.spec.credentials[0].kv.vault_only
    back = MachineIdentity.from_body(
        body({"issuerRef": REF, "store": "VaultOnly"}, {"vault": {"store": "Both"}})
    )
    assert back.spec.credentials[0].kv is not None
    assert not back.spec.credentials[0].kv.vault_only
    # Changing where a value lives issues it anew.
    assert spec_hash(only.spec.credentials[0], "app") != spec_hash(both.spec.credentials[0], "app")


@pytest.mark.parametrize(
    ("storage", "cred", "path"),
    [
        ({"issuerRef": REF, "store": "Elsewhere"}, None, "spec.vault.store"),
        ({"issuerRef": REF}, {"vault": {"store": "Secret"}}, "spec.credentials[0].vault.store"),
    ],
)
def test_store_is_both_or_vault_only(storage: Any, cred: Any, path: str) -> None:
    with pytest.raises(SpecError) as err:
        MachineIdentity.from_body(body(storage, cred))
    assert err.value.path == path

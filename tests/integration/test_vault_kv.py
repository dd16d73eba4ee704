"""Copies of credentials in Vault's KV v2 and the workload's Vault access (spec.vault),
against a real OpenBao.

Each issuance writes a new version with metadata and no value in it; the earlier version
stays readable until revocation, which destroys every version and the metadata; a path that
is not the identity's is never touched; a copy changed by someone else is restored; deleting
the identity leaves nothing in Vault. The workload logs in with its ServiceAccount token and
reads its own paths only; after revocation its login fails and its earlier token is refused.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from nhi.crypto import is_revoked, load_cert_chain, parse_serial_hex
from nhi.testenv.openbao import OpenBao, OpenBaoError
from tests.conftest import Cluster, OperatorProcess, start_operator, wait_for
from tests.integration.test_credentials import secret_data
from tests.integration.test_identity import condition, wait_condition
from tests.integration.test_vault import KUBERNETES_AUTH, issuer, ready, seen_sealed, vault_spec

pytestmark = pytest.mark.integration


@pytest.fixture
def kube(operator: OperatorProcess, openbao: OpenBao) -> Cluster:
    assert operator.cluster is not None
    return operator.cluster


@pytest.fixture
def vault_issuer(kube: Cluster, openbao: OpenBao) -> Any:
    name = f"kv-{uuid.uuid4().hex[:6]}"
    kube.apply(issuer(name, vault_spec(openbao, KUBERNETES_AUTH)))
    ready(kube, "clusteridentityissuer", name, None, "True", "CAReady", timeout=60)
    yield name
    kube.kubectl("delete", "clusteridentityissuer", name, "--wait=false")


def identity(namespace: str, vault_issuer: str, name: str = "app", **vault: Any) -> dict[str, Any]:
    return {
        "apiVersion": "nhi.dev/v1alpha1",
        "kind": "MachineIdentity",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "owner": "team-a",
            "vault": {
                "issuerRef": {"kind": "ClusterIdentityIssuer", "name": vault_issuer},
                **vault,
            },
            "credentials": [
                {
                    "name": "mtls",
                    "type": "X509",
                    "ttl": "1h",
                    "issuerRef": {"kind": "ClusterIdentityIssuer", "name": vault_issuer},
                },
                {"name": "key", "type": "StaticSecret", "ttl": "2h"},
            ],
        },
    }


def kv(bao: OpenBao, path: str, version: int | None = None) -> dict[str, Any] | None:
    query = f"?version={version}" if version else ""
    try:
        return bao.request("GET", f"secret/data/{path}{query}")["data"]
    except OpenBaoError as err:
        if "HTTP 404" in str(err):
            return None
        raise


def metadata(bao: OpenBao, path: str) -> dict[str, Any] | None:
    try:
        return bao.request("GET", f"secret/metadata/{path}")["data"]
    except OpenBaoError as err:
        if "HTTP 404" in str(err):
            return None
        raise


def test_each_issuance_is_a_version_and_revocation_destroys_them(
    kube: Cluster, openbao: OpenBao, vault_issuer: str, namespace: str
) -> None:
    kube.apply(identity(namespace, vault_issuer))
    obj = wait_condition(kube, namespace, "app", "Ready", "True", timeout=60)
    uid = obj["metadata"]["uid"]
    cert_path, key_path = f"nhi/{namespace}/app/mtls", f"nhi/{namespace}/app/key"
    first = kv(openbao, cert_path)
    assert first is not None
    assert first["data"] == secret_data(kube, namespace, "app.mtls")
    assert (
        kv(openbao, key_path)["data"]["current"]
        == secret_data(kube, namespace, "app.key")[  # type: ignore[index]
            "current"
        ]
    )
    meta = metadata(openbao, cert_path)
    assert meta is not None
    custom = meta["custom_metadata"]
    assert custom["nhi.dev/identity-uid"] == uid
    assert custom["nhi.dev/identity"] == f"{namespace}/app"
    assert custom["nhi.dev/owner"] == "team-a"
    assert custom["nhi.dev/rotation-count"] == "0"
    assert custom["nhi.dev/serial"] and custom["nhi.dev/not-after"]
    # Metadata never holds a value.
    assert not any(v and v in json.dumps(custom) for v in first["data"].values() if len(v) > 20)

    kube.kubectl(
        "annotate",
        "machineidentity",
        "app",
        "-n",
        namespace,
        "nhi.dev/renew-requested-at=2099-01-01T00:00:00Z",
    )
    wait_for(
        lambda: (
            (m := metadata(openbao, cert_path))
            and m["current_version"] == 2
            and m["custom_metadata"]["nhi.dev/version"] == "2"
        ),
        timeout=60,
        message="a second KV version and its metadata",
    )
    second = kv(openbao, cert_path)
    assert second is not None and second["data"]["tls.crt"] != first["data"]["tls.crt"]
    assert metadata(openbao, cert_path)["custom_metadata"]["nhi.dev/rotation-count"] == "1"  # type: ignore[index]
    # The previous version stays readable until revocation.
    assert kv(openbao, cert_path, version=1)["data"] == first["data"]  # type: ignore[index]

    kube.kubectl("annotate", "machineidentity", "app", "-n", namespace, "nhi.dev/revoke=true")
    wait_for(
        lambda: metadata(openbao, cert_path) is None and metadata(openbao, key_path) is None,
        timeout=60,
        message="every version and the metadata destroyed",
    )
    assert kv(openbao, cert_path, version=1) is None


def test_a_path_that_is_not_the_identitys_is_left_alone(
    kube: Cluster, openbao: OpenBao, vault_issuer: str, namespace: str
) -> None:
    theirs = f"nhi/{namespace}/taken/mtls"
    openbao.request("POST", f"secret/data/{theirs}", {"data": {"tls.crt": "someone else's"}})
    kube.apply(identity(namespace, vault_issuer, kv={"path": "taken"}))
    obj = wait_for(
        lambda: (
            (o := kube.get("machineidentity", "app", namespace))
            and (c := condition(o, "Ready"))
            and c["status"] == "False"
            and "taken/mtls" in c["message"]
            and o
        ),
        timeout=60,
        message="the credential refused",
    )
    message = condition(obj, "Ready")["message"]  # type: ignore[index]
    assert "data the operator did not write" in message
    assert kv(openbao, theirs)["data"] == {"tls.crt": "someone else's"}  # type: ignore[index]
    # Deleting the identity does not destroy what was not its own.
    kube.kubectl("delete", "machineidentity", "app", "-n", namespace, "--timeout=60s")
    assert kv(openbao, theirs)["data"] == {"tls.crt": "someone else's"}  # type: ignore[index]


def test_deleting_the_identity_leaves_nothing_in_vault(
    kube: Cluster, openbao: OpenBao, vault_issuer: str, namespace: str
) -> None:
    kube.apply(identity(namespace, vault_issuer, name="gone", kv={"path": "custom/place"}))
    wait_condition(kube, namespace, "gone", "Ready", "True", timeout=60)
    path = f"nhi/{namespace}/custom/place/mtls"
    assert kv(openbao, path) is not None
    kube.kubectl("delete", "machineidentity", "gone", "-n", namespace, "--timeout=60s")
    wait_for(
        lambda: metadata(openbao, path) is None,
        timeout=30,
        message="the KV copies destroyed with the identity",
    )


def test_a_copy_deleted_or_overwritten_by_someone_else_is_restored(
    kube: Cluster,
    openbao: OpenBao,
    vault_issuer: str,
    operator: OperatorProcess,
    namespace: str,
    tmp_path: Path,
) -> None:
    # An operator of its own that checks the copies every 2 s (the shared one is paused).
    os.killpg(operator.proc.pid, signal.SIGSTOP)
    own = None
    try:
        own = start_operator(kube, tmp_path / "operator.log", "--vault-kv-check-interval=2")
        kube.apply(identity(namespace, vault_issuer))
        wait_condition(kube, namespace, "app", "Ready", "True", timeout=60)
        path = f"nhi/{namespace}/app/key"
        value = secret_data(kube, namespace, "app.key")
        assert kv(openbao, path)["data"] == value  # type: ignore[index]

        def restored_after(version: int) -> bool:
            m = metadata(openbao, path)
            return bool(m and m["current_version"] > version and kv(openbao, path))

        # Someone overwrites it: a new version with the value is written back.
        openbao.request("POST", f"secret/data/{path}", {"data": {"current": "tampered"}})
        wait_for(lambda: restored_after(2), timeout=30, message="the overwritten copy restored")
        assert kv(openbao, path)["data"] == value  # type: ignore[index]
        # Someone deletes the current version.
        current = metadata(openbao, path)["current_version"]  # type: ignore[index]
        openbao.request("DELETE", f"secret/data/{path}")
        wait_for(lambda: restored_after(current), timeout=30, message="the deleted copy restored")
        assert kv(openbao, path)["data"] == value  # type: ignore[index]
        # Someone deletes the whole path.
        openbao.request("DELETE", f"secret/metadata/{path}")
        wait_for(lambda: kv(openbao, path), timeout=30, message="the deleted path restored")
        assert kv(openbao, path)["data"] == value  # type: ignore[index]
        assert metadata(openbao, path)["custom_metadata"]["nhi.dev/identity"] == (  # type: ignore[index]
            f"{namespace}/app"
        )
        assert "restored credential in Vault" in own.log()
    finally:
        if own is not None:
            own.stop()
        os.killpg(operator.proc.pid, signal.SIGCONT)


def service_account_token(kube: Cluster, namespace: str) -> str:
    return kube.kubectl("create", "token", "app", "-n", namespace).stdout.strip()


def workload_login(bao: OpenBao, jwt: str, role: str) -> str:
    """What the workload does: log in with its ServiceAccount token; the Vault token."""
    answer = bao.request("POST", "auth/kubernetes/login", {"role": role, "jwt": jwt}, token=False)
    return str(answer["auth"]["client_token"])


def read_as(bao: OpenBao, token: str, path: str) -> dict[str, Any]:
    root = bao.root_token
    bao.root_token = token
    try:
        return bao.request("GET", f"secret/data/{path}")
    finally:
        bao.root_token = root


def test_the_workload_reads_its_own_paths_only_until_revocation(
    kube: Cluster, openbao: OpenBao, vault_issuer: str, namespace: str
) -> None:
    other = f"nhi/{namespace}/other/key"
    openbao.request("POST", f"secret/data/{other}", {"data": {"current": "not yours"}})
    kube.apply(identity(namespace, vault_issuer, access={"tokenTTL": "15m"}))
    wait_condition(kube, namespace, "app", "Ready", "True", timeout=60)
    role = f"nhi.{namespace}.app"
    policy = openbao.request("GET", f"sys/policies/acl/{role}")["data"]["policy"]
    assert f'path "secret/data/nhi/{namespace}/app/key"' in policy
    assert f'path "secret/data/nhi/{namespace}/app/mtls"' in policy
    bound = openbao.request("GET", f"auth/kubernetes/role/{role}")["data"]
    assert bound["bound_service_account_names"] == ["app"]
    assert bound["bound_service_account_namespaces"] == [namespace]
    assert bound["token_ttl"] == 900

    # The login goes through a real TokenReview of the ServiceAccount's token.
    jwt = service_account_token(kube, namespace)
    token = workload_login(openbao, jwt, role)
    value = secret_data(kube, namespace, "app.key")["current"]
    assert read_as(openbao, token, f"nhi/{namespace}/app/key")["data"]["data"]["current"] == value
    with pytest.raises(OpenBaoError, match="HTTP 403"):
        read_as(openbao, token, other)

    kube.kubectl("annotate", "machineidentity", "app", "-n", namespace, "nhi.dev/revoke=true")
    started = time.monotonic()

    def refused() -> bool:
        try:
            read_as(openbao, token, f"nhi/{namespace}/app/key")
        except OpenBaoError as err:
            return "HTTP 403" in str(err) or "HTTP 404" in str(err)
        return False

    wait_for(refused, timeout=15, interval=0.1, message="the earlier Vault token refused")
    assert time.monotonic() - started < 5
    # The ServiceAccount token the pod still holds no longer logs in.
    with pytest.raises(OpenBaoError, match="HTTP 4"):
        workload_login(openbao, jwt, role)
    with pytest.raises(OpenBaoError, match="HTTP 404"):
        openbao.request("GET", f"sys/policies/acl/{role}")
    # The copies go after the access.
    wait_for(
        lambda: metadata(openbao, f"nhi/{namespace}/app/key") is None,
        timeout=15,
        message="the revoked identity's KV copy destroyed",
    )
    # The ServiceAccount's Vault entity went too: nothing of the workload is left in Vault.
    wait_for(
        lambda: "removed Vault entity" in kube.kubectl("get", "events", "-n", namespace).stdout,
        timeout=15,
        message="the Event naming the removed entity",
    )


def test_named_vault_policies_only_where_an_identity_policy_allows_them(
    kube: Cluster, openbao: OpenBao, vault_issuer: str, namespace: str
) -> None:
    kube.apply(identity(namespace, vault_issuer, access={"policies": ["reports-read"]}))
    obj = wait_for(
        lambda: (
            (o := kube.get("machineidentity", "app", namespace))
            and (c := condition(o, "Ready"))
            and c["reason"] == "VaultPoliciesNotAllowed"
            and o
        ),
        timeout=30,
        message="the extra Vault policy refused",
    )
    assert "spec.vault.access.policies[0]" in condition(obj, "Ready")["message"]  # type: ignore[index]
    role = f"nhi.{namespace}.app"
    with pytest.raises(OpenBaoError, match="HTTP 404"):
        openbao.request("GET", f"auth/kubernetes/role/{role}")
    policy = f"vault-{namespace}"
    kube.apply(
        {
            "apiVersion": "nhi.dev/v1alpha1",
            "kind": "IdentityPolicy",
            "metadata": {"name": policy},
            "spec": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "allowedVaultPolicies": ["reports-read"],
            },
        }
    )
    try:
        wait_condition(kube, namespace, "app", "Ready", "True", timeout=60)
        bound = openbao.request("GET", f"auth/kubernetes/role/{role}")["data"]
        assert bound["token_policies"] == [role, "reports-read"]
    finally:
        kube.kubectl("delete", "identitypolicy", policy, "--wait=false")
    # The policy is gone: what it allowed is withdrawn from the role, not only refused anew.
    wait_for(
        lambda: (
            openbao.request("GET", f"auth/kubernetes/role/{role}")["data"]["token_policies"]
            == [role]
        ),
        timeout=60,
        message="reports-read withdrawn from the role",
    )
    wait_condition(kube, namespace, "app", "Ready", "False", timeout=30)
    warnings = kube.kubectl("get", "events", "-n", namespace, "--field-selector",
                            "reason=VaultPoliciesNotAllowed", "-o", "json").stdout  # fmt: skip
    assert "withdrew Vault policies" in warnings and "reports-read" in warnings


def test_vault_only_leaves_no_secret(
    kube: Cluster, openbao: OpenBao, vault_issuer: str, namespace: str
) -> None:
    body = identity(namespace, vault_issuer)
    kube.apply(body)
    wait_condition(kube, namespace, "app", "Ready", "True", timeout=60)
    assert kube.get("secret", "app.key", namespace) is not None
    key_path, cert_path = f"nhi/{namespace}/app/key", f"nhi/{namespace}/app/mtls"

    # Both -> VaultOnly: new values go to Vault only, and the Secrets go.
    body["spec"]["vault"]["store"] = "VaultOnly"
    kube.apply(body)
    wait_for(
        lambda: (
            kube.get("secret", "app.key", namespace) is None
            and kube.get("secret", "app.mtls", namespace) is None
        ),
        timeout=60,
        message="the credential Secrets removed",
    )
    obj = wait_condition(kube, namespace, "app", "Ready", "True", timeout=60)
    statuses = {c["name"]: c for c in obj["status"]["credentials"]}
    assert "secretName" not in statuses["key"]
    assert statuses["key"]["vaultPath"] == f"secret/data/{key_path}"
    first = kv(openbao, key_path)
    assert first is not None and first["data"]["current"]
    custom = metadata(openbao, key_path)["custom_metadata"]  # type: ignore[index]
    assert custom["nhi.dev/fingerprint"] == statuses["key"]["fingerprint"]

    # A renewal keeps the value being replaced as previous, read back from Vault.
    before = first["data"]["current"]
    kube.kubectl(
        "annotate",
        "machineidentity",
        "app",
        "-n",
        namespace,
        "nhi.dev/renew-requested-at=2099-01-01T00:00:00Z",
        "--overwrite",
    )
    wait_for(
        lambda: (d := kv(openbao, key_path)) and d["data"].get("previous") == before,
        timeout=60,
        message="the renewed value with the previous one",
    )
    assert kube.get("secret", "app.key", namespace) is None

    # Revocation: the certificate's serial on Vault's CRL, nothing left in Vault.
    renewed = wait_condition(kube, namespace, "app", "Ready", "True", timeout=60)
    serial = {c["name"]: c for c in renewed["status"]["credentials"]}["mtls"]["serialNumber"]
    kube.kubectl("annotate", "machineidentity", "app", "-n", namespace, "nhi.dev/revoke=true")
    wait_for(
        lambda: metadata(openbao, key_path) is None and metadata(openbao, cert_path) is None,
        timeout=60,
        message="the copies destroyed",
    )
    ca = load_cert_chain(openbao.text("pki/ca/pem"))[0]
    wait_for(
        lambda: is_revoked(openbao.text("pki/crl/pem"), ca, parse_serial_hex(serial)),
        timeout=30,
        message="the VaultOnly certificate's serial on Vault's CRL",
    )


def test_vault_clean_up_of_a_revoked_identity_waits_for_its_server(
    kube: Cluster, openbao: OpenBao, vault_issuer: str, namespace: str
) -> None:
    kube.apply(identity(namespace, vault_issuer, access={"tokenTTL": "15m"}))
    wait_condition(kube, namespace, "app", "Ready", "True", timeout=60)
    role, key_path = f"nhi.{namespace}.app", f"nhi/{namespace}/app/key"
    assert metadata(openbao, key_path) is not None

    def ready_message() -> str:
        obj = kube.get("machineidentity", "app", namespace) or {}
        c = condition(obj, "Ready") if obj.get("status") else None
        return str(c["message"]) if c else ""

    openbao.seal()
    try:
        seen_sealed(kube, vault_issuer)
        kube.kubectl("annotate", "machineidentity", "app", "-n", namespace, "nhi.dev/revoke=true")
        # Kubernetes' part is done at once; the status says Vault's waits, and why.
        wait_for(
            lambda: "Vault clean-up is tried again" in ready_message(),
            timeout=30,
            message="the revoked identity saying its Vault clean-up waits",
        )
        obj = kube.get("machineidentity", "app", namespace)
        assert obj is not None and obj["status"]["phase"] == "Revoked"
        assert kube.get("secret", "app.key", namespace) is None
        assert "VaultSealed" in ready_message() or "sealed" in ready_message().lower()
    finally:
        openbao.unseal()
    # Once the server answers, the copies, the role and the policy go (in that
    # order, so the status is the one sign that all of it is done).
    wait_for(
        lambda: "Vault clean-up" not in ready_message(),
        timeout=120,
        message="the status no longer waiting on Vault",
    )
    assert metadata(openbao, key_path) is None
    with pytest.raises(OpenBaoError, match="HTTP 404"):
        openbao.request("GET", f"auth/kubernetes/role/{role}")
    with pytest.raises(OpenBaoError, match="HTTP 404"):
        openbao.request("GET", f"sys/policies/acl/{role}")


def test_a_deleted_identity_waits_for_a_sealed_server_to_leave_nothing_in_vault(
    kube: Cluster, openbao: OpenBao, vault_issuer: str, namespace: str
) -> None:
    kube.apply(identity(namespace, vault_issuer, access={"tokenTTL": "15m"}))
    wait_condition(kube, namespace, "app", "Ready", "True", timeout=60)
    role, key_path = f"nhi.{namespace}.app", f"nhi/{namespace}/app/key"
    openbao.seal()
    try:
        seen_sealed(kube, vault_issuer)
        kube.kubectl("delete", "machineidentity", "app", "-n", namespace, "--wait=false")
        # Its Secrets go at once; the identity itself waits for Vault's part.
        wait_for(
            lambda: kube.get("secret", "app.key", namespace) is None,
            timeout=30,
            message="the deleted identity's Secret gone",
        )
        time.sleep(3)
        held = kube.get("machineidentity", "app", namespace)
        assert held is not None and held["metadata"].get("deletionTimestamp")
    finally:
        openbao.unseal()
    wait_for(
        lambda: kube.get("machineidentity", "app", namespace) is None,
        timeout=120,
        message="the identity gone once the server answered",
    )
    assert metadata(openbao, key_path) is None
    with pytest.raises(OpenBaoError, match="HTTP 404"):
        openbao.request("GET", f"auth/kubernetes/role/{role}")

"""A hostile tenant against the real control plane: the operator is no confused deputy.

The tenant, ``mallory``, may only create, read, change and delete MachineIdentities in her
namespace. Everything she names in a spec (a Secret, a Role, a ServiceAccount) is an attack
surface: each test points an identity at an object she does not own and asserts that the
object's data, labels, annotations, owners and existence are exactly as they were, before
and after the identity goes, and that she holds no permission she did not hold before.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from nhi.crypto import is_revoked, load_cert_chain, serial_hex
from tests.conftest import Cluster, OperatorProcess, wait_for
from tests.integration.test_credentials import secret_data
from tests.integration.test_identity import condition, events, wait_condition

pytestmark = pytest.mark.integration

TENANT = "mallory"


def _cluster(operator: OperatorProcess) -> Cluster:
    assert operator.cluster is not None
    return operator.cluster


@pytest.fixture
def tenant(operator: OperatorProcess, namespace: str) -> Iterator[Cluster]:
    """Mallory's rights: MachineIdentities in her namespace, nothing else."""
    cluster = _cluster(operator)
    cluster.kubectl(
        "create",
        "role",
        "identity-writer",
        "-n",
        namespace,
        "--verb=create,get,list,watch,update,patch,delete",
        "--resource=machineidentities.nhi.dev",
    )
    cluster.kubectl(
        "create",
        "rolebinding",
        "mallory",
        "-n",
        namespace,
        "--role=identity-writer",
        f"--user={TENANT}",
    )
    yield cluster


def as_tenant(cluster: Cluster, manifest: dict[str, Any], check: bool = True) -> Any:
    return cluster.kubectl(
        "apply",
        "--server-side",
        "-f",
        "-",
        input=json.dumps(manifest),
        as_user=TENANT,
        check=check,
    )


def mid(
    namespace: str, name: str, *, annotations: dict[str, str] | None = None, **spec: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {"owner": "mallory"}
    body.update(spec)
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if annotations:
        meta["annotations"] = annotations
    return {
        "apiVersion": "nhi.dev/v1alpha1",
        "kind": "MachineIdentity",
        "metadata": meta,
        "spec": body,
    }


def static(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "StaticSecret", **extra}


def state(cluster: Cluster, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
    """What must not change about a foreign object: all of it that a user can see."""
    obj = cluster.get(kind, name, namespace)
    if obj is None:
        return None
    meta = obj["metadata"]
    return {
        "uid": meta["uid"],
        "resourceVersion": meta["resourceVersion"],
        "labels": meta.get("labels"),
        "annotations": meta.get("annotations"),
        "ownerReferences": meta.get("ownerReferences"),
        "finalizers": meta.get("finalizers"),
        "body": {k: v for k, v in obj.items() if k not in ("metadata", "apiVersion", "kind")},
    }


def privileges(cluster: Cluster, namespace: str) -> str:
    return cluster.kubectl("auth", "can-i", "--list", "-n", namespace, as_user=TENANT).stdout


def delete_identity(cluster: Cluster, namespace: str, name: str) -> None:
    cluster.kubectl(
        "delete", "machineidentity", name, "-n", namespace, "--wait=false", as_user=TENANT
    )
    wait_for(
        lambda: cluster.get("machineidentity", name, namespace) is None,
        timeout=30,
        message=f"MachineIdentity {name} gone (its finalizer removed)",
    )


def stalled(cluster: Cluster, namespace: str, name: str, reason: str) -> dict[str, Any]:
    obj = wait_condition(cluster, namespace, name, "Stalled", "True", reason)
    ready = condition(obj, "Ready")
    assert ready is not None and ready["status"] == "False"
    return obj


def create_secret(cluster: Cluster, namespace: str, name: str, **labels: str) -> None:
    cluster.kubectl(
        "create", "secret", "generic", name, "-n", namespace, "--from-literal=password=hunter2"
    )
    if labels:
        cluster.kubectl(
            "label", "secret", name, "-n", namespace, *(f"{k}={v}" for k, v in labels.items())
        )


# ------------------------------------------------------------------------------ Secrets


def test_a_secret_name_pointing_at_another_apps_secret_leaves_it_untouched(
    tenant: Cluster, namespace: str
) -> None:
    cluster = tenant
    create_secret(cluster, namespace, "db-password")
    before = state(cluster, "secret", "db-password", namespace)
    rights = privileges(cluster, namespace)

    as_tenant(
        cluster,
        mid(
            namespace,
            "thief",
            credentials=[static("grab", secretName="db-password"), static("own")],
        ),
    )
    obj = stalled(cluster, namespace, "thief", "OwnershipConflict")
    message = condition(obj, "Ready")["message"]  # type: ignore[index]
    assert message.startswith("spec.credentials[0].secretName: Secret 'db-password'")
    assert "was not created by nhi-operator for this identity" in message
    # The identity's own credential is issued all the same.
    own = wait_for(
        lambda: (s := cluster.get("secret", "thief.own", namespace)) and s.get("data") and s
    )
    assert own["data"]["current"]
    assert "OwnershipConflict" in {
        e["reason"] for e in events(cluster, namespace, "thief", reasons=["OwnershipConflict"])
    }
    time.sleep(3)  # no retry loop touches it either
    assert state(cluster, "secret", "db-password", namespace) == before

    delete_identity(cluster, namespace, "thief")
    assert state(cluster, "secret", "db-password", namespace) == before
    assert cluster.get("secret", "thief.own", namespace) is None
    assert privileges(cluster, namespace) == rights


def test_two_identities_never_fight_over_one_secret(tenant: Cluster, namespace: str) -> None:
    cluster = tenant
    cluster.apply(mid(namespace, "victim", credentials=[static("key")]))
    wait_condition(cluster, namespace, "victim", "Ready", "True")
    before = state(cluster, "secret", "victim.key", namespace)

    as_tenant(
        cluster, mid(namespace, "thief", credentials=[static("key", secretName="victim.key")])
    )
    obj = stalled(cluster, namespace, "thief", "OwnershipConflict")
    message = condition(obj, "Ready")["message"]  # type: ignore[index]
    assert "it belongs to MachineIdentity/victim" in message
    time.sleep(5)  # a fight would re-issue it many times a second
    assert state(cluster, "secret", "victim.key", namespace) == before
    victim = cluster.get("machineidentity", "victim", namespace) or {}
    assert victim["status"]["credentials"][0]["rotationCount"] == 0

    delete_identity(cluster, namespace, "thief")
    assert state(cluster, "secret", "victim.key", namespace) == before


def test_default_names_of_two_identities_cannot_collide(tenant: Cluster, namespace: str) -> None:
    cluster = tenant
    as_tenant(cluster, mid(namespace, "pay-api", credentials=[static("token")]))
    as_tenant(cluster, mid(namespace, "pay", credentials=[static("api-token")]))
    for name in ("pay-api", "pay"):
        wait_condition(cluster, namespace, name, "Ready", "True")
    a = cluster.get("secret", "pay-api.token", namespace)
    b = cluster.get("secret", "pay.api-token", namespace)
    assert a is not None and b is not None
    assert a["data"]["current"] != b["data"]["current"]
    time.sleep(3)
    for name in ("pay-api", "pay"):
        obj = cluster.get("machineidentity", name, namespace) or {}
        assert obj["status"]["credentials"][0]["rotationCount"] == 0


def test_labels_prove_nothing(tenant: Cluster, namespace: str) -> None:
    """Objects labelled as the identity's children, but not made by the operator for it, are
    neither written nor deleted, not even as orphans."""
    cluster = tenant
    owner = {"app.kubernetes.io/managed-by": "nhi-operator", "nhi.dev/identity": "app"}
    create_secret(cluster, namespace, "decoy", **owner, **{"nhi.dev/credential": "gone"})
    cluster.kubectl(
        "create", "role", "nhi-app-extra", "-n", namespace, "--verb=get", "--resource=pods"
    )
    cluster.kubectl(
        "label", "role", "nhi-app-extra", "-n", namespace, *(f"{k}={v}" for k, v in owner.items())
    )
    decoys = [("secret", "decoy"), ("role", "nhi-app-extra")]
    before = {d: state(cluster, *d, namespace) for d in decoys}

    as_tenant(cluster, mid(namespace, "app"))
    wait_condition(cluster, namespace, "app", "Ready", "True")
    time.sleep(2)
    assert {d: state(cluster, *d, namespace) for d in decoys} == before
    delete_identity(cluster, namespace, "app")
    assert {d: state(cluster, *d, namespace) for d in decoys} == before


# ------------------------------------------------------------------------------ RBAC


def test_an_existing_role_and_binding_of_the_derived_name_are_left_alone(
    tenant: Cluster, namespace: str
) -> None:
    cluster = tenant
    cluster.kubectl(
        "create", "role", "nhi-app", "-n", namespace, "--verb=get,list", "--resource=secrets"
    )
    cluster.kubectl(
        "create", "rolebinding", "nhi-app", "-n", namespace, "--role=nhi-app", "--group=auditors"
    )
    before = {k: state(cluster, k, "nhi-app", namespace) for k in ("role", "rolebinding")}

    rule = {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}
    as_tenant(cluster, mid(namespace, "app", permissions={"rules": [rule]}))
    obj = stalled(cluster, namespace, "app", "OwnershipConflict")
    assert "spec.permissions.rules: Role 'nhi-app'" in condition(obj, "Ready")["message"]  # type: ignore[index]
    time.sleep(2)
    assert {k: state(cluster, k, "nhi-app", namespace) for k in ("role", "rolebinding")} == before

    delete_identity(cluster, namespace, "app")
    assert {k: state(cluster, k, "nhi-app", namespace) for k in ("role", "rolebinding")} == before


# ------------------------------------------------------------------------------ adoption


def service_account(cluster: Cluster, namespace: str, name: str) -> None:
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {"team": "ops"},
                "annotations": {"note": "deploys everything"},
            },
            "automountServiceAccountToken": True,
        }
    )


def test_adopting_needs_update_and_delete_rights_on_the_service_account(
    tenant: Cluster, namespace: str
) -> None:
    cluster = tenant
    service_account(cluster, namespace, "deployer")
    before = state(cluster, "serviceaccount", "deployer", namespace)
    rights = privileges(cluster, namespace)
    adopt = {"nhi.dev/adopt": "true"}

    refused = as_tenant(cluster, mid(namespace, "deployer", annotations=adopt), check=False)
    assert refused.returncode != 0
    assert (
        "metadata.annotations[nhi.dev/adopt]: mallory may not update and delete" in refused.stderr
    )
    # Nor by asking later, once the identity exists (stalled, without the annotation).
    as_tenant(cluster, mid(namespace, "deployer"))
    stalled(cluster, namespace, "deployer", "ServiceAccountConflict")
    refused = cluster.kubectl(
        "annotate",
        "machineidentity",
        "deployer",
        "-n",
        namespace,
        "nhi.dev/adopt=true",
        as_user=TENANT,
        check=False,
    )
    assert refused.returncode != 0 and "may not update and delete" in refused.stderr
    time.sleep(2)
    assert state(cluster, "serviceaccount", "deployer", namespace) == before
    delete_identity(cluster, namespace, "deployer")
    assert state(cluster, "serviceaccount", "deployer", namespace) == before
    assert privileges(cluster, namespace) == rights


def test_an_adopted_service_account_is_given_back_as_it_was(
    operator: OperatorProcess, namespace: str
) -> None:
    cluster = _cluster(operator)
    service_account(cluster, namespace, "deployer")
    before = cluster.get("serviceaccount", "deployer", namespace) or {}
    cluster.apply(mid(namespace, "deployer", annotations={"nhi.dev/adopt": "true"}))
    wait_condition(cluster, namespace, "deployer", "Ready", "True")
    adopted = cluster.get("serviceaccount", "deployer", namespace) or {}
    assert adopted["metadata"]["uid"] == before["metadata"]["uid"]
    assert adopted["automountServiceAccountToken"] is False
    assert adopted["metadata"]["ownerReferences"][0]["kind"] == "MachineIdentity"

    cluster.kubectl("delete", "machineidentity", "deployer", "-n", namespace, "--wait=false")
    wait_for(lambda: cluster.get("machineidentity", "deployer", namespace) is None)
    after = cluster.get("serviceaccount", "deployer", namespace)
    assert after is not None, "an adopted ServiceAccount is released, not deleted"
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert after["metadata"].get("labels") == before["metadata"].get("labels")
    assert after["metadata"].get("annotations") == before["metadata"].get("annotations")
    assert after["automountServiceAccountToken"] is True
    assert not after["metadata"].get("ownerReferences")


def test_a_service_account_controlled_by_another_object_is_never_adopted(
    operator: OperatorProcess, namespace: str
) -> None:
    cluster = _cluster(operator)
    cluster.kubectl("create", "configmap", "holder", "-n", namespace)
    holder = cluster.get("configmap", "holder", namespace) or {}
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {
                "name": "held",
                "namespace": namespace,
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "name": "holder",
                        "uid": holder["metadata"]["uid"],
                        "controller": True,
                    }
                ],
            },
        }
    )
    before = state(cluster, "serviceaccount", "held", namespace)
    cluster.apply(mid(namespace, "held", annotations={"nhi.dev/adopt": "true"}))
    obj = stalled(cluster, namespace, "held", "OwnershipConflict")
    assert "it is controlled by ConfigMap/holder" in condition(obj, "Ready")["message"]  # type: ignore[index]
    delete_identity_as_admin(cluster, namespace, "held")
    assert state(cluster, "serviceaccount", "held", namespace) == before


def delete_identity_as_admin(cluster: Cluster, namespace: str, name: str) -> None:
    cluster.kubectl("delete", "machineidentity", name, "-n", namespace, "--wait=false")
    wait_for(lambda: cluster.get("machineidentity", name, namespace) is None, timeout=30)


def test_the_default_service_account_is_adopted_only_where_a_policy_allows_it(
    operator: OperatorProcess, namespace: str
) -> None:
    cluster = _cluster(operator)
    wait_for(lambda: cluster.get("serviceaccount", "default", namespace))
    before = state(cluster, "serviceaccount", "default", namespace)
    cluster.apply(
        mid(
            namespace,
            "web",
            annotations={"nhi.dev/adopt": "true"},
            serviceAccount={"name": "default"},
        )
    )
    obj = stalled(cluster, namespace, "web", "AdoptionNotAllowed")
    assert "allowDefaultServiceAccount: true" in condition(obj, "Ready")["message"]  # type: ignore[index]
    time.sleep(1)
    assert state(cluster, "serviceaccount", "default", namespace) == before

    policy = f"allow-default-{namespace}"
    cluster.apply(
        {
            "apiVersion": "nhi.dev/v1alpha1",
            "kind": "IdentityPolicy",
            "metadata": {"name": policy},
            "spec": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "adoption": {"allowDefaultServiceAccount": True},
            },
        }
    )
    try:
        wait_condition(cluster, namespace, "web", "Ready", "True")
        delete_identity_as_admin(cluster, namespace, "web")
        after = cluster.get("serviceaccount", "default", namespace) or {}
        assert after["metadata"]["uid"] == (before or {})["uid"]
        assert not after["metadata"].get("ownerReferences")
    finally:
        cluster.kubectl("delete", "identitypolicy", policy, check=False)


def test_restarting_workloads_needs_patch_rights_on_them(tenant: Cluster, namespace: str) -> None:
    cluster = tenant
    cluster.kubectl(
        "create", "deployment", "web", "-n", namespace, "--image=registry.invalid/web:1"
    )
    # Its status changes on its own (kube-controller-manager); its pod template must not.
    before = (cluster.get("deployment", "web", namespace) or {})["spec"]
    workloads = {"selector": {"matchLabels": {"app": "web"}}, "rolloutOnRotation": True}
    refused = as_tenant(cluster, mid(namespace, "app", workloads=workloads), check=False)
    assert refused.returncode != 0
    assert "spec.workloads.rolloutOnRotation: mallory may not patch" in refused.stderr
    # Without the rollout, the same identity is fine; turning it on later is refused too.
    as_tenant(cluster, mid(namespace, "app", workloads={**workloads, "rolloutOnRotation": False}))
    wait_condition(cluster, namespace, "app", "Ready", "True")
    refused = as_tenant(cluster, mid(namespace, "app", workloads=workloads), check=False)
    assert refused.returncode != 0 and "may not patch" in refused.stderr
    assert (cluster.get("deployment", "web", namespace) or {})["spec"] == before
    # Someone who may patch the workloads may ask for it (the checks fit the CEL budget).
    spec = json.dumps(mid(namespace, "app", workloads=workloads))
    admin = cluster.kubectl("apply", "--server-side", "--dry-run=server", "-f", "-", input=spec)
    assert admin.returncode == 0, admin.stderr


# ------------------------------------------------------------------------------ the CRL


def leaf_serial(cluster: Cluster, namespace: str, secret: str) -> int:
    return load_cert_chain(secret_data(cluster, namespace, secret)["tls.crt"])[0].serial_number


def test_a_serial_written_into_her_secret_does_not_revoke_another_tenants_certificate(
    tenant: Cluster, namespace: str
) -> None:
    """Mallory may also edit the Secrets of her namespace (as a namespace's admin may): she
    writes a victim's serial into her credential Secret's annotations and revokes her
    identity. The shared issuer's CRL gets her certificate, never the victim's."""
    shared = f"shared-{uuid.uuid4().hex[:6]}"
    victim_ns = f"victim-{uuid.uuid4().hex[:6]}"
    tenant.kubectl(
        "create", "role", "secret-editor", "-n", namespace,
        "--verb=get,list,update,patch", "--resource=secrets",
    )  # fmt: skip
    tenant.kubectl(
        "create", "rolebinding", "mallory-secrets", "-n", namespace,
        "--role=secret-editor", f"--user={TENANT}",
    )  # fmt: skip
    tenant.kubectl("create", "namespace", victim_ns)
    tenant.apply(
        {
            "apiVersion": "nhi.dev/v1alpha1",
            "kind": "ClusterIdentityIssuer",
            "metadata": {"name": shared},
            "spec": {"trustDomain": "example.org", "selfSigned": {"ttl": "48h"}},
        }
    )
    mtls = {
        "name": "mtls",
        "type": "X509",
        "ttl": "1h",
        "issuerRef": {"kind": "ClusterIdentityIssuer", "name": shared},
    }
    try:
        tenant.apply(mid(victim_ns, "bank", credentials=[mtls]))
        as_tenant(tenant, mid(namespace, "app", credentials=[mtls]))
        wait_condition(tenant, victim_ns, "bank", "Ready", "True", timeout=60)
        wait_condition(tenant, namespace, "app", "Ready", "True", timeout=60)
        victim = load_cert_chain(secret_data(tenant, victim_ns, "bank.mtls")["tls.crt"])[0]
        hers = load_cert_chain(secret_data(tenant, namespace, "app.mtls")["tls.crt"])[0]
        root = load_cert_chain(secret_data(tenant, victim_ns, "bank.mtls")["ca.crt"])[0]

        tenant.kubectl(
            "annotate", "secret", "app.mtls", "-n", namespace, "--overwrite",
            f"nhi.dev/serial={serial_hex(victim)}", as_user=TENANT,
        )  # fmt: skip
        tenant.kubectl(
            "annotate", "machineidentity", "app", "-n", namespace, "nhi.dev/revoke=true",
            as_user=TENANT,
        )  # fmt: skip
        crl_name = f"nhi-crl-clusteridentityissuer-{shared}"
        wait_for(
            lambda: (
                (cm := tenant.get("configmap", crl_name, "nhi-system"))
                and is_revoked(cm["data"]["ca.crl"].encode(), root, hers.serial_number)
            ),
            timeout=30,
            message="her own certificate on the shared CRL",
        )
        cm = tenant.get("configmap", crl_name, "nhi-system")
        assert cm is not None
        assert not is_revoked(cm["data"]["ca.crl"].encode(), root, victim.serial_number)
        # The victim's certificate is as valid as it was.
        assert leaf_serial(tenant, victim_ns, "bank.mtls") == victim.serial_number
    finally:
        tenant.kubectl("delete", "namespace", victim_ns, "--wait=false")
        tenant.kubectl("delete", "clusteridentityissuer", shared, "--wait=false")

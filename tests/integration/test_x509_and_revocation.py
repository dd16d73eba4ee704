"""X509 SPIFFE certificates, and revocation: workloads gone, JIT expiry, manual, restart."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from nhi.crypto import is_revoked, load_cert_chain, parse_serial_hex, verify_chain
from tests.conftest import Cluster, OperatorProcess, wait_for
from tests.integration.test_credentials import AUDIENCE, review, secret_data
from tests.integration.test_identity import _cluster, condition, events, wait_condition

pytestmark = pytest.mark.integration


def issuer(namespace: str, name: str = "local") -> dict[str, Any]:
    return {
        "apiVersion": "nhi.dev/v1alpha1",
        "kind": "IdentityIssuer",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"trustDomain": "example.org", "selfSigned": {"ttl": "48h"}},
    }


def identity(namespace: str, credentials: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "owner": "team-a",
        "credentials": credentials,
        "permissions": {
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]
        },
    }
    body.update(spec)
    return {
        "apiVersion": "nhi.dev/v1alpha1",
        "kind": "MachineIdentity",
        "metadata": {"name": "app", "namespace": namespace},
        "spec": body,
    }


def x509_cred(alg: str = "ECDSA-P256", **extra: Any) -> dict[str, Any]:
    return {
        "name": "mtls",
        "type": "X509",
        "ttl": "1h",
        "keyAlgorithm": alg,
        "issuerRef": {"kind": "IdentityIssuer", "name": "local"},
        "dnsNames": ["app.svc"],
        **extra,
    }


def root_of(cluster: Cluster, namespace: str) -> x509.Certificate:
    secret = wait_for(
        lambda: cluster.get("secret", "nhi-issuer-local", namespace),
        message="the issuer's root Secret",
    )
    return load_cert_chain(base64.b64decode(secret["data"]["tls.crt"]))[0]


def leaf_of(cluster: Cluster, namespace: str, name: str = "app.mtls") -> x509.Certificate:
    return load_cert_chain(secret_data(cluster, namespace, name)["tls.crt"])[0]


def can(cluster: Cluster, namespace: str, verb: str, resource: str) -> bool:
    out = cluster.kubectl(
        "auth",
        "can-i",
        verb,
        resource,
        "-n",
        namespace,
        f"--as=system:serviceaccount:{namespace}:app",
        check=False,
    )
    return out.stdout.strip() == "yes"


KEY_TYPES = {
    "ECDSA-P256": (ec.EllipticCurvePublicKey, 256),
    "ECDSA-P384": (ec.EllipticCurvePublicKey, 384),
    "Ed25519": (ed25519.Ed25519PublicKey, None),
    "RSA-2048": (rsa.RSAPublicKey, 2048),
}


@pytest.mark.parametrize("alg", list(KEY_TYPES))
def test_certificate_chains_to_the_root_with_spiffe_id_and_key_type(
    operator: OperatorProcess, namespace: str, alg: str
) -> None:
    cluster = _cluster(operator)
    cluster.apply(issuer(namespace))
    cluster.apply(identity(namespace, [x509_cred(alg)]))
    obj = wait_condition(cluster, namespace, "app", "Ready", "True", timeout=60)
    root = root_of(cluster, namespace)
    secret = cluster.get("secret", "app.mtls", namespace)
    assert secret is not None and secret["type"] == "kubernetes.io/tls"
    data = secret_data(cluster, namespace, "app.mtls")
    assert set(data) == {"tls.crt", "tls.key", "ca.crt"}
    leaf = load_cert_chain(data["tls.crt"])[0]
    verify_chain(leaf, [], root, dt.datetime.now(dt.UTC))
    assert load_cert_chain(data["ca.crt"]) == [root]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    assert uris == [f"spiffe://example.org/ns/{namespace}/sa/app"]
    assert san.get_values_for_type(x509.DNSName) == ["app.svc"]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH in eku
    key_type, size = KEY_TYPES[alg]
    public = leaf.public_key()
    assert isinstance(public, key_type)
    if size is not None:
        assert public.key_size == size  # type: ignore[union-attr]
    status = obj["status"]["credentials"][0]
    assert parse_serial_hex(status["serialNumber"]) == leaf.serial_number
    assert status["issuer"] == "IdentityIssuer/local"
    annotations = secret["metadata"]["annotations"]
    assert annotations["nhi.dev/serial"] == status["serialNumber"]
    assert "BEGIN" not in json.dumps(obj["status"])


def test_broken_issuer_makes_identity_not_ready_and_it_recovers(
    operator: OperatorProcess, namespace: str
) -> None:
    cluster = _cluster(operator)
    ca = {
        "apiVersion": "nhi.dev/v1alpha1",
        "kind": "IdentityIssuer",
        "metadata": {"name": "local", "namespace": namespace},
        "spec": {"trustDomain": "example.org", "ca": {"secretName": "my-ca"}},
    }
    cluster.apply(ca)
    cluster.apply(identity(namespace, [x509_cred()]))
    obj = wait_condition(
        cluster, namespace, "app", "Ready", "False", reason="CASecretNotFound", timeout=30
    )
    ready = condition(obj, "Ready")
    assert ready and "spec.credentials[0].issuerRef" in ready["message"]
    assert condition(obj, "Stalled")["status"] == "False"  # type: ignore[index]

    # Fix the issuer: give it a CA. The identity recovers by itself.
    from nhi.crypto import build_self_signed_ca, cert_pem, generate_key, private_key_pem

    key = generate_key("ECDSA-P256")
    cert = build_self_signed_ca("test-ca", key, dt.datetime.now(dt.UTC), dt.timedelta(days=2))
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": {"name": "my-ca", "namespace": namespace},
            "data": {
                "tls.crt": base64.b64encode(cert_pem(cert)).decode(),
                "tls.key": base64.b64encode(private_key_pem(key)).decode(),
            },
        }
    )
    wait_condition(cluster, namespace, "app", "Ready", "True", timeout=45)
    verify_chain(leaf_of(cluster, namespace), [], cert, dt.datetime.now(dt.UTC))


def test_deleting_the_workload_revokes_everything(
    operator: OperatorProcess, namespace: str
) -> None:
    cluster = _cluster(operator)
    cluster.apply(issuer(namespace))
    cluster.kubectl(
        "create", "deployment", "web", "-n", namespace, "--image=registry.k8s.io/pause:3.10"
    )
    cluster.apply(
        identity(
            namespace,
            [
                x509_cred(),
                {
                    "name": "api",
                    "type": "ServiceAccountToken",
                    "ttl": "1h",
                    "audiences": [AUDIENCE],
                },
                {"name": "key", "type": "StaticSecret", "ttl": "24h"},
            ],
            workloads={"selector": {"matchLabels": {"app": "web"}}},
            revocation={"gracePeriod": "2s"},
        )
    )
    obj = wait_condition(cluster, namespace, "app", "Ready", "True", timeout=60)
    assert obj["status"]["workloads"]["names"] == ["Deployment/web"]
    token = secret_data(cluster, namespace, "app.api")["token"]
    leaf = leaf_of(cluster, namespace)
    root = root_of(cluster, namespace)
    assert review(cluster, token, [AUDIENCE]).get("authenticated") is True
    assert can(cluster, namespace, "get", "configmaps")

    cluster.kubectl("delete", "deployment", "web", "-n", namespace)
    revoked = wait_for(
        lambda: (
            (o := cluster.get("machineidentity", "app", namespace))
            and o["status"].get("phase") == "Revoked"
            and o
        ),
        timeout=20,
        message="the identity to be revoked",
    )
    assert revoked["status"]["revocationReason"] == "WorkloadDeleted"
    assert revoked["status"]["revokedAt"]
    gone = dt.datetime.fromisoformat(revoked["status"]["workloads"]["goneSince"])
    at = dt.datetime.fromisoformat(revoked["status"]["revokedAt"])
    assert (at - gone).total_seconds() >= 2  # the grace period was honoured
    entries = {e["credential"]: e for e in revoked["status"]["revoked"]}
    assert set(entries) == {"mtls", "api", "key"}
    assert parse_serial_hex(entries["mtls"]["serialNumber"]) == leaf.serial_number

    # kube-apiserver caches token authentications for up to 10s.

    wait_for(
        lambda: not review(cluster, token, [AUDIENCE]).get("authenticated"),
        timeout=20,
        message="the revoked token to fail TokenReview",
    )
    assert not can(cluster, namespace, "get", "configmaps")
    for name in ("app.api", "app.key", "app.mtls"):
        assert cluster.get("secret", name, namespace) is None
    assert cluster.get("serviceaccount", "app", namespace) is None
    crl = wait_for(
        lambda: (
            (cm := cluster.get("configmap", "nhi-crl-identityissuer-local", namespace))
            and is_revoked(cm["data"]["ca.crl"].encode(), root, leaf.serial_number)
        ),
        timeout=10,
        message="the serial on the issuer's CRL",
    )
    assert crl
    reasons = [e["reason"] for e in events(cluster, namespace, "app")]
    assert "Revoked" in reasons

    # Reactivation: a matching workload appears again; new credentials, never the old ones.
    cluster.kubectl(
        "create", "deployment", "web", "-n", namespace, "--image=registry.k8s.io/pause:3.10"
    )
    again = wait_condition(cluster, namespace, "app", "Ready", "True", timeout=30)
    assert again["status"]["phase"] == "Active"
    assert again["status"]["reactivatedAt"]
    new_leaf = leaf_of(cluster, namespace)
    assert new_leaf.serial_number != leaf.serial_number
    assert secret_data(cluster, namespace, "app.api")["token"] != token
    assert "Reactivated" in [e["reason"] for e in events(cluster, namespace, "app")]


def test_identity_without_workloads_is_never_revoked_by_the_workload_rule(
    operator: OperatorProcess, namespace: str
) -> None:
    cluster = _cluster(operator)
    cluster.apply(
        identity(
            namespace,
            [{"name": "api", "type": "ServiceAccountToken", "ttl": "1h"}],
            workloads={"selector": {"matchLabels": {"app": "none"}}},
            revocation={"gracePeriod": "0s"},
        )
    )
    obj = wait_condition(cluster, namespace, "app", "Ready", "True")
    assert obj["status"]["workloads"]["count"] == 0
    assert "goneSince" not in obj["status"]["workloads"]


def test_jit_window_expires_and_manual_revoke(operator: OperatorProcess, namespace: str) -> None:
    cluster = _cluster(operator)
    cluster.apply(
        identity(
            namespace,
            [{"name": "api", "type": "ServiceAccountToken", "ttl": "1h"}],
            lifetime={"validFor": "1m"},
        )
    )
    obj = wait_condition(cluster, namespace, "app", "Ready", "True")
    expires = dt.datetime.fromisoformat(obj["status"]["expiresAt"])
    created = dt.datetime.fromisoformat(obj["metadata"]["creationTimestamp"])
    assert expires - created == dt.timedelta(minutes=1)
    token = secret_data(cluster, namespace, "app.api")["token"]
    expired = wait_for(
        lambda: (
            (o := cluster.get("machineidentity", "app", namespace))
            and o["status"].get("phase") == "Expired"
            and o
        ),
        timeout=90,
        message="the JIT window to end",
    )
    assert expired["status"]["revocationReason"] == "Expired"
    # kube-apiserver caches token authentications for up to 10s.
    wait_for(
        lambda: not review(cluster, token).get("authenticated"),
        timeout=20,
        message="the revoked token to fail TokenReview",
    )

    # Manual revoke of a second identity, then reactivation by removing the annotation.
    second = identity(namespace, [{"name": "api", "type": "ServiceAccountToken", "ttl": "1h"}])
    second["metadata"]["name"] = "manual"
    cluster.apply(second)
    wait_condition(cluster, namespace, "manual", "Ready", "True")
    tok = secret_data(cluster, namespace, "manual.api")["token"]
    cluster.kubectl("annotate", "machineidentity", "manual", "-n", namespace, "nhi.dev/revoke=true")
    wait_for(
        lambda: (
            (o := cluster.get("machineidentity", "manual", namespace))
            and o["status"].get("revocationReason") == "Manual"
        ),
        timeout=20,
        message="the manual revocation",
    )
    # kube-apiserver caches token authentications for up to 10s.
    wait_for(
        lambda: not review(cluster, tok).get("authenticated"),
        timeout=20,
        message="the revoked token to fail TokenReview",
    )


def test_revocation_while_the_operator_is_down_happens_when_it_starts(
    operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    cluster = _cluster(operator)
    cluster.kubectl(
        "create", "deployment", "web", "-n", namespace, "--image=registry.k8s.io/pause:3.10"
    )
    cluster.apply(
        identity(
            namespace,
            [{"name": "api", "type": "ServiceAccountToken", "ttl": "1h"}],
            workloads={"selector": {"matchLabels": {"app": "web"}}},
            revocation={"gracePeriod": "0s"},
        )
    )
    wait_condition(cluster, namespace, "app", "Ready", "True")
    token = secret_data(cluster, namespace, "app.api")["token"]
    operator.stop()
    try:
        cluster.kubectl("delete", "deployment", "web", "-n", namespace)
    finally:
        operator.restart(tmp_path / "after.log")
    wait_for(
        lambda: (
            (o := cluster.get("machineidentity", "app", namespace))
            and o["status"].get("phase") == "Revoked"
        ),
        timeout=30,
        message="the revocation after the restart",
    )
    # kube-apiserver caches token authentications for up to 10s.
    wait_for(
        lambda: not review(cluster, token).get("authenticated"),
        timeout=20,
        message="the revoked token to fail TokenReview",
    )


def test_rotation_rolls_matching_workloads_once_and_undeclared_users_are_flagged(
    operator: OperatorProcess, namespace: str
) -> None:
    cluster = _cluster(operator)
    for name in ("web", "stranger"):
        cluster.kubectl(
            "create", "deployment", name, "-n", namespace, "--image=registry.k8s.io/pause:3.10"
        )
    # `stranger` runs as the identity's ServiceAccount without being declared.
    cluster.kubectl(
        "patch",
        "deployment",
        "stranger",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"template":{"spec":{"serviceAccountName":"app"}}}}',
    )
    cluster.apply(
        identity(
            namespace,
            [
                {"name": "api", "type": "ServiceAccountToken", "ttl": "1h"},
                {"name": "key", "type": "StaticSecret", "ttl": "24h"},
            ],
            workloads={"selector": {"matchLabels": {"app": "web"}}, "rolloutOnRotation": True},
        )
    )
    obj = wait_condition(cluster, namespace, "app", "Ready", "True")
    undeclared = wait_for(
        lambda: condition(cluster.get("machineidentity", "app", namespace), "UndeclaredUsers"),
        timeout=10,
        message="the UndeclaredUsers condition",
    )
    assert undeclared["status"] == "True"
    assert "Deployment/stranger" in undeclared["message"]
    assert "UndeclaredWorkload" in [e["reason"] for e in events(cluster, namespace, "app")]
    generation = cluster.get("deployment", "web", namespace)["metadata"]["generation"]  # type: ignore[index]
    assert obj["status"]["workloads"]["names"] == ["Deployment/web"]

    cluster.kubectl(
        "annotate",
        "machineidentity",
        "app",
        "-n",
        namespace,
        "nhi.dev/renew-requested-at=2026-01-01T00:00:00Z",
    )
    wait_for(
        lambda: all(
            c["rotationCount"] == 1
            for c in (cluster.get("machineidentity", "app", namespace) or {})
            .get("status", {})
            .get("credentials", [{"rotationCount": 0}])
        ),
        timeout=20,
        message="both rotations",
    )
    web = wait_for(
        lambda: (
            (d := cluster.get("deployment", "web", namespace))
            and d["metadata"]["generation"] > generation
            and d
        ),
        timeout=10,
        message="the rollout",
    )
    import time

    time.sleep(2)
    web = cluster.get("deployment", "web", namespace)
    assert web is not None
    # Two credentials rotated together: one rollout.
    assert web["metadata"]["generation"] == generation + 1
    assert "nhi.dev/restartedAt" in web["spec"]["template"]["metadata"]["annotations"]
    stranger = cluster.get("deployment", "stranger", namespace)
    assert "nhi.dev/restartedAt" not in (
        stranger["spec"]["template"]["metadata"].get("annotations") or {}
    )  # type: ignore[index]


def test_deleting_the_identity_puts_its_certificates_on_the_crl(
    operator: OperatorProcess, namespace: str
) -> None:
    cluster = _cluster(operator)
    cluster.apply(issuer(namespace))
    cluster.apply(identity(namespace, [x509_cred()]))
    wait_condition(cluster, namespace, "app", "Ready", "True", timeout=60)
    leaf, root = leaf_of(cluster, namespace), root_of(cluster, namespace)
    cluster.kubectl("delete", "machineidentity", "app", "-n", namespace, "--timeout=30s")
    wait_for(
        lambda: (
            (cm := cluster.get("configmap", "nhi-crl-identityissuer-local", namespace))
            and is_revoked(cm["data"]["ca.crl"].encode(), root, leaf.serial_number)
        ),
        timeout=10,
        message="the deleted identity's serial on the CRL",
    )

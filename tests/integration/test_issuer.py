"""Issuers against the real control plane: CA sources, validation, recovery, CRL, deletion."""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from typing import Any

import pytest
from cryptography import x509

from nhi.crypto import (
    PrivateKey,
    build_self_signed_ca,
    cert_pem,
    fingerprint_sha256,
    generate_key,
    is_revoked,
    issue_leaf,
    load_cert_chain,
    load_crl,
    private_key_pem,
    verify_chain,
    verify_crl,
)
from tests.conftest import Cluster, OperatorProcess, wait_for

pytestmark = pytest.mark.integration

OPERATOR_NAMESPACE = "nhi-system"  # the operator's default (NHI_NAMESPACE unset)


@pytest.fixture
def kube(operator: OperatorProcess) -> Cluster:
    """The cluster, with the operator running and its namespace present."""
    from tests import conftest

    assert conftest._CLUSTER is not None
    c = conftest._CLUSTER
    if c.get("namespace", OPERATOR_NAMESPACE) is None:
        c.kubectl("create", "namespace", OPERATOR_NAMESPACE, check=False)
    return c


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def issuer(
    name: str, spec: dict[str, Any], namespace: str | None = None, trust_domain: str = "example.org"
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    return {
        "apiVersion": "nhi.dev/v1alpha1",
        "kind": "IdentityIssuer" if namespace else "ClusterIdentityIssuer",
        "metadata": meta,
        "spec": {"trustDomain": trust_domain, **spec},
    }


def tls_secret(
    name: str,
    namespace: str,
    cert: x509.Certificate,
    key: PrivateKey,
    type_: str = "kubernetes.io/tls",
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": type_,
        "metadata": {"name": name, "namespace": namespace},
        "data": {
            "tls.crt": base64.b64encode(cert_pem(cert)).decode(),
            "tls.key": base64.b64encode(private_key_pem(key)).decode(),
        },
    }


def new_ca(cn: str = "Test Root") -> tuple[x509.Certificate, PrivateKey]:
    key = generate_key("ECDSA-P256")
    now = dt.datetime.now(dt.UTC)
    return build_self_signed_ca(cn, key, now, dt.timedelta(days=30)), key


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return dict(c)
    return None


def wait_ready(
    cluster: Cluster,
    kind: str,
    name: str,
    namespace: str | None,
    status: str,
    reason: str | None = None,
    timeout: float = 30,
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = cluster.get(kind, name, namespace)
        c = condition(obj, "Ready")
        if c and c["status"] == status and (reason is None or c["reason"] == reason):
            if obj and obj["status"].get("observedGeneration") == obj["metadata"]["generation"]:
                return obj
        return None

    return wait_for(
        check, timeout=timeout, message=f"{kind}/{name} Ready={status} {reason or ''}".strip()
    )


def secret_cert(secret: dict[str, Any], key: str = "tls.crt") -> x509.Certificate:
    return load_cert_chain(base64.b64decode(secret["data"][key]))[0]


def check_crl(
    cluster: Cluster, namespace: str, ca_cert: x509.Certificate, name: str
) -> x509.CertificateRevocationList:
    cm = wait_for(lambda: cluster.get("configmap", name, namespace), message=f"CRL in {namespace}")
    pem = cm["data"]["ca.crl"]
    crl = load_crl(pem)
    verify_crl(crl, ca_cert)  # signed by the issuer's CA
    assert not is_revoked(pem, ca_cert, 12345)
    assert len(list(crl)) == 0
    assert crl.next_update_utc is not None
    assert crl.next_update_utc - crl.last_update_utc == dt.timedelta(hours=24)
    assert cm["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "nhi-operator"
    return crl


def test_self_signed_cluster_issuer_becomes_ready_with_its_root(kube: Cluster) -> None:
    name = unique("mesh")
    kube.apply(
        issuer(name, {"selfSigned": {"ttl": "48h"}, "crl": {"configMapName": f"{name}-crl"}})
    )
    try:
        obj = wait_ready(kube, "clusteridentityissuer", name, None, "True", "CAReady")
        status = obj["status"]
        secret = kube.get("secret", f"nhi-issuer-{name}", OPERATOR_NAMESPACE)
        assert secret is not None
        assert secret["type"] == "kubernetes.io/tls"
        labels = secret["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "nhi-operator"
        assert labels["nhi.dev/issuer"] == name
        assert "ownerReferences" not in secret["metadata"]
        root = secret_cert(secret)
        assert status["caFingerprint"] == fingerprint_sha256(root)
        assert status["notAfter"] == root.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
        lifetime = root.not_valid_after_utc - root.not_valid_before_utc
        assert dt.timedelta(hours=48) <= lifetime <= dt.timedelta(hours=48, minutes=2)
        assert root.subject.rfc4514_string() == "CN=example.org"
        assert status["crlNumber"] >= 1
        assert status["revokedCount"] == 0
        assert {c["type"]: c["status"] for c in status["conditions"]} == {
            "Ready": "True",
            "Reconciling": "False",
            "Stalled": "False",
        }
        cm = wait_for(lambda: kube.get("configmap", f"{name}-crl", OPERATOR_NAMESPACE))
        verify_crl(load_crl(cm["data"]["ca.crl"]), root)
        assert not is_revoked(cm["data"]["ca.crl"], root, 12345)
        kube.kubectl(
            "wait", "--for=condition=Ready", "--timeout=10s", f"clusteridentityissuer/{name}"
        )
    finally:
        kube.kubectl("delete", "clusteridentityissuer", name, "--wait=true", check=False)
    # Deleting a cluster issuer removes its root Secret and CRL (finalizer).
    wait_for(
        lambda: kube.get("secret", f"nhi-issuer-{name}", OPERATOR_NAMESPACE) is None,
        message="the root Secret to be deleted",
    )
    assert kube.get("configmap", f"{name}-crl", OPERATOR_NAMESPACE) is None


def test_ca_issuer_from_a_secret_is_ready_and_publishes_a_signed_crl(
    kube: Cluster, namespace: str
) -> None:
    cert, key = new_ca("Team Root")
    kube.apply(tls_secret("team-root", namespace, cert, key))
    kube.apply(issuer("team-ca", {"ca": {"secretName": "team-root"}}, namespace))
    obj = wait_ready(kube, "identityissuer", "team-ca", namespace, "True", "CAReady")
    assert obj["status"]["caFingerprint"] == fingerprint_sha256(cert)
    # The default CRL name is the issuer's own.
    crl = check_crl(kube, namespace, cert, "nhi-crl-identityissuer-team-ca")
    cm = kube.get("configmap", "nhi-crl-identityissuer-team-ca", namespace)
    assert cm is not None
    (owner,) = cm["metadata"]["ownerReferences"]
    assert owner["kind"] == "IdentityIssuer"
    assert owner["uid"] == obj["metadata"]["uid"]
    assert (
        obj["status"]["crlNumber"]
        == crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    )


def test_ca_issuer_recovers_by_itself_when_its_secret_appears(kube: Cluster) -> None:
    name = unique("late")
    secret_name = f"{name}-root"
    kube.apply(
        issuer(name, {"ca": {"secretName": secret_name}, "crl": {"configMapName": f"{name}-crl"}})
    )
    try:
        obj = wait_ready(kube, "clusteridentityissuer", name, None, "False", "CASecretNotFound")
        ready = condition(obj, "Ready")
        assert ready is not None
        assert f"{OPERATOR_NAMESPACE}/{secret_name}" in ready["message"]
        assert condition(obj, "Stalled")["status"] == "True"  # type: ignore[index]
        assert "caFingerprint" not in obj["status"]

        cert, key = new_ca()
        kube.apply(tls_secret(secret_name, OPERATOR_NAMESPACE, cert, key))
        obj = wait_ready(kube, "clusteridentityissuer", name, None, "True", "CAReady", timeout=15)
        assert obj["status"]["caFingerprint"] == fingerprint_sha256(cert)
    finally:
        kube.kubectl("delete", "clusteridentityissuer", name, "--wait=false", check=False)
        kube.kubectl("delete", "secret", secret_name, "-n", OPERATOR_NAMESPACE, check=False)


def test_a_certificate_that_is_not_a_ca_is_refused(kube: Cluster, namespace: str) -> None:
    ca_cert, ca_key = new_ca()
    leaf_key = generate_key("ECDSA-P256")
    leaf = issue_leaf(
        ca_cert=ca_cert,
        ca_key=ca_key,
        public_key=leaf_key.public_key(),
        spiffe_id="spiffe://example.org/ns/a/sa/b",
        dns_names=[],
        now=dt.datetime.now(dt.UTC),
        ttl=dt.timedelta(hours=1),
    )
    kube.apply(tls_secret("not-a-ca", namespace, leaf, leaf_key))
    kube.apply(issuer("bad", {"ca": {"secretName": "not-a-ca"}}, namespace))
    obj = wait_ready(kube, "identityissuer", "bad", namespace, "False", "CASecretInvalid")
    message = condition(obj, "Ready")["message"]  # type: ignore[index]
    assert f"{namespace}/not-a-ca" in message
    assert "basicConstraints CA:TRUE" in message
    assert "PRIVATE KEY" not in json.dumps(obj)

    # Fixing the Secret in place makes the issuer Ready, with no change to the issuer.
    kube.apply(tls_secret("not-a-ca", namespace, ca_cert, ca_key))
    wait_ready(kube, "identityissuer", "bad", namespace, "True", "CAReady", timeout=15)


def test_identity_certificate_chains_to_the_issuer_and_its_bundle_is_published(
    kube: Cluster, namespace: str
) -> None:
    kube.apply(issuer("local", {"selfSigned": {"ttl": "24h"}}, namespace, "cluster.local"))
    obj = wait_ready(kube, "identityissuer", "local", namespace, "True", "CAReady")
    kube.apply(
        {
            "apiVersion": "nhi.dev/v1alpha1",
            "kind": "MachineIdentity",
            "metadata": {"name": "app", "namespace": namespace},
            "spec": {
                "owner": "team-a",
                "credentials": [
                    {
                        "name": "mtls",
                        "type": "X509",
                        "ttl": "1h",
                        "issuerRef": {"kind": "IdentityIssuer", "name": "local"},
                    }
                ],
            },
        }
    )
    secret = wait_for(
        lambda: (s := kube.get("secret", "app.mtls", namespace)) and s.get("data") and s,
        message="the X509 credential Secret",
    )
    root_secret = kube.get("secret", "nhi-issuer-local", namespace)
    assert root_secret is not None
    root = secret_cert(root_secret)
    assert fingerprint_sha256(root) == obj["status"]["caFingerprint"]
    leaf = secret_cert(secret)
    verify_chain(leaf, [], root, dt.datetime.now(dt.UTC))
    assert leaf.not_valid_after_utc <= root.not_valid_after_utc
    bundle = wait_for(
        lambda: kube.get("configmap", "nhi-trust-bundle", namespace),
        message="the trust bundle ConfigMap",
    )
    assert load_cert_chain(bundle["data"]["ca.crt"]) == [root]
    # Shared by the issuers used in the namespace: owned by none of them.
    assert bundle["metadata"]["labels"]["nhi.dev/trust-bundle"] == "true"
    assert "ownerReferences" not in bundle["metadata"]
    assert json.loads(bundle["metadata"]["annotations"]["nhi.dev/trust-bundle-sources"]) == {
        "IdentityIssuer/local": [fingerprint_sha256(root)]
    }

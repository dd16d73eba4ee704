"""Several issuers with default settings side by side, and ConfigMaps the operator did not make.

Against the real control plane and the operator as a subprocess: every issuer has a CRL of
its own, a namespace's trust bundle holds the roots of every issuer its identities use (and
loses them with the issuer), and a ConfigMap that already has a CRL's or a bundle's name is
left exactly as it was, with the conflict reported.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
import uuid
from typing import Any

import pytest
from cryptography import x509

from nhi.crypto import fingerprint_sha256, load_cert_chain, load_crl, verify_chain, verify_crl
from tests.conftest import Cluster, OperatorProcess, wait_for
from tests.integration.test_identity import condition, wait_condition
from tests.integration.test_issuer import OPERATOR_NAMESPACE, issuer, wait_ready

pytestmark = pytest.mark.integration

BUNDLE = "nhi-trust-bundle"


@pytest.fixture
def kube(operator: OperatorProcess) -> Cluster:
    """The cluster, with the operator running (and its namespace, made by the crds fixture)."""
    assert operator.cluster is not None
    return operator.cluster


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def identity(namespace: str, name: str, kind: str, issuer_name: str) -> dict[str, Any]:
    return {
        "apiVersion": "nhi.dev/v1alpha1",
        "kind": "MachineIdentity",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "owner": "team-a",
            "credentials": [
                {
                    "name": "mtls",
                    "type": "X509",
                    "ttl": "1h",
                    "issuerRef": {"kind": kind, "name": issuer_name},
                }
            ],
        },
    }


def bundle_fingerprints(cluster: Cluster, namespace: str) -> set[str] | None:
    cm = cluster.get("configmap", BUNDLE, namespace)
    if cm is None:
        return None
    return {fingerprint_sha256(c) for c in load_cert_chain(cm["data"]["ca.crt"].encode())}


def leaf(cluster: Cluster, namespace: str, secret: str) -> x509.Certificate:
    obj = cluster.get("secret", secret, namespace)
    assert obj is not None and obj.get("data"), secret
    return load_cert_chain(base64.b64decode(obj["data"]["tls.crt"]))[0]


def test_issuers_with_default_settings_coexist(kube: Cluster, namespace: str) -> None:
    mesh, edge = unique("mesh"), unique("edge")
    spec = {"selfSigned": {"ttl": "48h"}}  # nothing about the CRL or the trust bundle
    issuers = [
        ("ClusterIdentityIssuer", mesh, None),
        ("ClusterIdentityIssuer", edge, None),
        ("IdentityIssuer", "local", namespace),
    ]
    try:
        for _, name, ns in issuers:
            kube.apply(issuer(name, spec, ns))
        status: dict[str, dict[str, Any]] = {}
        for kind, name, ns in issuers:
            obj = wait_ready(kube, kind.lower(), name, ns, "True", "CAReady", timeout=60)
            status[name] = obj["status"]
            assert obj["spec"].get("crl", {}).get("configMapName") is None  # no default stored
        # Each issuer has its own CRL, signed by its own CA.
        roots: dict[str, x509.Certificate] = {}
        for kind, name, ns in issuers:
            home = ns or OPERATOR_NAMESPACE
            secret = kube.get("secret", f"nhi-issuer-{name}", home)
            assert secret is not None
            roots[name] = load_cert_chain(base64.b64decode(secret["data"]["tls.crt"]))[0]
            assert fingerprint_sha256(roots[name]) == status[name]["caFingerprint"]
            crl_name = f"nhi-crl-{kind.lower()}-{name}"
            cm = wait_for(lambda h=home, c=crl_name: kube.get("configmap", c, h), message=crl_name)
            verify_crl(load_crl(cm["data"]["ca.crl"]), roots[name])
            assert "nhi.dev/provenance" in cm["metadata"]["annotations"]

        # One identity per issuer, all in the same namespace: all get their certificate.
        for kind, name, _ in issuers:
            kube.apply(identity(namespace, f"app-{name}", kind, name))
        now = dt.datetime.now(dt.UTC)
        for _, name, _ in issuers:
            wait_condition(kube, namespace, f"app-{name}", "Ready", "True", timeout=60)
            verify_chain(leaf(kube, namespace, f"app-{name}.mtls"), [], roots[name], now)

        # The namespace's one trust bundle holds every root.
        every = {s["caFingerprint"] for s in status.values()}
        wait_for(
            lambda: bundle_fingerprints(kube, namespace) == every,
            timeout=20,
            message="every issuer's root in the trust bundle",
        )
        cm = kube.get("configmap", BUNDLE, namespace)
        assert cm is not None
        sources = json.loads(cm["metadata"]["annotations"]["nhi.dev/trust-bundle-sources"])
        assert sources == {
            f"ClusterIdentityIssuer/{mesh}": [status[mesh]["caFingerprint"]],
            f"ClusterIdentityIssuer/{edge}": [status[edge]["caFingerprint"]],
            "IdentityIssuer/local": [status["local"]["caFingerprint"]],
        }
        # Written once it holds them all: no back and forth between the issuers.
        version = cm["metadata"]["resourceVersion"]
        time.sleep(3)
        after = kube.get("configmap", BUNDLE, namespace)
        assert after is not None and after["metadata"]["resourceVersion"] == version

        # A deleted issuer's root leaves the bundle, even if an identity still names it.
        kube.kubectl("delete", "clusteridentityissuer", edge, "--wait=true", "--timeout=30s")
        left = every - {status[edge]["caFingerprint"]}
        wait_for(
            lambda: bundle_fingerprints(kube, namespace) == left,
            timeout=20,
            message="the deleted issuer's root to leave the trust bundle",
        )
        assert (
            kube.get("configmap", f"nhi-crl-clusteridentityissuer-{edge}", OPERATOR_NAMESPACE)
            is None
        )
        # So does the root of an issuer no identity of the namespace uses any more.
        kube.kubectl("delete", "machineidentity", "app-local", "-n", namespace, "--timeout=30s")
        wait_for(
            lambda: bundle_fingerprints(kube, namespace) == {status[mesh]["caFingerprint"]},
            timeout=20,
            message="the unused issuer's root to leave the trust bundle",
        )
    finally:
        for kind, name, ns in issuers:
            if ns is None:
                kube.kubectl("delete", kind.lower(), name, "--wait=false", check=False)


def snapshot(cm: dict[str, Any] | None) -> dict[str, Any]:
    assert cm is not None
    meta = cm["metadata"]
    return {
        "data": cm.get("data"),
        "labels": meta.get("labels"),
        "annotations": meta.get("annotations"),
        "ownerReferences": meta.get("ownerReferences"),
        "uid": meta["uid"],
        "resourceVersion": meta["resourceVersion"],
    }


def test_foreign_configmaps_with_a_crl_or_bundle_name_are_left_as_they_are(
    kube: Cluster, namespace: str
) -> None:
    name = unique("mesh")
    crl_name = f"nhi-crl-clusteridentityissuer-{name}"
    other_ns = unique("t-src")
    kube.kubectl("create", "namespace", other_ns)
    try:
        # A real trust bundle elsewhere, to copy the operator's provenance tag from.
        kube.apply(issuer("src", {"selfSigned": {"ttl": "48h"}}, other_ns))
        kube.apply(identity(other_ns, "app", "IdentityIssuer", "src"))
        real = wait_for(lambda: kube.get("configmap", BUNDLE, other_ns), timeout=60)

        # ConfigMaps made by someone else, dressed up as the operator's.
        kube.apply(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "owner", "namespace": namespace},
            }
        )
        owner = kube.get("configmap", "owner", namespace)
        assert owner is not None
        fake_labels = {
            "app.kubernetes.io/managed-by": "nhi-operator",
            "nhi.dev/issuer": name,
            "nhi.dev/issuer-kind": "ClusterIdentityIssuer",
            "nhi.dev/trust-bundle": "true",
        }
        owner_ref = [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "name": "owner",
                "uid": owner["metadata"]["uid"],
            }
        ]
        kube.apply(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": crl_name,
                    "namespace": OPERATOR_NAMESPACE,
                    "labels": fake_labels,
                },
                "data": {"ca.crl": "not a CRL", "note": "mine"},
            }
        )
        kube.apply(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": BUNDLE,
                    "namespace": namespace,
                    "labels": fake_labels,
                    "annotations": dict(real["metadata"]["annotations"]),  # a copied tag
                    "ownerReferences": owner_ref,
                },
                "data": {"ca.crt": "my own bundle"},
            }
        )
        before_crl = snapshot(kube.get("configmap", crl_name, OPERATOR_NAMESPACE))
        before_bundle = snapshot(kube.get("configmap", BUNDLE, namespace))

        # A ClusterIdentityIssuer with default settings: its CRL name is taken.
        kube.apply(issuer(name, {"selfSigned": {"ttl": "48h"}}))
        obj = wait_ready(kube, "clusteridentityissuer", name, None, "False", "CRLConflict")
        message = condition(obj, "Ready")["message"]  # type: ignore[index]
        assert f"ConfigMap {OPERATOR_NAMESPACE}/{crl_name}" in message
        assert "spec.crl.configMapName" in message
        # An identity in the namespace: the trust bundle's name is taken.
        kube.apply(issuer("local", {"selfSigned": {"ttl": "48h"}}, namespace))
        kube.apply(identity(namespace, "app", "IdentityIssuer", "local"))
        obj = wait_condition(kube, namespace, "app", "Ready", "False", "TrustBundleConflict")
        message = condition(obj, "Ready")["message"]  # type: ignore[index]
        assert f"ConfigMap {namespace}/{BUNDLE}" in message

        # Deleting the issuer (its finalizer removes what the operator made) leaves it too.
        kube.kubectl("delete", "clusteridentityissuer", name, "--wait=true", "--timeout=30s")
        time.sleep(2)
        assert snapshot(kube.get("configmap", crl_name, OPERATOR_NAMESPACE)) == before_crl
        assert snapshot(kube.get("configmap", BUNDLE, namespace)) == before_bundle
    finally:
        kube.kubectl("delete", "clusteridentityissuer", name, "--wait=false", check=False)
        kube.kubectl("delete", "configmap", crl_name, "-n", OPERATOR_NAMESPACE, check=False)
        kube.kubectl("delete", "namespace", other_ns, "--wait=false", check=False)

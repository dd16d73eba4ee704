"""The objects the scenarios apply: MachineIdentities, the bench's issuer, workloads."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nhi import API_VERSION

ISSUER = "bench-ca"
TRUST_BUNDLE = "nhi-trust-bundle"
OPERATOR_NAMESPACE = "nhi-system"


def cluster_issuer(name: str = ISSUER) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "ClusterIdentityIssuer",
        "metadata": {"name": name},
        "spec": {
            "trustDomain": "bench.example.org",
            "selfSigned": {"keyAlgorithm": "ECDSA-P256", "ttl": "8760h", "commonName": "bench CA"},
            "trustBundle": {"configMapName": TRUST_BUNDLE},
        },
    }


def token_credential(name: str) -> dict[str, Any]:
    return {
        "name": "token",
        "type": "ServiceAccountToken",
        "audiences": ["bench.example.org"],
        "ttl": "1h",
        "secretName": f"{name}-token",
    }


def x509_credential(name: str, ttl: str = "24h") -> dict[str, Any]:
    return {
        "name": "mtls",
        "type": "X509",
        "issuerRef": {"kind": "ClusterIdentityIssuer", "name": ISSUER},
        "ttl": ttl,
        "keyAlgorithm": "ECDSA-P256",
        "secretName": f"{name}-tls",
    }


RULE = {
    "apiGroups": [""],
    "resources": ["configmaps"],
    "resourceNames": ["app-config"],
    "verbs": ["get"],
}


def identity(
    namespace: str,
    name: str,
    *,
    token: bool = True,
    x509: bool = True,
    x509_ttl: str = "24h",
    rotation: Mapping[str, Any] | None = None,
    selector: Mapping[str, str] | None = None,
    revocation: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A MachineIdentity: a ServiceAccount, one rule, a token and (optionally) an X509."""
    creds = []
    if token:
        creds.append(token_credential(name))
    if x509:
        creds.append(x509_credential(name, x509_ttl))
    spec: dict[str, Any] = {
        "owner": "team-bench",
        "purpose": "benchmark",
        "serviceAccount": {"name": name},
        "permissions": {"rules": [RULE]},
        "credentials": creds,
    }
    if rotation:
        spec["rotation"] = dict(rotation)
    if selector:
        spec["workloads"] = {"selector": {"matchLabels": dict(selector)}}
    if revocation:
        spec["revocation"] = dict(revocation)
    return {
        "apiVersion": API_VERSION,
        "kind": "MachineIdentity",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def deployment(namespace: str, name: str, labels: Mapping[str, str], sa: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": dict(labels)},
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "serviceAccountName": sa,
                    "automountServiceAccountToken": False,
                    "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}],
                },
            },
        },
    }


def is_ready(obj: Mapping[str, Any]) -> bool:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return bool(c.get("status") == "True")
    return False

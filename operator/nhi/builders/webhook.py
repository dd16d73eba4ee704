"""The admission webhook's ValidatingWebhookConfiguration, built from settings.

``failurePolicy: Ignore`` and a 5 s timeout, so an operator outage cannot block writes (the
reconciler checks the same policies before applying anything); ``kube-system`` and the
operator's own namespace are excluded, so the operator can always be repaired.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

from nhi.crypto.serving import ServingMaterial

WEBHOOK_NAME = "machineidentities.policy.nhi.dev"
GRANT_WEBHOOK_NAME = "accessgrants.policy.nhi.dev"
TIMEOUT_SECONDS = 5
LABELS = {
    "app.kubernetes.io/name": "nhi-operator",
    "app.kubernetes.io/part-of": "nhi-operator",
    "app.kubernetes.io/component": "admission-webhook",
}
#: Namespaces the webhook never covers, besides the operator's own.
EXCLUDED_NAMESPACES = ("kube-system",)


def namespace_selector(namespaces: Sequence[str], operator_namespace: str) -> dict[str, Any]:
    """Exclude kube-system and the operator's namespace; with an explicit namespace list (no
    globs), cover only those namespaces."""
    excluded = sorted({*EXCLUDED_NAMESPACES, operator_namespace} - {""})
    exprs: list[dict[str, Any]] = [
        {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": excluded}
    ]
    plain = [n for n in namespaces if not any(c in n for c in "*?[")]
    if namespaces and len(plain) == len(namespaces):
        exprs.append(
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": sorted(plain)}
        )
    return {"matchExpressions": exprs}


def build_configuration(
    name: str,
    client_config: Mapping[str, Any],
    namespaces: Sequence[str],
    operator_namespace: str,
    grants_client_config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ValidatingWebhookConfiguration for MachineIdentity CREATE and UPDATE (and, with
    ``grants_client_config``, AccessGrant CREATE and UPDATE)."""
    webhooks = [
        _webhook(WEBHOOK_NAME, "machineidentities", client_config, namespaces, operator_namespace)
    ]
    if grants_client_config is not None:
        webhooks.append(
            _webhook(
                GRANT_WEBHOOK_NAME,
                "accessgrants",
                grants_client_config,
                namespaces,
                operator_namespace,
            )
        )
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name, "labels": dict(LABELS)},
        "webhooks": webhooks,
    }


def _webhook(
    name: str,
    resource: str,
    client_config: Mapping[str, Any],
    namespaces: Sequence[str],
    operator_namespace: str,
) -> dict[str, Any]:
    return {
        "name": name,
        "admissionReviewVersions": ["v1"],
        "clientConfig": dict(client_config),
        "rules": [
            {
                "apiGroups": ["nhi.dev"],
                "apiVersions": ["v1alpha1"],
                "resources": [resource],
                "operations": ["CREATE", "UPDATE"],
                "scope": "Namespaced",
            }
        ],
        # An outage of the operator must not block writes: the reconciler applies
        # the same checks before granting anything.
        "failurePolicy": "Ignore",
        "matchPolicy": "Equivalent",
        "sideEffects": "None",
        "timeoutSeconds": TIMEOUT_SECONDS,
        "namespaceSelector": namespace_selector(namespaces, operator_namespace),
    }


def client_config(
    material: ServingMaterial,
    now: dt.datetime,
    path: str,
    *,
    host: str = "",
    port: int = 0,
    service: str = "",
    service_namespace: str = "",
    service_port: int = 443,
) -> dict[str, Any]:
    """How the API server reaches the webhook: a Service when named, else a URL."""
    bundle = base64.b64encode(material.ca_bundle(now)).decode("ascii")
    path = "/" + path.lstrip("/")
    if service:
        return {
            "service": {
                "namespace": service_namespace,
                "name": service,
                "port": service_port,
                "path": path,
            },
            "caBundle": bundle,
        }
    try:
        netloc = f"[{ipaddress.IPv6Address(host)}]"
    except ValueError:
        netloc = host
    return {"url": f"https://{netloc}:{port}{path}", "caBundle": bundle}

"""The usage's persisted form, in the operator's namespace: one ConfigMap per ServiceAccount
(named by a hash of ``namespace/name``, labelled with both: the key the inventory joins on),
and the state ConfigMap (since when usage is observed, where the audit log's tail stopped,
the tokens minted by a person).

Written and read back by :class:`nhi.reconcilers.usage.UsageStore`; read by ``nhi rightsize``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from nhi.models.meta import MANAGED_BY, MANAGED_BY_KEY
from nhi.models.usage import AuditError, UsageBook, book_from_json, book_to_json

USAGE_LABEL = "nhi.dev/usage"
SA_NAMESPACE_ANNOTATION = "nhi.dev/serviceaccount-namespace"
SA_NAME_ANNOTATION = "nhi.dev/serviceaccount-name"
STATE_CONFIGMAP = "nhi-usage-state"
LOG_CHECKPOINT = "logCheckpoint"
#: The tokens minted by a person, kept in the state ConfigMap (the most recent ones).
PERSON_MINTS = "personMints"
DATA_KEY = "usage.json"


def configmap_name(namespace: str, service_account: str) -> str:
    digest = hashlib.sha256(f"{namespace}/{service_account}".encode()).hexdigest()[:20]
    return f"nhi-usage-{digest}"


def build_configmap(book: UsageBook, operator_namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": configmap_name(book.namespace, book.service_account),
            "namespace": operator_namespace,
            "labels": {MANAGED_BY_KEY: MANAGED_BY, USAGE_LABEL: "serviceaccount"},
            "annotations": {
                SA_NAMESPACE_ANNOTATION: book.namespace,
                SA_NAME_ANNOTATION: book.service_account,
            },
        },
        "data": {DATA_KEY: json.dumps(book_to_json(book), separators=(",", ":"))},
    }


def book_of(configmap: Mapping[str, Any]) -> UsageBook | None:
    """The book a usage ConfigMap holds; None if it is not one (or not one we can read)."""
    labels = (configmap.get("metadata") or {}).get("labels") or {}
    if labels.get(USAGE_LABEL) != "serviceaccount" or labels.get(MANAGED_BY_KEY) != MANAGED_BY:
        return None
    try:
        return book_from_json(json.loads((configmap.get("data") or {}).get(DATA_KEY) or "null"))
    except (AuditError, ValueError):
        return None


def build_state_configmap(operator_namespace: str, since: str) -> dict[str, Any]:
    """The state ConfigMap as first written: since when usage is observed (RFC 3339)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": STATE_CONFIGMAP,
            "namespace": operator_namespace,
            "labels": {MANAGED_BY_KEY: MANAGED_BY, USAGE_LABEL: "state"},
        },
        "data": {"since": since},
    }

"""Pure builders for credential Secrets: metadata, type and (base64) data."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from nhi.builders.rbac import labels, owner_reference
from nhi.models.identity import Credential, MachineIdentity
from nhi.models.meta import CREDENTIAL_LABEL

SECRET_TYPES = {
    "ServiceAccountToken": "Opaque",
    "X509": "kubernetes.io/tls",
    "StaticSecret": "Opaque",
}


def credential_labels(identity: MachineIdentity, cred: Credential) -> dict[str, str]:
    out = labels(identity)
    out[CREDENTIAL_LABEL] = cred.name
    return out


def build_credential_secret(
    identity: MachineIdentity,
    cred: Credential,
    data: Mapping[str, bytes] | None,
    annotations: Mapping[str, str],
) -> dict[str, Any]:
    """The credential Secret. ``data=None`` builds it without data (a token's anchor)."""
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": cred.secret_name,
            "namespace": identity.namespace,
            "labels": credential_labels(identity, cred),
            "annotations": {"nhi.dev/credential-type": cred.type, **annotations},
            "ownerReferences": [owner_reference(identity)],
        },
        "type": SECRET_TYPES[cred.type],
    }
    if data is not None:
        obj["data"] = {k: base64.b64encode(v).decode() for k, v in data.items()}
    return obj


def token_request(cred: Credential, secret_name: str, secret_uid: str) -> dict[str, Any]:
    """A TokenRequest bound to the Secret that will hold the token."""
    spec: dict[str, Any] = {
        "expirationSeconds": int(cred.ttl.total_seconds()),
        "boundObjectRef": {
            "apiVersion": "v1",
            "kind": "Secret",
            "name": secret_name,
            "uid": secret_uid,
        },
    }
    if cred.audiences:
        spec["audiences"] = list(cred.audiences)
    return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}

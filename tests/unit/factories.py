"""Object factories for unit tests: a valid default for everything, overrides for the point.

``make_identity(permissions={...})`` reads as "the default identity, with these permissions";
a test names only what it is about. Spec overrides are camelCase, as in the CRD; ``OMIT``
removes a default field.
"""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

from nhi.builders.rbac import ChildKey, child_key, desired_access
from nhi.builders.secrets import build_credential_secret
from nhi.models.identity import MachineIdentity
from nhi.models.issued import Issued
from nhi.models.policy import IdentityPolicy

NAME = "payments-api"
NAMESPACE = "team-a"
UID = "0b9f6c1e-6a5f-4d0e-9a43-3c1b2f0f9d11"
OWNER = "team-payments"
T0 = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)


class _Omit:
    def __repr__(self) -> str:
        return "OMIT"


#: Remove a default field instead of overriding it.
OMIT: Any = _Omit()


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if value is OMIT:
            out.pop(key, None)
        else:
            out[key] = copy.deepcopy(value)
    return out


def rule(
    resources: tuple[str, ...] = ("configmaps",),
    verbs: tuple[str, ...] = ("get", "list"),
    api_groups: tuple[str, ...] = ("",),
    **fields: Any,
) -> dict[str, Any]:
    """A raw RBAC rule as written in ``spec.permissions``."""
    base = {"apiGroups": list(api_groups), "resources": list(resources), "verbs": list(verbs)}
    return _merge(base, fields)


def credential(
    name: str = "api-token", type: str = "ServiceAccountToken", **fields: Any
) -> dict[str, Any]:
    """A raw credential; X509 gets an issuerRef unless ``issuerRef=OMIT``."""
    base: dict[str, Any] = {"name": name, "type": type}
    if type == "X509":
        base["issuerRef"] = {"name": "mesh-ca"}
    return _merge(base, fields)


def make_spec(**overrides: Any) -> dict[str, Any]:
    """A raw, minimal valid ``spec``: only an owner."""
    return _merge({"owner": OWNER}, overrides)


def make_body(
    *,
    name: str = NAME,
    namespace: str = NAMESPACE,
    uid: str = UID,
    generation: int = 1,
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    status: dict[str, Any] | None = None,
    **spec_overrides: Any,
) -> dict[str, Any]:
    """A MachineIdentity body as kopf hands it to a handler."""
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "uid": uid,
        "generation": generation,
    }
    if annotations is not None:
        meta["annotations"] = dict(annotations)
    if labels is not None:
        meta["labels"] = dict(labels)
    body: dict[str, Any] = {
        "apiVersion": "nhi.dev/v1alpha1",
        "kind": "MachineIdentity",
        "metadata": meta,
        "spec": make_spec(**spec_overrides),
    }
    if status is not None:
        body["status"] = copy.deepcopy(status)
    return body


def make_identity(**overrides: Any) -> MachineIdentity:
    """The typed model of ``make_body(**overrides)``."""
    return MachineIdentity.from_body(make_body(**overrides))


def make_policy(name: str = "allow-cluster", **spec: Any) -> IdentityPolicy:
    """An IdentityPolicy; the default spec has no namespaceSelector (every namespace)."""
    return IdentityPolicy.from_body({"metadata": {"name": name}, "spec": spec})


def server_copy(
    obj: dict[str, Any], *, uid: str = "child-uid", resource_version: str = "100"
) -> dict[str, Any]:
    """``obj`` as the API server returns it: with the fields the server adds."""
    out = copy.deepcopy(obj)
    meta = out["metadata"]
    meta.update(
        uid=uid,
        resourceVersion=resource_version,
        creationTimestamp="2030-01-01T12:00:00Z",
        managedFields=[{"manager": "nhi-operator", "operation": "Apply"}],
    )
    meta.setdefault("annotations", {})["kubectl.kubernetes.io/last-applied-configuration"] = "{}"
    meta["labels"] = {**meta.get("labels", {}), "team": "payments"}
    if out["kind"] == "ServiceAccount":
        out["secrets"] = [{"name": "legacy-token"}]
    return out


def in_sync_children(identity: MachineIdentity) -> dict[ChildKey, dict[str, Any]]:
    """What the watch caches hold for an identity whose children are all in place."""
    objs = desired_access(identity)
    objs += [build_credential_secret(identity, c, None, {}) for c in identity.spec.credentials]
    return {child_key(o): server_copy(o) for o in objs}


def make_issued(**overrides: Any) -> Issued:
    """A value issued at T0, valid for 1h, renewal due at T0+40m."""
    base: dict[str, Any] = {
        "not_before": T0,
        "not_after": T0 + dt.timedelta(hours=1),
        "renewal_time": T0 + dt.timedelta(minutes=40),
        "issued_at": T0,
        "rotation_count": 0,
        "spec_hash": "hash-1",
    }
    base.update(overrides)
    return Issued(**base)

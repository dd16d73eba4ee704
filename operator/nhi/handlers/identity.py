"""kopf handlers for MachineIdentity and its children: turn events into queued work."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from nhi.handlers import runtime
from nhi.k8s.cache import slim
from nhi.models.meta import (
    CREDENTIAL_LABEL,
    IDENTITY_LABEL,
    IDENTITY_NAMESPACE_LABEL,
    MANAGED_BY,
    MANAGED_BY_KEY,
)

log = logging.getLogger("nhi.handlers.identity")

GROUP, VERSION = "nhi.dev", "v1alpha1"
MANAGED: dict[str, Any] = {
    MANAGED_BY_KEY: MANAGED_BY,
    IDENTITY_LABEL: kopf.PRESENT,
}


# Fields of a child the reconciler compares; the rest of the body is not kept in memory.
def _owner(labels: kopf.Labels, namespace: str | None) -> tuple[str, str]:
    return (labels.get(IDENTITY_NAMESPACE_LABEL) or namespace or "", labels[IDENTITY_LABEL])


def _register_child(
    kind: str,
    group: str,
    version: str,
    plural: str,
    index_id: str,
    selector: dict[str, Any] | None = None,
) -> None:
    selector = selector or MANAGED

    def index(
        body: kopf.Body, labels: kopf.Labels, namespace: str | None, **_: Any
    ) -> dict[tuple[str, str], dict[str, Any]]:
        return {_owner(labels, namespace): slim(kind, body)}

    async def on_event(
        labels: kopf.Labels,
        namespace: str | None,
        body: kopf.Body,
        type: str | None,
        **kwargs: Any,
    ) -> None:
        rt = runtime.get()
        rt.capture(kwargs)
        if len(rt.overlay):
            rt.overlay.seen(kind, body, deleted=type == "DELETED")
        rt.queue.add(_owner(labels, namespace))

    kopf.index(group, version, plural, labels=selector, id=index_id)(index)
    kopf.on.event(group, version, plural, labels=selector, id=f"{index_id}_event")(on_event)


_register_child("ServiceAccount", "", "v1", "serviceaccounts", "nhi_sa")
_register_child("Role", "rbac.authorization.k8s.io", "v1", "roles", "nhi_roles")
_register_child(
    "RoleBinding", "rbac.authorization.k8s.io", "v1", "rolebindings", "nhi_rolebindings"
)
_register_child(
    "ClusterRole", "rbac.authorization.k8s.io", "v1", "clusterroles", "nhi_clusterroles"
)
_register_child(
    "ClusterRoleBinding",
    "rbac.authorization.k8s.io",
    "v1",
    "clusterrolebindings",
    "nhi_clusterrolebindings",
)
# Credential Secrets: only their metadata is kept in memory (nhi.k8s.cache.slim).
_register_child(
    "Secret",
    "",
    "v1",
    "secrets",
    "nhi_secrets",
    selector={**MANAGED, CREDENTIAL_LABEL: kopf.PRESENT},
)


@kopf.index(GROUP, VERSION, "machineidentities", id=runtime.IDENTITY_INDEX)
def nhi_identities(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    return {(namespace or "", name): dict(body)}


@kopf.index(GROUP, VERSION, "identitypolicies", id=runtime.POLICY_INDEX)
def nhi_policies(body: kopf.Body, **_: Any) -> dict[None, dict[str, Any]]:
    return {None: dict(body)}


@kopf.index("", "v1", "serviceaccounts", id=runtime.ALL_SERVICE_ACCOUNTS_INDEX)
def nhi_all_service_accounts(
    namespace: str | None, name: str, labels: kopf.Labels, **_: Any
) -> dict[tuple[str, str], dict[str, str]]:
    """Every ServiceAccount's labels: is a name taken by one the operator does not manage?"""
    return {(namespace or "", name): dict(labels)}


@kopf.index("", "v1", "namespaces", id=runtime.NAMESPACE_INDEX)
def nhi_namespaces(name: str, labels: kopf.Labels, **_: Any) -> dict[str, dict[str, str]]:
    return {name: dict(labels)}


@kopf.on.event(GROUP, VERSION, "machineidentities", id="nhi_identity_event")
async def identity_event(
    event: kopf.RawEvent, namespace: str | None, name: str, **kwargs: Any
) -> None:
    rt = runtime.get()
    rt.capture(kwargs)
    key = (namespace or "", name)
    if event.get("type") == "DELETED":
        rt.queue.forget(key)
        rt.locks.pop(key, None)
        rt.identity_overlay.pop(key, None)
        rt.identity_seen(key, deleted=True)
        return
    rt.identity_seen(key)
    rt.queue.add(key)


@kopf.on.event(GROUP, VERSION, "identitypolicies", id="nhi_policy_event")
async def policy_event(**kwargs: Any) -> None:
    """A policy changed: every identity may be affected, so re-check them all."""
    rt = runtime.get()
    rt.capture(kwargs)
    idx = rt.indexes.get(runtime.IDENTITY_INDEX)
    for key in list(idx or ()):
        rt.queue.add(key)


@kopf.on.delete(GROUP, VERSION, "machineidentities", id="nhi_identity_cleanup")
async def identity_deleted(
    body: kopf.Body, namespace: str | None, name: str, logger: kopf.Logger, **kwargs: Any
) -> None:
    rt = runtime.get()
    rt.capture(kwargs)
    async with rt.lock((namespace or "", name)):
        removed = await rt.identities.cleanup(body)
    log.info(
        "removed the identity's objects",
        extra={"namespace": namespace, "identity": name, "removed": removed},
    )

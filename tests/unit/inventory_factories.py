"""Object factories for the inventory's tests: API bodies, parsed by the models' edge
functions, so the tests go through the same parsing the controller does."""

from __future__ import annotations

import datetime as dt
from typing import Any

from nhi.models.inventory import (
    ManagedIdentity,
    Meta,
    ObjectRef,
    ServiceAccountInfo,
    TlsSecretInfo,
    TokenSecretInfo,
    WorkloadInfo,
    managed_identity_from_body,
    service_account_from_body,
    token_secret_from_body,
    workload_from_body,
)
from nhi.models.inventory_rbac import BindingInfo, RoleInfo, binding_from_body, role_from_body
from nhi.policies.inventory import Observed

T0 = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)


def stamp(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def meta(ns: str, name: str, created: dt.datetime = T0 - 400 * DAY, **extra: Any) -> dict[str, Any]:
    return {
        "namespace": ns,
        "name": name,
        "uid": f"uid-{ns}-{name}",
        "creationTimestamp": stamp(created),
        **extra,
    }


def sa(ns: str, name: str, **kw: Any) -> ServiceAccountInfo:
    automount = kw.pop("automount", None)
    body: dict[str, Any] = {"metadata": meta(ns, name, **kw)}
    if automount is not None:
        body["automountServiceAccountToken"] = automount
    return service_account_from_body(body)


def deployment(ns: str, name: str, sa_name: str | None = None, **kw: Any) -> WorkloadInfo:
    automount = kw.pop("automount", None)
    pod: dict[str, Any] = {}
    if sa_name is not None:
        pod["serviceAccountName"] = sa_name
    if automount is not None:
        pod["automountServiceAccountToken"] = automount
    body = {"metadata": meta(ns, name, **kw), "spec": {"template": {"spec": pod}}}
    w = workload_from_body("Deployment", body)
    assert w is not None
    return w


def role(kind: str, ns: str, name: str, *rules: dict[str, Any]) -> RoleInfo:
    return role_from_body(kind, {"metadata": {"namespace": ns, "name": name}, "rules": list(rules)})


def rule(verbs: list[str], resources: list[str], groups: list[str] | None = None) -> dict[str, Any]:
    return {"verbs": verbs, "resources": resources, "apiGroups": groups or [""]}


def binding(
    kind: str,
    ns: str,
    name: str,
    role_kind: str,
    role_name: str,
    *subjects: tuple[str, str, str],
    **kw: Any,
) -> BindingInfo:
    body = {
        "metadata": meta(ns, name, **kw),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role_name},
        "subjects": [
            {"kind": k, "name": n, **({"namespace": s} if s else {})} for k, s, n in subjects
        ],
    }
    b = binding_from_body(kind, body)
    assert b is not None
    return b


def token(
    ns: str,
    name: str,
    sa_name: str,
    *,
    last_used: str | None = None,
    created: dt.datetime = T0 - 400 * DAY,
    uid: str | None = None,
) -> TokenSecretInfo:
    labels = {"kubernetes.io/legacy-token-last-used": last_used} if last_used else {}
    annotations = {
        "kubernetes.io/service-account.name": sa_name,
        "kubernetes.io/service-account.uid": uid or f"uid-{ns}-{sa_name}",
    }
    return token_secret_from_body(
        {
            "metadata": meta(ns, name, created, labels=labels, annotations=annotations),
            "type": "kubernetes.io/service-account-token",
        }
    )


def identity(
    ns: str, name: str, owner: str = "team-a", sa_name: str = "", usage: Any = None
) -> ManagedIdentity:
    spec: dict[str, Any] = {"owner": owner}
    if sa_name:
        spec["serviceAccount"] = {"name": sa_name}
    body = {"metadata": {"namespace": ns, "name": name}, "spec": spec}
    return managed_identity_from_body(body | ({"status": {"usage": usage}} if usage else {}))


def usage_status(used: int, unused: list[str], after: int = 30 * 86400) -> dict[str, Any]:
    """``status.usage`` as the usage store writes it: ``used`` rules used, ``unused`` not."""
    rules = [{"path": f"rules[{i}]", "count": 1} for i in range(used)]
    rules += [{"path": p, "count": 0} for p in unused]
    return {"rules": rules, "unusedRules": unused, "unusedAfterSeconds": after}


def namespace(name: str, **labels: str) -> Meta:
    return Meta(namespace="", name=name, labels=labels)


def observed(
    sas: list[ServiceAccountInfo] = [],  # noqa: B006 - never mutated
    workloads: list[WorkloadInfo] = [],  # noqa: B006
    roles: list[RoleInfo] = [],  # noqa: B006
    bindings: list[BindingInfo] = [],  # noqa: B006
    tokens: list[TokenSecretInfo] = [],  # noqa: B006
    tls: list[TlsSecretInfo] = [],  # noqa: B006
    namespaces: list[Meta] = [],  # noqa: B006
    identities: list[ManagedIdentity] = [],  # noqa: B006
    **kw: Any,
) -> Observed:
    return Observed(
        service_accounts={(s.meta.namespace, s.meta.name): s for s in sas},
        workloads=tuple(workloads),
        roles={r.ref: r for r in roles},
        bindings=tuple(bindings),
        tokens=tuple(tokens),
        tls=tuple(tls),
        namespaces={n.name: n for n in namespaces},
        identities=tuple(identities),
        **kw,
    )


def ref(kind: str, ns: str, name: str) -> ObjectRef:
    return ObjectRef(kind, ns, name)

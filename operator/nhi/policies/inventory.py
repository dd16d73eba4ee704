"""The inventory, pure: every ServiceAccount as an identity, with its workloads, its
effective permissions flattened from every binding, its credentials, its state (managed,
system, unmanaged) and its attributed owner.

:func:`build` takes what the watches observed (:class:`Observed`) and the settings; it reads
no clock (ages are computed by the rules, which take ``now``).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from nhi.models.discovered import UNKNOWN, Grant, Identity, SaKey, State
from nhi.models.inventory import (
    ManagedIdentity,
    Meta,
    ObjectRef,
    SecretInfo,
    ServiceAccountInfo,
    TlsSecretInfo,
    TokenSecretInfo,
    WorkloadInfo,
)
from nhi.models.inventory_config import InventoryConfig, globs
from nhi.models.inventory_rbac import ALL_SERVICE_ACCOUNTS, BindingInfo, RoleInfo, Subject
from nhi.models.meta import IDENTITY_LABEL

HELM_RELEASE = "meta.helm.sh/release-name"
ARGO_INSTANCE = "argocd.argoproj.io/instance"
ARGO_TRACKING = "argocd.argoproj.io/tracking-id"
FLUX_KUSTOMIZATION = ("kustomize.toolkit.fluxcd.io/namespace", "kustomize.toolkit.fluxcd.io/name")
FLUX_HELM = ("helm.toolkit.fluxcd.io/namespace", "helm.toolkit.fluxcd.io/name")


@dataclass(frozen=True)
class Observed:
    """Everything the watches report, reduced to records."""

    service_accounts: Mapping[SaKey, ServiceAccountInfo] = field(default_factory=dict)
    workloads: Sequence[WorkloadInfo] = ()
    tokens: Sequence[TokenSecretInfo] = ()
    tls: Sequence[TlsSecretInfo] = ()
    #: Opaque Secrets (metadata only).
    secrets: Sequence[SecretInfo] = ()
    roles: Mapping[ObjectRef, RoleInfo] = field(default_factory=dict)
    bindings: Sequence[BindingInfo] = ()
    namespaces: Mapping[str, Meta] = field(default_factory=dict)
    identities: Sequence[ManagedIdentity] = ()
    #: When a workload was last seen running as each ServiceAccount (kept by the controller).
    last_used: Mapping[SaKey, dt.datetime] = field(default_factory=dict)
    #: The namespaces discovered (globs); empty: every namespace.
    scope: tuple[str, ...] = ()

    def in_scope(self, namespace: str) -> bool:
        return not self.scope or globs(self.scope)(namespace)


@dataclass(frozen=True)
class Inventory:
    identities: tuple[Identity, ...]
    observed: Observed

    def by_key(self) -> dict[SaKey, Identity]:
        return {i.key: i for i in self.identities}


def grants_of(binding: BindingInfo, roles: Mapping[ObjectRef, RoleInfo], group: str = "") -> Grant:
    role = roles.get(binding.role_ref)
    return Grant(
        binding=binding.ref,
        role=binding.role_ref,
        namespace=binding.meta.namespace if binding.kind == "RoleBinding" else "",
        rules=role.rules if role is not None else (),
        role_found=role is not None,
        group=group,
    )


def _tool_owner(labels: Mapping[str, str], annotations: Mapping[str, str]) -> str | None:
    release = annotations.get(HELM_RELEASE)
    if release:
        return f"helm:{release}"
    if labels.get("app.kubernetes.io/managed-by") == "Helm" and labels.get(
        "app.kubernetes.io/instance"
    ):
        return f"helm:{labels['app.kubernetes.io/instance']}"
    app = labels.get(ARGO_INSTANCE) or annotations.get(ARGO_TRACKING, "").split(":")[0]
    if app:
        return f"argocd:{app}"
    for ns_key, name_key in (FLUX_KUSTOMIZATION, FLUX_HELM):
        if labels.get(name_key):
            return f"flux:{labels.get(ns_key, '')}/{labels[name_key]}"
    return None


def _keyed_owner(meta: Meta, keys: Sequence[str]) -> str | None:
    for key in keys:
        value = meta.labels.get(key) or meta.annotations.get(key)
        if value and value.strip():
            return value.strip()
    return None


def attribute(
    sa: Meta,
    workloads: Sequence[WorkloadInfo],
    namespace: Meta | None,
    managed: ManagedIdentity | None,
    owner_keys: Sequence[str],
) -> tuple[str, str]:
    """(owner, where it came from): the MachineIdentity's owner, then an owner key on the
    ServiceAccount, its workloads, its namespace, then the tool that created it, else
    ("unknown", "")."""
    if managed is not None and managed.owner:
        return managed.owner, "MachineIdentity"
    owner = _keyed_owner(sa, owner_keys)
    if owner:
        return owner, "ServiceAccount"
    for w in sorted(workloads, key=lambda w: (w.kind, w.meta.name)):
        owner = _keyed_owner(w.meta, owner_keys)
        if owner:
            return owner, str(w.ref)
    if namespace is not None:
        owner = _keyed_owner(namespace, owner_keys)
        if owner:
            return owner, "Namespace"
    for meta in (sa, *(w.meta for w in workloads)):
        tool = _tool_owner(meta.labels, meta.annotations)
        if tool:
            return tool, "tool"
    return UNKNOWN, ""


def classify(
    sa: ServiceAccountInfo, managed: ManagedIdentity | None, config: InventoryConfig
) -> State:
    if managed is not None or IDENTITY_LABEL in sa.meta.labels:
        return "managed"
    if config.is_system(sa.meta.namespace, sa.meta.name):
        return "system"
    return "unmanaged"


def subject_index(
    bindings: Iterable[BindingInfo],
) -> tuple[dict[SaKey, list[BindingInfo]], dict[str, list[BindingInfo]]]:
    """Bindings by ServiceAccount subject, and by group subject."""
    by_sa: dict[SaKey, list[BindingInfo]] = defaultdict(list)
    by_group: dict[str, list[BindingInfo]] = defaultdict(list)
    for b in bindings:
        for s in set(b.subjects):
            if s.kind == "ServiceAccount":
                by_sa[(s.namespace, s.name)].append(b)
            else:
                by_group[s.name].append(b)
    return by_sa, by_group


def build(observed: Observed, config: InventoryConfig) -> Inventory:
    """Every ServiceAccount in scope as an :class:`Identity`."""
    workloads: dict[SaKey, list[WorkloadInfo]] = defaultdict(list)
    for w in observed.workloads:
        workloads[(w.meta.namespace, w.service_account)].append(w)
    tokens: dict[SaKey, list[TokenSecretInfo]] = defaultdict(list)
    for t in observed.tokens:
        tokens[(t.meta.namespace, t.service_account)].append(t)
    managed = {(m.namespace, m.service_account): m for m in observed.identities}
    by_sa, by_group = subject_index(observed.bindings)
    out = []
    for key in sorted(observed.service_accounts):
        sa = observed.service_accounts[key]
        mine = managed.get(key)
        used_by = tuple(sorted(workloads.get(key, ()), key=lambda w: (w.kind, w.meta.name)))
        grants = [grants_of(b, observed.roles) for b in by_sa.get(key, ())]
        for group in (ALL_SERVICE_ACCOUNTS, f"{ALL_SERVICE_ACCOUNTS}:{key[0]}"):
            grants += [grants_of(b, observed.roles, group) for b in by_group.get(group, ())]
        owner, source = attribute(
            sa.meta, used_by, observed.namespaces.get(key[0]), mine, config.owner_keys
        )
        out.append(
            Identity(
                namespace=key[0],
                name=key[1],
                uid=sa.meta.uid,
                created=sa.meta.created,
                state=classify(sa, mine, config),
                owner=owner,
                owner_source=source,
                labels=sa.meta.labels,
                automount=sa.automount,
                managed_by=mine.ref if mine is not None else None,
                workloads=used_by,
                grants=tuple(sorted(grants, key=lambda g: (str(g.binding), g.group))),
                tokens=tuple(sorted(tokens.get(key, ()), key=lambda t: t.meta.name)),
            )
        )
    return Inventory(identities=tuple(out), observed=observed)


def missing_subjects(observed: Observed) -> list[tuple[BindingInfo, Subject]]:
    """ServiceAccount subjects (in the namespaces discovered) that do not exist."""
    out = []
    for b in observed.bindings:
        for s in sorted(set(b.subjects)):
            if (
                s.kind == "ServiceAccount"
                and observed.in_scope(s.namespace)
                and (s.namespace, s.name) not in observed.service_accounts
            ):
                out.append((b, s))
    return out

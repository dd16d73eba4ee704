"""A MachineIdentity that adopts an unmanaged ServiceAccount, from its inventory record.

The identity keeps everything the ServiceAccount holds today, so taking it over never takes a
permission away: the rules of the Roles bound in its namespace become ``permissions.rules``,
ClusterRoles bound in its namespace become ``roleRefs``, the rules of ClusterRoles bound
cluster-wide become ``clusterRules`` (an IdentityPolicy decides whether they are allowed);
its automount setting is kept; workloads are selected by the pod-template labels they all
share. The old bindings are left in place: the operator never touches what it did not make,
and removing them is the user's call (:func:`old_bindings` lists them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nhi import API_VERSION
from nhi.models.discovered import Grant, Identity
from nhi.models.inventory import ObjectRef, WorkloadInfo
from nhi.models.inventory_rbac import Rule
from nhi.models.meta import ADOPT_ANNOTATION


def _rule(r: Rule) -> dict[str, Any]:
    out: dict[str, Any] = {"verbs": list(r.verbs)}
    if r.non_resource_urls:
        out["nonResourceURLs"] = list(r.non_resource_urls)
        return out
    out["apiGroups"] = list(r.api_groups)
    out["resources"] = list(r.resources)
    if r.resource_names:
        out["resourceNames"] = list(r.resource_names)
    return out


def _usable(r: Rule, namespaced: bool) -> bool:
    """A rule the MachineIdentity schema accepts there (no URL in a namespace, a verb and a
    resource or URL)."""
    if not r.verbs:
        return False
    if r.non_resource_urls:
        return not namespaced and not r.resources
    return bool(r.resources)


def common_labels(workloads: Sequence[WorkloadInfo]) -> dict[str, str]:
    """The labels every workload's pod template (a bare Pod's own) carries."""
    shared: dict[str, str] | None = None
    for w in workloads:
        labels = dict(w.template_labels if w.kind != "Pod" else w.meta.labels)
        shared = (
            labels if shared is None else {k: v for k, v in shared.items() if labels.get(k) == v}
        )
    return shared or {}


def permissions(grants: Sequence[Grant]) -> dict[str, Any]:
    rules: list[dict[str, Any]] = []
    cluster_rules: list[dict[str, Any]] = []
    role_refs: list[dict[str, str]] = []
    for g in grants:
        if g.group:
            continue  # not the identity's own
        if g.namespace and g.role.kind == "ClusterRole":
            # The same reference, whether or not the ClusterRole exists today.
            ref = {"kind": "ClusterRole", "name": g.role.name}
            if ref not in role_refs:
                role_refs.append(ref)
        elif not g.role_found:
            continue  # no rule to copy
        elif g.namespace:
            rules += [_rule(r) for r in g.rules if _usable(r, True) and _rule(r) not in rules]
        else:
            cluster_rules += [
                _rule(r) for r in g.rules if _usable(r, False) and _rule(r) not in cluster_rules
            ]
    out: dict[str, Any] = {}
    if rules:
        out["rules"] = rules
    if cluster_rules:
        out["clusterRules"] = cluster_rules
    if role_refs:
        out["roleRefs"] = role_refs
    return out


def adoption_manifest(ident: Identity, owner: str) -> dict[str, Any]:
    """The MachineIdentity (named after the ServiceAccount) that adopts it."""
    spec: dict[str, Any] = {
        "owner": owner,
        "purpose": f"adopted from the unmanaged ServiceAccount {ident.namespace}/{ident.name}",
        # Automount as it was (unset means on): a workload relying on it keeps its token.
        "serviceAccount": {"name": ident.name, "automountToken": ident.automount is not False},
    }
    perms = permissions(ident.grants)
    if perms:
        spec["permissions"] = perms
    labels = common_labels(ident.workloads)
    if labels:
        spec["workloads"] = {"selector": {"matchLabels": labels}}
    return {
        "apiVersion": API_VERSION,
        "kind": "MachineIdentity",
        "metadata": {
            "name": ident.name,
            "namespace": ident.namespace,
            "annotations": {ADOPT_ANNOTATION: "true"},
        },
        "spec": spec,
    }


def old_bindings(ident: Identity) -> list[ObjectRef]:
    """The bindings that grant the ServiceAccount its permissions today (its own, not its
    groups'): left in place by the adoption."""
    return sorted({g.binding for g in ident.grants if not g.group}, key=str)

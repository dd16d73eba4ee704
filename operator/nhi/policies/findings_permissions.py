"""The inventory's rules on permissions (OWASP NHI5, Overprivileged NHI), pure: what a grant
gives (an admin role, wildcards, reading every Secret, escalation verbs, sensitive
subresources) and which declared rules of a MachineIdentity went unused. Run with the other
rules by :func:`nhi.policies.findings.evaluate`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Mapping

from nhi.models.discovered import Grant
from nhi.models.inventory import Finding, ObjectRef
from nhi.models.inventory_config import InventoryConfig
from nhi.models.inventory_rbac import Rule
from nhi.policies.inventory import Inventory, grants_of

#: Roles that give (nearly) everything.
ADMIN_ROLES = {"cluster-admin": "critical", "admin": "high"}
ESCALATION_VERBS = ("escalate", "bind", "impersonate")
READ_VERBS = ("get", "list", "watch", "*")
#: (resource, verbs) granting a way around the identity's own permissions.
SENSITIVE = (("pods/exec", ("create", "get", "*")), ("serviceaccounts/token", ("create", "*")))
NODE_PROXY = ("nodes/proxy", ("get", "create", "*"))


def _holds(rule: Rule, resource: str, verbs: Iterable[str]) -> bool:
    group_ok = not rule.api_groups or any(g in ("", "*") for g in rule.api_groups)
    res_ok = resource in rule.resources or "*" in rule.resources
    return group_ok and res_ok and any(v in rule.verbs for v in verbs)


def grant_problems(grant: Grant) -> list[tuple[str, str, str]]:
    """(rule, severity, what) for one grant's rules, most serious first."""
    cluster = not grant.namespace
    if grant.role.kind == "ClusterRole" and grant.role.name in ADMIN_ROLES:
        severity = ADMIN_ROLES[grant.role.name] if cluster else "high"
        return [("cluster-admin-binding", severity, f"the {grant.role.name} role")]
    out: list[tuple[str, str, str]] = []
    for r in grant.rules:
        if "*" in r.verbs and ("*" in r.resources or "*" in r.non_resource_urls):
            out.append(("wildcard-permission", "critical" if cluster else "high", "* on *"))
            continue  # everything: the narrower rules below add nothing
        if "*" in r.verbs or "*" in r.resources:
            out.append(("wildcard-permission", "high" if cluster else "medium", "a wildcard"))
        if cluster and _holds(r, "secrets", READ_VERBS) and not r.resource_names:
            out.append(("cluster-wide-secret-read", "high", "read of every Secret"))
        verbs = [v for v in ESCALATION_VERBS if v in r.verbs]
        if verbs:
            out.append(("privilege-escalation-verb", "high", f"the verbs {', '.join(verbs)}"))
        for resource, rverbs in (*SENSITIVE, NODE_PROXY):
            if resource in r.resources and any(v in r.verbs for v in rverbs):
                out.append(("sensitive-subresource", "high", resource))
    return list(dict.fromkeys(out))


def overprivileged(inv: Inventory, config: InventoryConfig, now: dt.datetime) -> Iterator[Finding]:
    for ident in inv.identities:
        for grant in ident.direct_grants:
            yield from _grant_findings(ident.ref, ident.namespace, grant, ident.labels)
    # Group subjects: one finding per binding, not one per ServiceAccount of the group.
    for b in inv.observed.bindings:
        for s in b.subjects:
            if s.kind == "Group":
                grant = grants_of(b, inv.observed.roles, s.name)
                subject = ObjectRef("Group", "", s.name)
                yield from _grant_findings(subject, b.meta.namespace, grant, b.meta.labels)


def _grant_findings(
    subject: ObjectRef, namespace: str, grant: Grant, labels: Mapping[str, str]
) -> Iterator[Finding]:
    where = f"in {grant.namespace}" if grant.namespace else "cluster-wide"
    for rule, severity, what in grant_problems(grant):
        yield Finding(
            rule,
            "NHI5",
            severity,
            namespace,
            (subject, grant.binding, grant.role),
            f"{subject} holds {what} {where} through {grant.binding} ({grant.role})",
            f"replace {grant.role} by a role with only the verbs and resources the workload "
            "uses (a MachineIdentity's permissions), then remove the binding",
            labels,
        )


def unused_permissions(
    inv: Inventory, config: InventoryConfig, now: dt.datetime
) -> Iterator[Finding]:
    """Declared rules of a MachineIdentity its workloads have not used (audit usage: the
    identity's ``status.usage``, with its own ``unusedAfter``)."""
    labels = {i.key: i.labels for i in inv.identities}
    for mi in inv.observed.identities:
        if not mi.unused_rules:
            continue
        sa = ObjectRef("ServiceAccount", mi.namespace, mi.service_account)
        span = _span(mi.unused_after_seconds)
        yield Finding(
            "unused-permissions",
            "NHI5",
            "medium" if len(mi.unused_rules) == mi.rules_weighed else "low",
            mi.namespace,
            (mi.ref, sa),
            f"{mi.ref} has not used {len(mi.unused_rules)} of its {mi.rules_weighed} declared "
            f"rules{span}: {', '.join(mi.unused_rules)}",
            f"`nhi rightsize {mi.name} -n {mi.namespace}` prints the permissions without them; "
            "commit that change (or set spec.permissions.rightsizing: Suggest)",
            labels.get((mi.namespace, mi.service_account), {}),
        )


def _span(seconds: int) -> str:
    if seconds <= 0:
        return ""
    days = seconds / 86400
    return f" for {days:g} days" if days >= 1 else f" for {seconds} seconds"

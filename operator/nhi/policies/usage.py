"""Declared against used: which rules of a MachineIdentity were used, which were not, and the
smallest ``permissions`` block that covers what was observed (pure; takes ``now``).

Only ``spec.permissions.rules`` (a Role in the identity's namespace) and ``clusterRules`` (a
ClusterRole bound cluster-wide) are weighed: what a ``roleRef`` grants is defined elsewhere and
is left as it is. A right-sized block never widens: every rule it holds is made of the groups,
resources, verbs and names observed under a declared rule that already allowed them.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nhi.models.fields import SpecError
from nhi.models.identity import PolicyRule
from nhi.models.policy import IdentityPolicy
from nhi.models.selector import parse_selector
from nhi.models.usage import ANY_NAME, Access, CredentialUse, Mint, Observation, Seen

#: Unused for this long, a rule is reported (settable per IdentityPolicy and per operator).
DEFAULT_UNUSED_AFTER = dt.timedelta(days=30)
#: Verbs an RBAC rule's resourceNames can restrict (list, watch, create and deletecollection
#: name no object in the request path).
NAMED_VERBS = frozenset({"get", "update", "patch", "delete"})
RULES = "rules"
CLUSTER_RULES = "clusterRules"


@dataclass(frozen=True)
class RuleUse:
    """When one declared rule was last used (None: not since observation began)."""

    field: str  # "rules" or "clusterRules"
    index: int
    rule: PolicyRule
    last_used: dt.datetime | None
    count: int

    @property
    def path(self) -> str:
        return f"spec.permissions.{self.field}[{self.index}]"


def _has(values: Sequence[str], value: str) -> bool:
    return "*" in values or value in values


def rule_allows(rule: PolicyRule, access: Access) -> bool:
    """Would this RBAC rule allow the access (the rule's scope aside)?"""
    if rule.non_resource_urls or not access.resource:
        return False
    resource = access.rbac_resource
    resource_ok = (
        "*" in rule.resources
        or resource in rule.resources
        or (bool(access.subresource) and f"*/{access.subresource}" in rule.resources)
    )
    # A folded access (any name) may have named one of the rule's objects: counted as used.
    names_ok = (
        not rule.resource_names or access.name in rule.resource_names or access.name == ANY_NAME
    )
    return (
        _has(rule.api_groups, access.api_group)
        and resource_ok
        and _has(rule.verbs, access.verb)
        and names_ok
    )


def in_scope(field: str, identity_namespace: str, access: Access) -> bool:
    """A namespaced rule (a Role) applies in the identity's namespace only."""
    return field == CLUSTER_RULES or access.namespace == identity_namespace


def rule_uses(
    rules: Sequence[PolicyRule],
    cluster_rules: Sequence[PolicyRule],
    identity_namespace: str,
    entries: Mapping[Access, Seen],
) -> list[RuleUse]:
    """Each declared rule with the last time an observed access fell under it."""
    out = []
    for field, declared in ((RULES, rules), (CLUSTER_RULES, cluster_rules)):
        for i, rule in enumerate(declared):
            matched = [
                seen
                for access, seen in entries.items()
                if in_scope(field, identity_namespace, access) and rule_allows(rule, access)
            ]
            last = max((s.last for s in matched), default=None)
            out.append(
                RuleUse(
                    field,
                    i,
                    rule,
                    dt.datetime.fromtimestamp(last, dt.UTC) if last is not None else None,
                    sum(s.count for s in matched),
                )
            )
    return out


def unused_window(
    policies: Iterable[IdentityPolicy],
    namespace_labels: Mapping[str, str],
    default: dt.timedelta = DEFAULT_UNUSED_AFTER,
) -> dt.timedelta:
    """How long a rule may go unused: the shortest ``unusedAfter`` of the policies selecting
    the identity's namespace, else ``default``."""
    windows = [p.unused_after for p in policies if p.unused_after and p.selects(namespace_labels)]
    return min(windows, default=default)


def unused(
    uses: Iterable[RuleUse], observed_since: dt.datetime, now: dt.datetime, after: dt.timedelta
) -> list[RuleUse]:
    """The rules not used for ``after``: never used while usage was observed for at least
    that long, or last used longer ago than that."""
    out = []
    for use in uses:
        reference = use.last_used or observed_since
        if now - reference >= after:
            out.append(use)
    return out


# ------------------------------------------------------------------------------ behaviour

#: How long a ServiceAccount's behaviour is learnt before a new one is reported.
DEFAULT_LEARNING_WINDOW = dt.timedelta(days=7)
NEW_BEHAVIOUR = "NewBehaviour"


def after_learning(since: int, at: dt.datetime, window: dt.timedelta) -> bool:
    """Is ``at`` past the learning window of a ServiceAccount first seen at ``since``?"""
    return since > 0 and at.timestamp() - since >= window.total_seconds()


def behaviour_message(obs: Observation, window: dt.timedelta) -> str:
    a = obs.access
    group = a.api_group or "core"
    where = f" in namespace {a.namespace}" if a.namespace else " (cluster-scoped)"
    cred = f", credential {obs.credential_id}" if obs.credential_id else ""
    pod = f", pod {obs.pod}" if obs.pod else ""
    return (
        f"ServiceAccount {obs.namespace}/{obs.service_account} used {a.verb} on "
        f"{group}/{a.rbac_resource}{where} for the first time, after a learning window of "
        f"{_span(window)}{cred}{pod}"
    )


TOKEN_MINTED_BY_PERSON = "TokenMintedByPerson"  # noqa: S105 - an Event reason


def person_minted_message(obs: Observation, mint: Mint) -> str:
    where = f" from {mint.source_ip}" if mint.source_ip else ""
    client = f" ({mint.user_agent})" if mint.user_agent else ""
    return (
        f"a token of ServiceAccount {obs.namespace}/{obs.service_account} minted by "
        f"{mint.minted_by}{where}{client} at {_time(mint.at)} was used: credential "
        f"{obs.credential_id}; a machine identity's token in a person's hands"
    )


TOKEN_USED_OUTSIDE_POD = "TokenUsedOutsidePod"  # noqa: S105 - an Event reason
TOKEN_OF_FOREIGN_POD = "TokenOfForeignPod"  # noqa: S105 - an Event reason


def pod_addresses(pod: Mapping[str, Any]) -> set[str]:
    """The addresses a pod's requests come from: its IPs, and its node's with hostNetwork."""
    status = pod.get("status") or {}
    ips = {str(status["podIP"])} if status.get("podIP") else set()
    ips |= {
        str(p["ip"]) for p in status.get("podIPs") or [] if isinstance(p, Mapping) and p.get("ip")
    }
    if (pod.get("spec") or {}).get("hostNetwork") and status.get("hostIP"):
        ips.add(str(status["hostIP"]))
    return ips


def outside_pod(obs: Observation, pod: Mapping[str, Any] | None) -> bool:
    """A token bound to a pod, used from an address that is not the pod's. Unknown (no pod,
    no address yet, no source address): not reported."""
    if pod is None or not obs.source_ip:
        return False
    ips = pod_addresses(pod)
    return bool(ips) and obs.source_ip not in ips


def foreign_pod(pod: Mapping[str, Any], identity: Mapping[str, Any]) -> bool:
    """A pod that a MachineIdentity's ServiceAccount token was bound to, and that is not one
    of the identity's workloads: its labels do not match ``spec.workloads.selector``. Without
    a selector (or with one that cannot be read) every pod of the ServiceAccount is its own."""
    spec = identity.get("spec")
    workloads = spec.get("workloads") if isinstance(spec, Mapping) else None
    raw = workloads.get("selector") if isinstance(workloads, Mapping) else None
    try:
        selector = parse_selector(raw, "spec.workloads.selector")
    except SpecError:
        return False
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return not selector.empty and not selector.matches(labels)


def foreign_pod_message(obs: Observation, identity: Mapping[str, Any]) -> str:
    meta = identity.get("metadata") or {}
    return (
        f"a token of ServiceAccount {obs.namespace}/{obs.service_account} bound to pod "
        f"{obs.pod}, which is not among the workloads of MachineIdentity "
        f"{meta.get('namespace')}/{meta.get('name')} (spec.workloads.selector), was used from "
        f"{obs.source_ip}: credential {obs.credential_id}"
    )


def outside_pod_message(obs: Observation, pod: Mapping[str, Any]) -> str:
    return (
        f"a token of ServiceAccount {obs.namespace}/{obs.service_account} bound to pod "
        f"{obs.pod} was used from {obs.source_ip}, which is not the pod's address "
        f"({', '.join(sorted(pod_addresses(pod)))}): credential {obs.credential_id}; the token "
        "left its pod"
    )


def _span(delta: dt.timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds % 86400 == 0:
        return f"{seconds // 86400} days"
    return f"{seconds} seconds"


# ------------------------------------------------------------------------------ right-sizing


def _narrowed(rule: PolicyRule, accesses: Iterable[Access]) -> list[PolicyRule]:
    """The observed accesses under one rule as rules no wider than it.

    Per API group and resource: verbs used only on named objects keep those names when every
    use named one (and the verb can be restricted by name); the other verbs get no names, as
    the declared rule had (or its names, if it had some)."""
    by_target: dict[tuple[str, str], dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for a in accesses:
        by_target[(a.api_group, a.rbac_resource)][a.verb].add(a.name)
    out: dict[tuple[str, tuple[str, ...], tuple[str, ...]], set[str]] = defaultdict(set)
    for (group, resource), by_verb in by_target.items():
        for verb, seen_names in by_verb.items():
            keep: tuple[str, ...] = ()
            if rule.resource_names:
                declared = set(rule.resource_names)
                keep = tuple(sorted(declared if ANY_NAME in seen_names else seen_names & declared))
            elif verb in NAMED_VERBS and "" not in seen_names and ANY_NAME not in seen_names:
                keep = tuple(sorted(seen_names))
            out[(group, (resource,), keep)].add(verb)
    # One rule per group, names and verb set: resources with the same verbs share a rule.
    merged: dict[tuple[str, tuple[str, ...], tuple[str, ...]], set[str]] = defaultdict(set)
    for (group, (resource,), names), verbs in out.items():
        merged[(group, tuple(sorted(verbs)), names)].add(resource)
    return [
        PolicyRule(
            api_groups=(group,),
            resources=tuple(sorted(resources)),
            verbs=verb_set,
            resource_names=names,
        )
        for (group, verb_set, names), resources in sorted(merged.items())
    ]


def rightsize(
    rules: Sequence[PolicyRule],
    cluster_rules: Sequence[PolicyRule],
    identity_namespace: str,
    entries: Mapping[Access, Seen],
) -> tuple[list[PolicyRule], list[PolicyRule]]:
    """The smallest (rules, clusterRules) covering every observed access the declared ones
    allowed; a declared rule nothing used disappears. Non-resource rules are kept as they are
    (audit events of non-resource URLs are not counted)."""
    result: dict[str, list[PolicyRule]] = {RULES: [], CLUSTER_RULES: []}
    for field, declared in ((RULES, rules), (CLUSTER_RULES, cluster_rules)):
        covered: set[Access] = set()
        for rule in declared:
            if rule.non_resource_urls:
                result[field].append(rule)
                continue
            mine = [
                a
                for a in entries
                if a not in covered
                and in_scope(field, identity_namespace, a)
                and rule_allows(rule, a)
            ]
            covered.update(mine)
            for narrowed in _narrowed(rule, mine):
                if narrowed not in result[field]:
                    result[field].append(narrowed)
    return result[RULES], result[CLUSTER_RULES]


# ------------------------------------------------------------------------------ status

UNUSED_PERMISSIONS = "UnusedPermissions"
REASON_UNUSED = "RulesUnused"
REASON_ALL_USED = "AllRulesUsed"


def _time(at: dt.datetime | None) -> str | None:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ") if at is not None else None


def usage_status(
    uses: Sequence[RuleUse],
    stale: Sequence[RuleUse],
    observed_since: dt.datetime,
    after: dt.timedelta,
) -> dict[str, object]:
    """``status.usage``: when each declared rule was last used, and which are unused."""
    return {
        "observedSince": _time(observed_since),
        "unusedAfterSeconds": int(after.total_seconds()),
        # lastUsed is left out, not null, when never used: the API server drops a null.
        "rules": [
            {"path": u.path, "count": u.count}
            | ({"lastUsed": _time(u.last_used)} if u.last_used else {})
            for u in uses
        ],
        "unusedRules": [u.path for u in stale],
    }


#: The most issued credentials ``status.usage.credentials`` lists.
MAX_ISSUED_CREDENTIALS = 32


def issued_credential_uses(
    statuses: Sequence[Any], used: Mapping[str, CredentialUse]
) -> list[dict[str, object]]:
    """Each token the operator issued (``status.credentials[].credentialID``) traced in the
    usage: which credential of the identity it is, when it was first and last used, how many
    requests it made, and from which pod. A credential never seen has only its name and ID."""
    out: list[dict[str, object]] = []
    for st in statuses[:MAX_ISSUED_CREDENTIALS]:
        if not isinstance(st, Mapping) or not isinstance(st.get("credentialID"), str):
            continue
        cid = str(st["credentialID"])
        entry: dict[str, object] = {"name": str(st.get("name", "")), "credentialID": cid}
        use = used.get(cid)
        if use is not None:
            entry["firstUsed"] = _time(dt.datetime.fromtimestamp(use.seen.first, dt.UTC))
            entry["lastUsed"] = _time(dt.datetime.fromtimestamp(use.seen.last, dt.UTC))
            entry["count"] = use.seen.count
            if use.pod:
                entry["pod"] = use.pod
        out.append(entry)
    return out


def unused_condition(stale: Sequence[RuleUse], after: dt.timedelta) -> tuple[str, str, str]:
    """(status, reason, message) of the UnusedPermissions condition."""
    if not stale:
        return "False", REASON_ALL_USED, "every declared rule was used recently"
    days = after.total_seconds() / 86400
    span = f"{days:g} days" if days >= 1 else f"{int(after.total_seconds())} seconds"
    return (
        "True",
        REASON_UNUSED,
        f"not used for {span}: {', '.join(u.path for u in stale)}; "
        "`nhi rightsize` prints the permissions without them",
    )

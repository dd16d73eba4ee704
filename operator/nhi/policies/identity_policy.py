"""IdentityPolicy checks: which guardrails an identity breaks, and what it would grant.

Pure: the same functions run in the admission webhook (before an identity is stored) and in
the reconciler (before anything is applied), so an identity written while the webhook was
down meets the same rules.

- :func:`evaluate` returns every :class:`Violation` of every policy that selects the
  identity's namespace (all of them apply; the strictest wins).
- :func:`grant_checks` and :func:`role_bind_checks` (from :mod:`nhi.policies.access`, also
  exported here) list what the identity would grant, as the access checks the webhook sends
  (SubjectAccessReview) to make sure whoever writes the identity holds it.

Messages name the policy, the rule and the field, e.g.
``IdentityPolicy "baseline" (maxTTL): spec.credentials[0].ttl 48h exceeds the maximum 24h
for ServiceAccountToken``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from nhi.models.identity import IssuerRef, MachineIdentity, PolicyRule, Spec
from nhi.models.policy import DENY, WARN, ForbiddenRule, IdentityPolicy

# Re-exported: the access checks lived here, and their callers import them from here.
from nhi.policies.access import ADOPT_FIELD as ADOPT_FIELD
from nhi.policies.access import RBAC_GROUP as RBAC_GROUP
from nhi.policies.access import ROLLOUT_FIELD as ROLLOUT_FIELD
from nhi.policies.access import WORKLOAD_RESOURCES as WORKLOAD_RESOURCES
from nhi.policies.access import AccessCheck as AccessCheck
from nhi.policies.access import adopt_added as adopt_added
from nhi.policies.access import adopt_requested as adopt_requested
from nhi.policies.access import adoption_checks as adoption_checks
from nhi.policies.access import grant_checks as grant_checks
from nhi.policies.access import raw_rule_checks as raw_rule_checks
from nhi.policies.access import role_bind_checks as role_bind_checks
from nhi.policies.access import rollout_checks as rollout_checks
from nhi.policies.access import rule_checks as rule_checks
from nhi.policies.access import spec_changed as spec_changed

WILDCARD = "*"

# Policy rule names, as the fields of IdentityPolicy.spec.
REQUIRE_OWNER = "requireOwner"
MAX_TTL = "maxTTL"
MAX_VALID_FOR = "maxValidFor"
FORBID_WILDCARDS = "forbidWildcards"
FORBIDDEN_RULES = "forbiddenRules"
ALLOWED_CLUSTER_ROLES = "allowedClusterRoles"
ALLOWED_ISSUERS = "allowedIssuers"
ALLOW_CLUSTER_RULES = "allowClusterRules"


@dataclass(frozen=True)
class Violation:
    """One broken guardrail: which policy, which of its rules, which field of the identity."""

    policy: str
    rule: str  # the IdentityPolicy field, e.g. "maxTTL" or "forbiddenRules[0]"
    field: str  # the MachineIdentity field, e.g. "spec.credentials[0].ttl"
    message: str  # the whole sentence, naming all three
    enforcement: str  # Deny | Warn

    @property
    def denies(self) -> bool:
        return self.enforcement == DENY


def short_duration(delta: dt.timedelta) -> str:
    """``48h``, ``1h30m``, ``90s`` -> ``1m30s``: the way people write durations in a spec."""
    total = delta.total_seconds()
    whole = int(total)
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    frac = total - whole
    out = ""
    if h:
        out += f"{h}h"
    if m:
        out += f"{m}m"
    if s or frac or not out:
        out += f"{s + frac:g}s" if frac else f"{s}s"
    return out


# ------------------------------------------------------------------------------ evaluation


def selecting(
    policies: Iterable[IdentityPolicy], namespace_labels: Mapping[str, str]
) -> list[IdentityPolicy]:
    """The policies that select a namespace, by name (a stable order for messages)."""
    return sorted((p for p in policies if p.selects(namespace_labels)), key=lambda p: p.name)


def evaluate(
    identity: MachineIdentity,
    policies: Iterable[IdentityPolicy],
    namespace_labels: Mapping[str, str],
) -> list[Violation]:
    """Every violation of every policy that selects the identity's namespace."""
    out: list[Violation] = []
    for policy in selecting(policies, namespace_labels):
        out.extend(check_policy(identity, policy))
    return out


def check_adoption(
    service_account: str,
    policies: Iterable[IdentityPolicy],
    namespace_labels: Mapping[str, str],
) -> str | None:
    """Why the namespace's policies do not let an identity adopt ``service_account``, or None.

    Any selecting policy with ``adoption.allowed: false`` forbids adoption (whatever its
    enforcement: taking over an object is never merely warned about). The ``default``
    ServiceAccount, which every Pod without one runs as, is adopted only where a selecting
    policy says ``adoption.allowDefaultServiceAccount: true``.
    """
    selected = selecting(policies, namespace_labels)
    field = "metadata.annotations[nhi.dev/adopt]"
    for policy in selected:
        if not policy.allow_adoption:
            return (
                f"{field}: IdentityPolicy {policy.name!r} (adoption.allowed: false) forbids "
                f"adopting ServiceAccount {service_account!r}"
            )
    if service_account == "default" and not any(p.allow_default_adoption for p in selected):
        return (
            f"{field}: adopting the namespace's default ServiceAccount needs an IdentityPolicy "
            "selecting the namespace with adoption.allowDefaultServiceAccount: true"
        )
    return None


def check_policy(identity: MachineIdentity, policy: IdentityPolicy) -> list[Violation]:
    """The violations of one policy, whether or not it selects the namespace."""
    return list(_check(identity, policy))


#: One broken rule: (the policy's rule, the identity's field, what is wrong with it).
_Finding = tuple[str, str, str]


def _check(identity: MachineIdentity, policy: IdentityPolicy) -> Iterator[Violation]:
    enforcement = policy.enforcement if policy.enforcement in (DENY, WARN) else DENY
    for rule_check in _RULE_CHECKS:
        for rule, field, detail in rule_check(identity.spec, policy):
            yield Violation(
                policy=policy.name,
                rule=rule,
                field=field,
                message=f'IdentityPolicy "{policy.name}" ({rule}): {field} {detail}',
                enforcement=enforcement,
            )


def _require_owner(spec: Spec, policy: IdentityPolicy) -> Iterator[_Finding]:
    if policy.require_owner and not spec.owner.strip():
        yield REQUIRE_OWNER, "spec.owner", "is required: name an accountable owner"


def _max_ttl(spec: Spec, policy: IdentityPolicy) -> Iterator[_Finding]:
    for i, cred in enumerate(spec.credentials):
        limit = policy.max_ttl_for(cred.type)
        if limit is not None and cred.ttl > limit:
            yield (
                MAX_TTL,
                f"spec.credentials[{i}].ttl",
                f"{short_duration(cred.ttl)} exceeds the maximum {short_duration(limit)} "
                f"for {cred.type}",
            )


def _max_valid_for(spec: Spec, policy: IdentityPolicy) -> Iterator[_Finding]:
    limit = policy.max_valid_for
    if limit is None:
        return
    if spec.valid_for is None:
        yield (
            MAX_VALID_FOR,
            "spec.lifetime.validFor",
            f"is required: only just-in-time identities are allowed, valid for at most "
            f"{short_duration(limit)}",
        )
    elif spec.valid_for > limit:
        yield (
            MAX_VALID_FOR,
            "spec.lifetime.validFor",
            f"{short_duration(spec.valid_for)} exceeds the maximum {short_duration(limit)}",
        )


def _rule_sets(spec: Spec) -> tuple[tuple[str, tuple[PolicyRule, ...]], ...]:
    return (("rules", spec.rules), ("clusterRules", spec.cluster_rules))


def _forbid_wildcards(spec: Spec, policy: IdentityPolicy) -> Iterator[_Finding]:
    if not policy.forbid_wildcards:
        return
    for key, rules in _rule_sets(spec):
        for field, message in wildcard_findings(f"spec.permissions.{key}", rules):
            yield (FORBID_WILDCARDS, field, message)


def wildcard_findings(path: str, rules: Sequence[PolicyRule]) -> Iterator[tuple[str, str]]:
    """(field, message) for each apiGroups, resources or verbs of ``rules`` holding a wildcard."""
    for i, rule in enumerate(rules):
        for attr, values in (
            ("apiGroups", rule.api_groups),
            ("resources", rule.resources),
            ("verbs", rule.verbs),
        ):
            wild = [v for v in values if is_wildcard(v)]
            if wild:
                yield (
                    f"{path}[{i}].{attr}",
                    f"contains the wildcard {wild[0]!r}; list the {attr} explicitly",
                )


def _forbidden_rules(spec: Spec, policy: IdentityPolicy) -> Iterator[_Finding]:
    for j, forbidden in enumerate(policy.forbidden_rules):
        for key, rules in _rule_sets(spec):
            for i, rule in enumerate(rules):
                hit = forbidden_overlap(rule, forbidden)
                if hit is not None:
                    group, resource, verb = hit
                    yield (
                        f"{FORBIDDEN_RULES}[{j}]",
                        f"spec.permissions.{key}[{i}]",
                        f"grants {verb} on {resource_name(group, resource)}, which the policy "
                        f"forbids ({forbidden.describe()})",
                    )


def _allowed_cluster_roles(spec: Spec, policy: IdentityPolicy) -> Iterator[_Finding]:
    for i, ref in enumerate(spec.role_refs):
        if ref.kind == "ClusterRole" and ref.name not in policy.allowed_cluster_roles:
            allowed = ", ".join(policy.allowed_cluster_roles) or "none"
            yield (
                ALLOWED_CLUSTER_ROLES,
                f"spec.permissions.roleRefs[{i}]",
                f"binds ClusterRole {ref.name!r}, which is not allowed (allowed: {allowed})",
            )


def _allowed_issuers(spec: Spec, policy: IdentityPolicy) -> Iterator[_Finding]:
    if policy.allowed_issuers is None:
        return
    for i, cred in enumerate(spec.credentials):
        issuer = cred.issuer_ref
        if issuer is None or issuer in policy.allowed_issuers:
            continue
        allowed = ", ".join(f"{r.kind}/{r.name}" for r in policy.allowed_issuers) or "none"
        yield (
            ALLOWED_ISSUERS,
            f"spec.credentials[{i}].issuerRef",
            f"{issuer.kind}/{issuer.name} is not an allowed issuer (allowed: {allowed})",
        )
    vault = spec.vault
    if vault is not None:
        # The issuer whose Vault keeps the KV copies is an issuer the identity uses too.
        ref = IssuerRef(vault.issuer_kind, vault.issuer_name)
        if ref not in policy.allowed_issuers:
            allowed = ", ".join(f"{r.kind}/{r.name}" for r in policy.allowed_issuers) or "none"
            yield (
                ALLOWED_ISSUERS,
                "spec.vault.issuerRef",
                f"{ref.kind}/{ref.name} is not an allowed issuer (allowed: {allowed})",
            )


def _allow_cluster_rules(spec: Spec, policy: IdentityPolicy) -> Iterator[_Finding]:
    if spec.cluster_rules and not policy.allow_cluster_rules:
        yield (
            ALLOW_CLUSTER_RULES,
            "spec.permissions.clusterRules",
            "grants cluster-wide permissions, which the policy does not allow",
        )


#: Every rule of a policy, in the order their violations are reported.
_RULE_CHECKS: tuple[Callable[[Spec, IdentityPolicy], Iterator[_Finding]], ...] = (
    _require_owner,
    _max_ttl,
    _max_valid_for,
    _forbid_wildcards,
    _forbidden_rules,
    _allowed_cluster_roles,
    _allowed_issuers,
    _allow_cluster_rules,
)


def is_wildcard(value: str) -> bool:
    return value == WILDCARD or value.startswith("*/") or value.endswith("/*")


def resource_name(group: str, resource: str) -> str:
    return resource if not group else f"{resource}.{group}"


def _values_overlap(declared: str, forbidden: Sequence[str]) -> str | None:
    """The declared value when it meets one of ``forbidden`` ('*' on either side: anything)."""
    if declared == WILDCARD or WILDCARD in forbidden or declared in forbidden:
        return declared
    return None


def _resource_overlap(declared: str, forbidden: Sequence[str]) -> str | None:
    """As :func:`_values_overlap`, with RBAC's ``*/subresource`` form on either side."""
    if _values_overlap(declared, forbidden) is not None:
        return declared
    for f in forbidden:
        if "/" in declared and f.startswith("*/") and declared.split("/", 1)[1] == f[2:]:
            return declared
        if declared.startswith("*/") and "/" in f and f.split("/", 1)[1] == declared[2:]:
            return declared
    return None


def forbidden_overlap(rule: PolicyRule, forbidden: ForbiddenRule) -> tuple[str, str, str] | None:
    """The first (apiGroup, resource, verb) the rule grants that ``forbidden`` forbids."""
    if rule.non_resource_urls:
        return None
    for group in rule.api_groups:
        if _values_overlap(group, forbidden.api_groups) is None:
            continue
        for resource in rule.resources:
            if _resource_overlap(resource, forbidden.resources) is None:
                continue
            for verb in rule.verbs:
                if _values_overlap(verb, forbidden.verbs) is not None:
                    return (group, resource, verb)
    return None


def denials(violations: Iterable[Violation]) -> list[Violation]:
    return [v for v in violations if v.denies]


def warnings(violations: Iterable[Violation]) -> list[Violation]:
    return [v for v in violations if not v.denies]


def summary(violations: Sequence[Violation]) -> str:
    """One message for a condition or an admission response; every violation is named."""
    return "; ".join(v.message for v in violations)


def delegates_permissions(
    policies: Iterable[IdentityPolicy], namespace_labels: Mapping[str, str]
) -> bool:
    """Whether a policy selecting the namespace waives the holder-of-permissions check."""
    return any(p.delegate_permissions for p in selecting(policies, namespace_labels))

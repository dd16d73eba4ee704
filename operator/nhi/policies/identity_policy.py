"""IdentityPolicy checks: which guardrails an identity breaks, and what it would grant.

Pure: the same functions run in the admission webhook (before an identity is stored) and in
the reconciler (before anything is applied), so an identity written while the webhook was
down meets the same rules.

- :func:`evaluate` returns every :class:`Violation` of every policy that selects the
  identity's namespace (all of them apply; the strictest wins).
- :func:`grant_checks` and :func:`role_bind_checks` list what the identity would grant, as
  the access checks the webhook sends (SubjectAccessReview) to make sure whoever writes the
  identity holds it.

Messages name the policy, the rule and the field, e.g.
``IdentityPolicy "baseline" (maxTTL): spec.credentials[0].ttl 48h exceeds the maximum 24h
for ServiceAccountToken``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nhi.models.identity import MachineIdentity, PolicyRule
from nhi.models.policy import DENY, WARN, ForbiddenRule, IdentityPolicy

RBAC_GROUP = "rbac.authorization.k8s.io"
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


def _check(identity: MachineIdentity, policy: IdentityPolicy) -> Iterator[Violation]:
    spec = identity.spec

    def violation(rule: str, field: str, detail: str) -> Violation:
        return Violation(
            policy=policy.name,
            rule=rule,
            field=field,
            message=f'IdentityPolicy "{policy.name}" ({rule}): {field} {detail}',
            enforcement=policy.enforcement if policy.enforcement in (DENY, WARN) else DENY,
        )

    if policy.require_owner and not spec.owner.strip():
        yield violation(REQUIRE_OWNER, "spec.owner", "is required: name an accountable owner")

    for i, cred in enumerate(spec.credentials):
        limit = policy.max_ttl_for(cred.type)
        if limit is not None and cred.ttl > limit:
            yield violation(
                MAX_TTL,
                f"spec.credentials[{i}].ttl",
                f"{short_duration(cred.ttl)} exceeds the maximum {short_duration(limit)} "
                f"for {cred.type}",
            )

    if policy.max_valid_for is not None:
        limit = policy.max_valid_for
        if spec.valid_for is None:
            yield violation(
                MAX_VALID_FOR,
                "spec.lifetime.validFor",
                f"is required: only just-in-time identities are allowed, valid for at most "
                f"{short_duration(limit)}",
            )
        elif spec.valid_for > limit:
            yield violation(
                MAX_VALID_FOR,
                "spec.lifetime.validFor",
                f"{short_duration(spec.valid_for)} exceeds the maximum {short_duration(limit)}",
            )

    rule_sets = (("rules", spec.rules), ("clusterRules", spec.cluster_rules))
    if policy.forbid_wildcards:
        for key, rules in rule_sets:
            for i, rule in enumerate(rules):
                for attr, values in (
                    ("apiGroups", rule.api_groups),
                    ("resources", rule.resources),
                    ("verbs", rule.verbs),
                ):
                    wild = [v for v in values if _is_wildcard(v)]
                    if wild:
                        yield violation(
                            FORBID_WILDCARDS,
                            f"spec.permissions.{key}[{i}].{attr}",
                            f"contains the wildcard {wild[0]!r}; list the {attr} explicitly",
                        )

    for j, forbidden in enumerate(policy.forbidden_rules):
        for key, rules in rule_sets:
            for i, rule in enumerate(rules):
                hit = forbidden_overlap(rule, forbidden)
                if hit is not None:
                    group, resource, verb = hit
                    yield violation(
                        f"{FORBIDDEN_RULES}[{j}]",
                        f"spec.permissions.{key}[{i}]",
                        f"grants {verb} on {_resource_name(group, resource)}, which the policy "
                        f"forbids ({forbidden.describe()})",
                    )

    for i, ref in enumerate(spec.role_refs):
        if ref.kind == "ClusterRole" and ref.name not in policy.allowed_cluster_roles:
            allowed = ", ".join(policy.allowed_cluster_roles) or "none"
            yield violation(
                ALLOWED_CLUSTER_ROLES,
                f"spec.permissions.roleRefs[{i}]",
                f"binds ClusterRole {ref.name!r}, which is not allowed (allowed: {allowed})",
            )

    if policy.allowed_issuers is not None:
        for i, cred in enumerate(spec.credentials):
            issuer = cred.issuer_ref
            if issuer is None or issuer in policy.allowed_issuers:
                continue
            allowed = ", ".join(f"{r.kind}/{r.name}" for r in policy.allowed_issuers) or "none"
            yield violation(
                ALLOWED_ISSUERS,
                f"spec.credentials[{i}].issuerRef",
                f"{issuer.kind}/{issuer.name} is not an allowed issuer (allowed: {allowed})",
            )

    if spec.cluster_rules and not policy.allow_cluster_rules:
        yield violation(
            ALLOW_CLUSTER_RULES,
            "spec.permissions.clusterRules",
            "grants cluster-wide permissions, which the policy does not allow",
        )


def _is_wildcard(value: str) -> bool:
    return value == WILDCARD or value.startswith("*/") or value.endswith("/*")


def _resource_name(group: str, resource: str) -> str:
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


# ------------------------------------------------------------------------------ access


@dataclass(frozen=True)
class AccessCheck:
    """One permission the identity would receive, as a SubjectAccessReview asks about it.

    ``namespace`` empty means cluster-wide; ``path`` set means a non-resource URL.
    """

    field: str
    verb: str
    group: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""
    namespace: str = ""
    path: str = ""

    @property
    def attributes(self) -> tuple[str, str, str, str, str, str, str]:
        return (
            self.verb,
            self.group,
            self.resource,
            self.subresource,
            self.name,
            self.namespace,
            self.path,
        )

    def review_spec(self) -> dict[str, Any]:
        """The ``resourceAttributes`` / ``nonResourceAttributes`` of a SubjectAccessReview."""
        if self.path:
            return {"nonResourceAttributes": {"path": self.path, "verb": self.verb}}
        attrs: dict[str, Any] = {"verb": self.verb, "group": self.group, "resource": self.resource}
        if self.subresource:
            attrs["subresource"] = self.subresource
        if self.name:
            attrs["name"] = self.name
        if self.namespace:
            attrs["namespace"] = self.namespace
        return {"resourceAttributes": attrs}

    def describe(self) -> str:
        if self.path:
            return f"{self.verb} {self.path}"
        what = self.resource + (f"/{self.subresource}" if self.subresource else "")
        if self.group:
            what += f".{self.group}"
        if self.name:
            what += f" named {self.name!r}"
        where = f"in namespace {self.namespace}" if self.namespace else "cluster-wide"
        return f"{self.verb} {what} {where}"


def rule_checks(
    field: str,
    api_groups: Sequence[str],
    resources: Sequence[str],
    verbs: Sequence[str],
    namespace: str,
    resource_names: Sequence[str] = (),
    non_resource_urls: Sequence[str] = (),
) -> list[AccessCheck]:
    """Every verb x group x resource x name combination of one RBAC rule."""
    out: list[AccessCheck] = []
    if non_resource_urls:
        if namespace:
            return out  # non-resource rules mean nothing in a namespace (a RoleBinding)
        for url in non_resource_urls:
            out.extend(AccessCheck(field=field, verb=v, path=url) for v in verbs)
        return out
    for group in api_groups:
        for resource in resources:
            res, _, sub = resource.partition("/")
            for verb in verbs:
                for name in resource_names or ("",):
                    out.append(
                        AccessCheck(
                            field=field,
                            verb=verb,
                            group=group,
                            resource=res,
                            subresource=sub,
                            name=name,
                            namespace=namespace,
                        )
                    )
    return out


def raw_rule_checks(field: str, rule: Mapping[str, Any], namespace: str) -> list[AccessCheck]:
    """:func:`rule_checks` for a rule as the API server returns it (a Role's or ClusterRole's)."""
    return rule_checks(
        field,
        [str(g) for g in rule.get("apiGroups") or ()],
        [str(r) for r in rule.get("resources") or ()],
        [str(v) for v in rule.get("verbs") or ()],
        namespace,
        [str(n) for n in rule.get("resourceNames") or ()],
        [str(u) for u in rule.get("nonResourceURLs") or ()],
    )


def _dedupe(checks: Iterable[AccessCheck]) -> list[AccessCheck]:
    seen: set[tuple[str, ...]] = set()
    out = []
    for c in checks:
        if c.attributes not in seen:
            seen.add(c.attributes)
            out.append(c)
    return out


def grant_checks(identity: MachineIdentity) -> list[AccessCheck]:
    """What whoever writes the identity must hold: every combination of its rules and
    cluster rules (``roleRefs`` are checked with :func:`role_bind_checks`).

    The rule Kubernetes RBAC applies to people writing Roles directly: you may grant only
    what you hold. Wildcards are checked as written: granting ``*`` needs a ``*`` grant.
    """
    spec = identity.spec
    ns = identity.namespace
    checks: list[AccessCheck] = []
    for i, rule in enumerate(spec.rules):
        checks += rule_checks(
            f"spec.permissions.rules[{i}]",
            rule.api_groups,
            rule.resources,
            rule.verbs,
            ns,
            rule.resource_names,
        )
    for i, rule in enumerate(spec.cluster_rules):
        checks += rule_checks(
            f"spec.permissions.clusterRules[{i}]",
            rule.api_groups,
            rule.resources,
            rule.verbs,
            "",
            rule.resource_names,
            rule.non_resource_urls,
        )
    return _dedupe(checks)


def role_bind_checks(identity: MachineIdentity) -> list[AccessCheck]:
    """``bind`` on each role in roleRefs (bound by a RoleBinding in the identity's namespace).

    As RBAC does for a RoleBinding, a caller without ``bind`` may still pass by holding every
    rule of the role (see :func:`raw_rule_checks`).
    """
    return [
        AccessCheck(
            field=f"spec.permissions.roleRefs[{i}]",
            verb="bind",
            group=RBAC_GROUP,
            resource="roles" if ref.kind == "Role" else "clusterroles",
            name=ref.name,
            namespace=identity.namespace,
        )
        for i, ref in enumerate(identity.spec.role_refs)
    ]


ADOPT_FIELD = "metadata.annotations[nhi.dev/adopt]"
ROLLOUT_FIELD = "spec.workloads.rolloutOnRotation"
WORKLOAD_RESOURCES = ("deployments", "statefulsets", "daemonsets")


def adoption_checks(identity: MachineIdentity) -> list[AccessCheck]:
    """Adopting a ServiceAccount relabels it, changes its automount setting, mints tokens for
    it and makes it the identity's: whoever asks for it must be allowed to update and delete
    that ServiceAccount themselves."""
    return [
        AccessCheck(
            field=ADOPT_FIELD,
            verb=verb,
            resource="serviceaccounts",
            name=identity.spec.service_account,
            namespace=identity.namespace,
        )
        for verb in ("update", "delete")
    ]


def rollout_checks(identity: MachineIdentity) -> list[AccessCheck]:
    """A rollout after rotation patches the selected workloads: whoever asks for it must be
    allowed to patch them."""
    if not identity.spec.rollout_on_rotation or identity.spec.selector.empty:
        return []
    return [
        AccessCheck(
            field=ROLLOUT_FIELD,
            verb="patch",
            group="apps",
            resource=resource,
            namespace=identity.namespace,
        )
        for resource in WORKLOAD_RESOURCES
    ]


def adopt_requested(new: Mapping[str, Any] | None) -> bool:
    annotations = ((new or {}).get("metadata") or {}).get("annotations") or {}
    return annotations.get("nhi.dev/adopt") == "true"


def adopt_added(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> bool:
    """Whether a write asks for an adoption the identity did not ask for before."""
    return adopt_requested(new) and (old is None or not adopt_requested(old))


def spec_changed(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> bool:
    """Whether an update touches ``spec`` (metadata-only writes, like finalizers, do not)."""
    if old is None or new is None:
        return True
    return (old.get("spec") or {}) != (new.get("spec") or {})

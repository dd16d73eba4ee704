"""The IdentityPolicy model (cluster-scoped guardrails for self-service identities).

Defaults follow the CRD (``enforcement: Deny``, ``requireOwner: true``,
``forbidWildcards: true``, ``allowClusterRules: false``, ``delegatePermissions: false``), so a
body written before a default existed means what the schema says it means. A malformed field
raises :class:`~nhi.models.fields.SpecError` naming it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nhi.models.fields import SpecError, as_duration, as_list, as_object
from nhi.models.identity import CREDENTIAL_TYPES, IssuerRef
from nhi.models.selector import LabelSelector, parse_selector

KIND = "IdentityPolicy"
PLURAL = "identitypolicies"
ENFORCEMENTS = ("Deny", "Warn")
DENY = "Deny"
WARN = "Warn"


@dataclass(frozen=True)
class ForbiddenRule:
    """A grant no covered identity may hold; ``*`` matches anything."""

    api_groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]

    def describe(self) -> str:
        groups = ",".join(g or '""' for g in self.api_groups)
        return f"{'/'.join(self.verbs)} on {','.join(self.resources)} (apiGroups {groups})"


@dataclass(frozen=True)
class AutoApprove:
    """``grants.autoApprove``: AccessGrants approved without a person, within these bounds."""

    max_duration: dt.timedelta
    verbs: tuple[str, ...]


@dataclass(frozen=True)
class GrantLimits:
    """``grants``: what an AccessGrant in a selected namespace may ask for."""

    max_duration: dt.timedelta | None = None
    auto_approve: AutoApprove | None = None


@dataclass(frozen=True)
class IdentityPolicy:
    name: str
    namespace_selector: LabelSelector
    select_all: bool
    enforcement: str = DENY
    allowed_cluster_roles: tuple[str, ...] = ()
    allow_cluster_rules: bool = False
    require_owner: bool = True
    #: (credential type, longest ttl) pairs; a type that is absent is not bounded.
    max_ttl: tuple[tuple[str, dt.timedelta], ...] = ()
    max_valid_for: dt.timedelta | None = None
    forbid_wildcards: bool = True
    forbidden_rules: tuple[ForbiddenRule, ...] = ()
    #: None: any issuer (the field is omitted); an empty tuple: no issuer at all.
    allowed_issuers: tuple[IssuerRef, ...] | None = None
    #: Named Vault policies identities of the selected namespaces may add to their role.
    allowed_vault_policies: tuple[str, ...] = ()
    delegate_permissions: bool = False
    #: ``adoption.allowed``: identities may adopt an existing ServiceAccount (nhi.dev/adopt).
    allow_adoption: bool = True
    #: ``adoption.allowDefaultServiceAccount``: ... even the namespace's ``default`` one.
    allow_default_adoption: bool = False
    grants: GrantLimits = GrantLimits()
    #: ``unusedAfter``: how long a declared rule may go unused before it is reported.
    unused_after: dt.timedelta | None = None
    uid: str = ""
    generation: int = 0

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> IdentityPolicy:
        meta = body.get("metadata") or {}
        spec = as_object(body.get("spec"), "spec")
        selector = parse_selector(spec.get("namespaceSelector"), "spec.namespaceSelector")
        enforcement = spec.get("enforcement", DENY)
        if enforcement not in ENFORCEMENTS:
            raise SpecError("spec.enforcement", "must be Deny or Warn")
        max_ttl = _max_ttl(as_object(spec.get("maxTTL"), "spec.maxTTL"))
        max_valid_for = (
            as_duration(spec["maxValidFor"], "spec.maxValidFor")
            if spec.get("maxValidFor") is not None
            else None
        )
        forbidden = _forbidden_rules(spec.get("forbiddenRules"))
        issuers = _allowed_issuers(spec.get("allowedIssuers"))
        adoption = as_object(spec.get("adoption"), "spec.adoption")
        return cls(
            name=str(meta.get("name", "")),
            namespace_selector=selector,
            # An absent or empty namespaceSelector selects every namespace.
            select_all=selector.empty,
            enforcement=str(enforcement),
            allowed_cluster_roles=tuple(
                str(r) for r in as_list(spec.get("allowedClusterRoles"), "spec.allowedClusterRoles")
            ),
            allow_cluster_rules=bool(spec.get("allowClusterRules", False)),
            require_owner=bool(spec.get("requireOwner", True)),
            max_ttl=max_ttl,
            max_valid_for=max_valid_for,
            forbid_wildcards=bool(spec.get("forbidWildcards", True)),
            forbidden_rules=forbidden,
            allowed_issuers=issuers,
            allowed_vault_policies=tuple(
                str(n)
                for n in as_list(spec.get("allowedVaultPolicies"), "spec.allowedVaultPolicies")
            ),
            delegate_permissions=bool(spec.get("delegatePermissions", False)),
            allow_adoption=bool(adoption.get("allowed", True)),
            allow_default_adoption=bool(adoption.get("allowDefaultServiceAccount", False)),
            grants=_grants(as_object(spec.get("grants"), "spec.grants")),
            unused_after=(
                as_duration(spec["unusedAfter"], "spec.unusedAfter")
                if spec.get("unusedAfter") is not None
                else None
            ),
            uid=str(meta.get("uid", "")),
            generation=int(meta.get("generation") or 0),
        )

    def selects(self, namespace_labels: Mapping[str, str]) -> bool:
        return self.select_all or self.namespace_selector.matches(namespace_labels)

    def max_ttl_for(self, credential_type: str) -> dt.timedelta | None:
        for ctype, ttl in self.max_ttl:
            if ctype == credential_type:
                return ttl
        return None


def _max_ttl(raw_ttl: Mapping[str, Any]) -> tuple[tuple[str, dt.timedelta], ...]:
    """``spec.maxTTL``: (credential type, longest ttl) of each type it bounds."""
    max_ttl = []
    for ctype in CREDENTIAL_TYPES:
        if raw_ttl.get(ctype) is not None:
            max_ttl.append((ctype, as_duration(raw_ttl[ctype], f"spec.maxTTL.{ctype}")))
    return tuple(max_ttl)


def _forbidden_rules(raw_rules: Any) -> tuple[ForbiddenRule, ...]:
    forbidden = []
    for i, raw in enumerate(as_list(raw_rules, "spec.forbiddenRules")):
        path = f"spec.forbiddenRules[{i}]"
        r = as_object(raw, path)
        forbidden.append(
            ForbiddenRule(
                api_groups=tuple(str(g) for g in as_list(r.get("apiGroups"), f"{path}.apiGroups")),
                resources=tuple(str(x) for x in as_list(r.get("resources"), f"{path}.resources")),
                verbs=tuple(str(v) for v in as_list(r.get("verbs"), f"{path}.verbs")),
            )
        )
    return tuple(forbidden)


def _allowed_issuers(raw_issuers: Any) -> tuple[IssuerRef, ...] | None:
    """``spec.allowedIssuers``: None when omitted (any issuer), else the listed ones."""
    if raw_issuers is None:
        return None
    refs = []
    for i, raw in enumerate(as_list(raw_issuers, "spec.allowedIssuers")):
        ref = as_object(raw, f"spec.allowedIssuers[{i}]")
        refs.append(
            IssuerRef(
                kind=str(ref.get("kind", "ClusterIdentityIssuer")),
                name=str(ref.get("name", "")),
            )
        )
    return tuple(refs)


def _grants(raw: Mapping[str, Any]) -> GrantLimits:
    """``spec.grants``: the longest AccessGrant, and which ones are approved automatically."""
    max_duration = (
        as_duration(raw["maxDuration"], "spec.grants.maxDuration")
        if raw.get("maxDuration") is not None
        else None
    )
    auto = as_object(raw.get("autoApprove"), "spec.grants.autoApprove")
    auto_approve = None
    if auto:
        verbs = tuple(str(v) for v in as_list(auto.get("verbs"), "spec.grants.autoApprove.verbs"))
        auto_approve = AutoApprove(
            max_duration=as_duration(
                auto.get("maxDuration", "1h"), "spec.grants.autoApprove.maxDuration"
            ),
            verbs=verbs or ("get", "list", "watch"),
        )
    return GrantLimits(max_duration=max_duration, auto_approve=auto_approve)

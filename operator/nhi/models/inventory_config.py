"""The inventory's settings: which rules run, their bounds, the exceptions, the attribution
keys. Parsed from YAML or JSON (``--inventory-config``, the chart's ``discovery.config``);
:class:`~nhi.models.fields.SpecError` names a bad field.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nhi.models.fields import SpecError, as_duration, as_list, as_object, as_strings

DAY = dt.timedelta(days=1)

#: Every rule the inventory knows, by name (docs/inventory.md explains each).
RULES = (
    "unused-service-account",
    "binding-to-missing-service-account",
    "orphaned-token-secret",
    "legacy-token-secret",
    "automounted-token-without-permissions",
    "cluster-admin-binding",
    "wildcard-permission",
    "cluster-wide-secret-read",
    "privilege-escalation-verb",
    "sensitive-subresource",
    "unused-permissions",
    "long-lived-certificate",
    "old-token-secret",
    "old-secret",
    "stale-static-secret",
    "malformed-tls-secret",
    "cross-namespace-binding",
    "cross-environment-binding",
    "shared-service-account",
    "default-service-account-used",
    "unknown-owner",
    "binding-to-missing-role",
)


@dataclass(frozen=True)
class Exemption:
    """Findings not reported: of ``rules`` (all when empty), on objects in a namespace
    matching one of ``namespaces``, named like one of ``names``, carrying every label of
    ``labels``. An empty matcher matches everything."""

    rules: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)

    def covers(self, rule: str, namespace: str, name: str, labels: Mapping[str, str]) -> bool:
        if self.rules and rule not in self.rules:
            return False
        if self.namespaces and not any(fnmatch.fnmatchcase(namespace, p) for p in self.namespaces):
            return False
        if self.names and not any(fnmatch.fnmatchcase(name, p) for p in self.names):
            return False
        return all(labels.get(k) == v for k, v in self.labels.items())


@dataclass(frozen=True)
class InventoryConfig:
    #: Rules not run (names of RULES).
    disabled: frozenset[str] = frozenset()
    #: A ServiceAccount no workload has used for this long is unused.
    unused_after: dt.timedelta = 30 * DAY
    #: A legacy token used this recently is a high-severity finding (else medium).
    recent_use: dt.timedelta = 30 * DAY
    #: Certificates valid for longer than this are long-lived.
    max_certificate_validity: dt.timedelta = 397 * DAY
    #: Credential Secrets older than this are long-lived.
    max_secret_age: dt.timedelta = 90 * DAY
    #: Label or annotation keys naming an owner, looked up on the ServiceAccount, its
    #: workloads, then its namespace.
    owner_keys: tuple[str, ...] = ("owner", "team", "nhi.dev/owner")
    #: The namespace label naming an environment (prod, staging...).
    environment_label: str = "environment"
    #: Namespaces whose ServiceAccounts are the platform's own (globs).
    system_namespaces: tuple[str, ...] = ("kube-system", "kube-public", "kube-node-lease")
    #: More ServiceAccounts that are the platform's own, as ``namespace/name`` globs.
    system_service_accounts: tuple[str, ...] = ()
    #: Report findings on system identities too.
    include_system: bool = False
    exemptions: tuple[Exemption, ...] = ()

    def enabled(self, rule: str) -> bool:
        return rule not in self.disabled

    def exempt(self, rule: str, namespace: str, name: str, labels: Mapping[str, str]) -> bool:
        return any(e.covers(rule, namespace, name, labels) for e in self.exemptions)

    def is_system(self, namespace: str, name: str) -> bool:
        if globs(self.system_namespaces)(namespace):
            return True
        return bool(self.system_service_accounts) and globs(self.system_service_accounts)(
            f"{namespace}/{name}"
        )


@functools.lru_cache(maxsize=64)
def globs(patterns: tuple[str, ...]) -> Callable[[str], bool]:
    """One compiled matcher for a set of globs (fnmatchcase semantics)."""
    if not patterns:
        return lambda _: False
    rx = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))
    return lambda text: rx.match(text) is not None


def _rules(value: Any, path: str) -> tuple[str, ...]:
    names = as_strings(value, path)
    for i, name in enumerate(names):
        if name not in RULES:
            raise SpecError(f"{path}[{i}]", f"must be one of the rules: {', '.join(RULES)}")
    return names


def _exemption(raw: Any, path: str) -> Exemption:
    obj = as_object(raw, path)
    labels = as_object(obj.get("labels"), f"{path}.labels")
    for k, v in labels.items():
        if not isinstance(v, str):
            raise SpecError(f"{path}.labels.{k}", "must be a string")
    return Exemption(
        rules=_rules(obj.get("rules"), f"{path}.rules"),
        namespaces=as_strings(obj.get("namespaces"), f"{path}.namespaces"),
        names=as_strings(obj.get("names"), f"{path}.names"),
        labels={str(k): str(v) for k, v in labels.items()},
    )


def parse_config(raw: Any) -> InventoryConfig:
    """The settings from a mapping (the parsed YAML); missing fields keep their defaults."""
    obj = as_object(raw, "inventory")
    base = InventoryConfig()
    bounds = as_object(obj.get("bounds"), "bounds")

    def bound(key: str, default: dt.timedelta) -> dt.timedelta:
        return as_duration(bounds[key], f"bounds.{key}") if key in bounds else default

    env = obj.get("environmentLabel", base.environment_label)
    if not isinstance(env, str):
        raise SpecError("environmentLabel", "must be a string")
    include = obj.get("includeSystem", base.include_system)
    if not isinstance(include, bool):
        raise SpecError("includeSystem", "must be true or false")
    return InventoryConfig(
        disabled=frozenset(_rules(obj.get("disabledRules"), "disabledRules")),
        unused_after=bound("unusedAfter", base.unused_after),
        recent_use=bound("recentTokenUse", base.recent_use),
        max_certificate_validity=bound("maxCertificateValidity", base.max_certificate_validity),
        max_secret_age=bound("maxSecretAge", base.max_secret_age),
        owner_keys=as_strings(obj["ownerKeys"], "ownerKeys")
        if "ownerKeys" in obj
        else base.owner_keys,
        environment_label=env,
        system_namespaces=as_strings(obj["systemNamespaces"], "systemNamespaces")
        if "systemNamespaces" in obj
        else base.system_namespaces,
        system_service_accounts=as_strings(
            obj.get("systemServiceAccounts"), "systemServiceAccounts"
        ),
        include_system=include,
        exemptions=tuple(
            _exemption(e, f"exemptions[{i}]")
            for i, e in enumerate(as_list(obj.get("exemptions"), "exemptions"))
        ),
    )

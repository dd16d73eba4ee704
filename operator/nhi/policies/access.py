"""What an identity would grant, as the access checks the admission webhook sends
(SubjectAccessReview) to make sure whoever writes the identity holds it.

Pure: :func:`grant_checks`, :func:`role_bind_checks`, :func:`adoption_checks` and
:func:`rollout_checks` turn an identity into :class:`AccessCheck` values; nothing here talks
to the API server.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nhi.models.identity import MachineIdentity, RoleRef

RBAC_GROUP = "rbac.authorization.k8s.io"


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
    return bind_checks("spec.permissions.roleRefs", identity.spec.role_refs, identity.namespace)


def bind_checks(path: str, role_refs: Sequence[RoleRef], namespace: str) -> list[AccessCheck]:
    """``bind`` on each Role or ClusterRole of ``role_refs``, bound in ``namespace``."""
    return [
        AccessCheck(
            field=f"{path}[{i}]",
            verb="bind",
            group=RBAC_GROUP,
            resource="roles" if ref.kind == "Role" else "clusterroles",
            name=ref.name,
            namespace=namespace,
        )
        for i, ref in enumerate(role_refs)
    ]


def missing_by_field(
    checks: Sequence[AccessCheck], held: Sequence[bool]
) -> dict[str, list[AccessCheck]]:
    """The checks that failed (``held`` False), by the field that asked for them."""
    missing: dict[str, list[AccessCheck]] = {}
    for check, ok in zip(checks, held, strict=True):
        if not ok:
            missing.setdefault(check.field, []).append(check)
    return missing


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

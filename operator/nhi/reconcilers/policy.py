"""IdentityPolicy enforcement with I/O: admission reviews.

:class:`AdmissionReviewer` decides an admission request for a MachineIdentity: the policy
checks of :mod:`nhi.policies.identity_policy` (Deny refuses, Warn admits with a warning) and
the holder-of-permissions check: whoever writes an identity must hold every permission it
grants (SubjectAccessReview with the requester's user, groups, uid and extra), unless a
policy selecting the namespace sets ``delegatePermissions: true``. The policies' status is
:mod:`nhi.reconcilers.policy_status`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nhi.builders.rbac import desired_keys, field_for
from nhi.k8s.client import Api, path_for
from nhi.models.grant import AccessGrant
from nhi.models.identity import MachineIdentity, SpecError
from nhi.models.meta import ADOPT_ANNOTATION
from nhi.models.policy import IdentityPolicy
from nhi.policies.access import missing_by_field
from nhi.policies.cluster import check_cluster_permissions
from nhi.policies.grants import requester_checks
from nhi.policies.grants import violations as grant_violations
from nhi.policies.identity_policy import (
    AccessCheck,
    adopt_added,
    adoption_checks,
    check_adoption,
    delegates_permissions,
    denials,
    evaluate,
    grant_checks,
    raw_rule_checks,
    role_bind_checks,
    rollout_checks,
    spec_changed,
    warnings,
)
from nhi.policies.ownership import Claim, describe_owner, owned_by

log = logging.getLogger("nhi.reconcilers.policy")

#: SubjectAccessReviews sent at once for one admission request.
REVIEW_CONCURRENCY = 32
#: More combinations than this (verbs x resources x names...) are refused, not reviewed.
MAX_ACCESS_CHECKS = 1000
#: How many missing permissions a denial lists before "and N more".
LISTED = 5


# ------------------------------------------------------------------------------ admission


@dataclass
class AdmissionResult:
    denied: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def allowed(self) -> bool:
        return not self.denied

    @property
    def message(self) -> str:
        return "; ".join(self.denied)


@dataclass(frozen=True)
class Requester:
    """Who sent the request, from the AdmissionReview's userInfo."""

    username: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def from_userinfo(cls, info: Mapping[str, Any]) -> Requester:
        return cls(
            username=str(info.get("username") or ""),
            groups=tuple(str(g) for g in info.get("groups") or ()),
            uid=str(info.get("uid") or ""),
            extra={
                str(k): tuple(str(x) for x in v or ()) for k, v in (info.get("extra") or {}).items()
            },
        )

    def review_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"user": self.username}
        if self.groups:
            spec["groups"] = list(self.groups)
        if self.uid:
            spec["uid"] = self.uid
        if self.extra:
            spec["extra"] = {k: list(v) for k, v in self.extra.items()}
        return spec


def grant_terms_changed(
    operation: str, new: Mapping[str, Any], old: Mapping[str, Any] | None
) -> bool:
    """A create, or an update of what an AccessGrant asks for (not its decision or its end)."""
    if operation != "UPDATE" or old is None:
        return True
    if (new.get("metadata") or {}).get("deletionTimestamp"):
        return False
    ignored = ("approval", "revoked", "requester", "requesterGroups")

    def terms(body: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in (body.get("spec") or {}).items() if k not in ignored}

    return terms(new) != terms(old)


def needs_review(
    operation: str, new: Mapping[str, Any] | None, old: Mapping[str, Any] | None
) -> bool:
    """Whether a request can change what an identity grants.

    Updates that leave ``spec`` alone (finalizers, annotations, labels, the start of a
    deletion) are never refused: the operator's own metadata writes must always go through,
    or an identity that breaks a newer policy could never be deleted.
    """
    if new is None:
        return False
    if operation == "UPDATE":
        meta = new.get("metadata") or {}
        return not meta.get("deletionTimestamp") and (
            spec_changed(old, new) or adopt_added(old, new)
        )
    return True


class AdmissionReviewer:
    def __init__(
        self,
        api: Api,
        *,
        concurrency: int = REVIEW_CONCURRENCY,
        max_checks: int = MAX_ACCESS_CHECKS,
    ) -> None:
        self.api = api
        self.concurrency = concurrency
        self.max_checks = max_checks

    async def policies(self) -> list[IdentityPolicy]:
        """The policies as the API server has them now.

        Read live, not from the watch cache: an admission decision must see a policy created
        a moment ago, and a standby replica (kopf peering) does not keep its caches current.
        """
        out = []
        for body in await self.api.list("IdentityPolicy"):
            try:
                out.append(IdentityPolicy.from_body(body))
            except SpecError as err:
                log.warning(
                    "ignoring an invalid IdentityPolicy",
                    extra={"policy": (body.get("metadata") or {}).get("name"), "error": str(err)},
                )
        return out

    async def namespace_labels(self, namespace: str) -> dict[str, str]:
        # A list with a field selector needs only the list verb the operator holds.
        page = await self.api.request(
            "GET",
            path_for("Namespace"),
            params={"fieldSelector": f"metadata.name={namespace}"},
            kind="Namespace",
            name=namespace,
        )
        items = page.get("items") or []
        labels = ((items[0].get("metadata") or {}).get("labels") or {}) if items else {}
        return {str(k): str(v) for k, v in labels.items()}

    async def review(
        self,
        *,
        operation: str,
        new: Mapping[str, Any] | None,
        old: Mapping[str, Any] | None,
        userinfo: Mapping[str, Any],
        policies: Sequence[IdentityPolicy],
        namespace_labels: Mapping[str, str],
    ) -> AdmissionResult:
        result = AdmissionResult()
        if new is None or not needs_review(operation, new, old):
            return result
        try:
            identity = MachineIdentity.from_body(new)
        except SpecError as err:
            result.denied.append(str(err))
            return result

        violations = evaluate(identity, policies, namespace_labels)
        result.denied += [v.message for v in denials(violations)]
        result.warnings += [v.message for v in warnings(violations)]
        verdict = check_cluster_permissions(identity.spec, policies, namespace_labels)
        if not verdict.allowed and not any(
            verdict.message.startswith(v.field) for v in denials(violations)
        ):
            result.denied.append(verdict.message)

        requester = Requester.from_userinfo(userinfo)
        if not delegates_permissions(policies, namespace_labels):
            result.denied += await self.missing_permissions(identity, requester)
        if adopt_added(old, new):
            why = check_adoption(identity.spec.service_account, policies, namespace_labels)
            if why is not None:
                result.denied.append(why)
        authority = (adoption_checks(identity) if adopt_added(old, new) else []) + (
            rollout_checks(identity) if spec_changed(old, new) else []
        )
        result.denied += await self.missing_authority(requester, authority)
        result.denied += await self.claims(identity, operation)
        return result

    async def review_grant(
        self,
        *,
        operation: str,
        new: Mapping[str, Any] | None,
        old: Mapping[str, Any] | None,
        userinfo: Mapping[str, Any],
        policies: Sequence[IdentityPolicy],
        namespace_labels: Mapping[str, str],
    ) -> AdmissionResult:
        """An AccessGrant's request: its identity exists, the policies allow its terms, and
        whoever asks holds what it gives. Decisions and revocations are not reviewed here (the
        admission policies check who decides)."""
        result = AdmissionResult()
        if new is None or not grant_terms_changed(operation, new, old):
            return result
        try:
            grant = AccessGrant.from_body(new)
        except SpecError as err:
            result.denied.append(str(err))
            return result
        if await self.api.get("MachineIdentity", grant.namespace, grant.identity) is None:
            result.denied.append(
                f"spec.identityRef: MachineIdentity {grant.namespace}/{grant.identity} does "
                "not exist"
            )
        result.denied += grant_violations(grant, policies, namespace_labels)
        requester = Requester.from_userinfo(userinfo)
        checks = requester_checks(grant)
        if len(checks) > self.max_checks:
            result.denied.append(f"spec.rules: more than {self.max_checks} permissions to check")
            return result
        held = await self._allowed_all(requester, checks, asyncio.Semaphore(self.concurrency))
        missing = missing_by_field(checks, held)
        result.denied += [self._escalation(requester, f, m) for f, m in missing.items()]
        return result

    async def missing_authority(
        self, requester: Requester, checks: Sequence[AccessCheck]
    ) -> list[str]:
        """A message per field asking the operator to act on objects the requester may not
        change themselves (adopting a ServiceAccount, restarting workloads)."""
        if not checks:
            return []
        held = await self._allowed_all(requester, checks, asyncio.Semaphore(self.concurrency))
        missing = missing_by_field(checks, held)
        who = requester.username or "the requester"
        return [
            f"{field}: {who} may not {', '.join(c.describe() for c in m)}, so the operator "
            "will not do it for them"
            for field, m in missing.items()
        ]

    async def claims(self, identity: MachineIdentity, operation: str) -> list[str]:
        """Objects the identity would write that are someone else's: a Secret another
        identity of the namespace declares, or any existing object it does not own."""
        out: list[str] = []
        mine = {c.secret_name: i for i, c in enumerate(identity.spec.credentials)}
        for body in await self.api.list("MachineIdentity", identity.namespace):
            meta = body.get("metadata") or {}
            if meta.get("name") == identity.name:
                continue
            try:
                other = MachineIdentity.from_body(body)
            except SpecError:
                continue
            for cred in other.spec.credentials:
                if cred.secret_name in mine:
                    out.append(
                        f"spec.credentials[{mine[cred.secret_name]}].secretName: Secret "
                        f"{cred.secret_name!r} is already declared by MachineIdentity "
                        f"{other.name!r} (credential {cred.name!r})"
                    )
        # On a create nothing can be the identity's yet, whatever its uid says.
        uid = identity.uid if operation == "UPDATE" else ""
        adopt = identity.annotations.get(ADOPT_ANNOTATION) == "true"
        keys = [k for k in desired_keys(identity) if not (adopt and k.kind == "ServiceAccount")]
        found = await asyncio.gather(
            *(self.api.get_metadata(k.kind, k.namespace or None, k.name) for k in keys)
        )
        for key, obj in zip(keys, found, strict=True):
            if obj is None or owned_by(obj, uid, namespace=identity.namespace, name=identity.name):
                continue
            claim = Claim(
                field_for(identity, key), key.kind, key.namespace, key.name, describe_owner(obj)
            )
            out.append(claim.message)
        return out

    async def missing_permissions(
        self, identity: MachineIdentity, requester: Requester
    ) -> list[str]:
        """A message per field the requester may not grant; empty when they hold it all."""
        if not requester.username and not requester.groups:
            return ["the request names no user, so the permissions it grants cannot be checked"]
        checks = grant_checks(identity)
        binds = role_bind_checks(identity)
        if len(checks) + len(binds) > self.max_checks:
            return [
                f"spec.permissions: {len(checks) + len(binds)} permission combinations are more "
                f"than the {self.max_checks} the webhook verifies; narrow the rules"
            ]
        sem = asyncio.Semaphore(self.concurrency)
        held = await self._allowed_all(requester, [*checks, *binds], sem)
        missing = missing_by_field(checks, held[: len(checks)])
        out = [self._escalation(requester, f, m) for f, m in missing.items()]
        for check, ok in zip(binds, held[len(checks) :], strict=True):
            if ok:
                continue
            gap = await self._role_gap(identity, requester, check, sem)
            if gap is not None:
                out.append(gap)
        return out

    def _escalation(self, requester: Requester, field: str, missing: list[AccessCheck]) -> str:
        listed = ", ".join(c.describe() for c in missing[:LISTED])
        more = f" and {len(missing) - LISTED} more" if len(missing) > LISTED else ""
        return (
            f"{field}: {requester.username or 'the requester'} may not grant {listed}{more}: "
            "they do not hold it themselves (privilege escalation); ask someone who does to "
            "write the identity, or a cluster administrator for an IdentityPolicy with "
            "delegatePermissions: true"
        )

    async def _role_gap(
        self,
        identity: MachineIdentity,
        requester: Requester,
        bind: AccessCheck,
        sem: asyncio.Semaphore,
    ) -> str | None:
        """Without ``bind`` on a role, the requester must hold every rule in it (as RBAC)."""
        kind = "Role" if bind.resource == "roles" else "ClusterRole"
        who = requester.username or "the requester"
        role = await self._get_role(kind, identity.namespace, bind.name)
        if role is None:
            return (
                f"{bind.field}: {who} may not bind {kind} {bind.name!r}: it does not exist and "
                "they have no bind permission on it"
            )
        checks: list[AccessCheck] = []
        for rule in role.get("rules") or ():
            checks += raw_rule_checks(bind.field, rule, identity.namespace)
        if len(checks) > self.max_checks:
            missing_desc = f"more than {self.max_checks} permissions to compare"
        else:
            held = await self._allowed_all(requester, checks, sem)
            missing = [c for c, ok in zip(checks, held, strict=True) if not ok]
            if not missing:
                return None
            missing_desc = ", ".join(c.describe() for c in missing[:LISTED])
            if len(missing) > LISTED:
                missing_desc += f" and {len(missing) - LISTED} more"
        return (
            f"{bind.field}: {who} may not bind {kind} {bind.name!r}: they have neither the bind "
            f"verb on it nor every permission it grants (missing: {missing_desc}) "
            "(privilege escalation)"
        )

    async def _get_role(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        # A list with a field selector needs only the list verb the operator already holds.
        page = await self.api.request(
            "GET",
            path_for(kind, namespace if kind == "Role" else None),
            params={"fieldSelector": f"metadata.name={name}"},
            kind=kind,
            name=name,
        )
        items = page.get("items") or []
        return dict(items[0]) if items else None

    async def _allowed_all(
        self, requester: Requester, checks: Sequence[AccessCheck], sem: asyncio.Semaphore
    ) -> list[bool]:
        async def one(check: AccessCheck) -> bool:
            async with sem:
                return await self.allowed(requester, check)

        return list(await asyncio.gather(*(one(c) for c in checks)))

    async def allowed(self, requester: Requester, check: AccessCheck) -> bool:
        """One SubjectAccessReview for the requester (all of their userInfo)."""
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {**requester.review_spec(), **check.review_spec()},
        }
        result = await self.api.request(
            "POST", path_for("SubjectAccessReview"), body=body, kind="SubjectAccessReview"
        )
        return bool((result.get("status") or {}).get("allowed"))

"""What the usage says of each MachineIdentity: its ``status.usage`` (the declared rules'
uses, those unused, the credentials' uses, a right-sized suggestion) and its
UnusedPermissions condition, written where they changed. Run by
:class:`~nhi.reconcilers.usage.UsageStore` once per pass; the verdicts are in
:mod:`nhi.policies.usage`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from nhi import metrics_usage as metrics
from nhi.k8s.client import ApiError, Conflict, NotFound
from nhi.models import conditions as cond
from nhi.models.identity import RIGHTSIZING_SUGGEST, MachineIdentity
from nhi.models.policy import IdentityPolicy
from nhi.policies import usage as policy

if TYPE_CHECKING:
    from nhi.reconcilers.usage import UsageStore

log = logging.getLogger("nhi.usage")


class PolicyScope(Protocol):
    def policies(self) -> Sequence[IdentityPolicy]: ...

    def namespace_labels(self, namespace: str) -> Mapping[str, str]: ...


def observed_since(store: UsageStore, identity: MachineIdentity) -> dt.datetime:
    created = store.since
    if identity.creation_timestamp:
        try:
            created = dt.datetime.fromisoformat(identity.creation_timestamp)
        except ValueError:
            pass
    return max(created, store.since)


def verdict(
    store: UsageStore,
    identity: MachineIdentity,
    now: dt.datetime,
    after: dt.timedelta | None = None,
) -> tuple[dict[str, object], list[cond.Condition]]:
    """The identity's ``status.usage`` and conditions (pure once the book is read)."""
    after = after or store.unused_after
    spec = identity.spec
    book = store.books.get((identity.namespace, spec.service_account))
    entries = book.entries if book is not None else {}
    uses = policy.rule_uses(spec.rules, spec.cluster_rules, identity.namespace, entries)
    since = observed_since(store, identity)
    stale = policy.unused(uses, since, now, after)
    status, reason, message = policy.unused_condition(stale, after)
    conds = cond.set_condition(
        identity.status.get("conditions") or [],
        policy.UNUSED_PERMISSIONS,
        status,
        reason,
        message,
        identity.generation,
        now,
    )
    metrics.unused_rules.labels(identity.namespace, identity.name).set(len(stale))
    usage = policy.usage_status(uses, stale, since, after)
    issued = policy.issued_credential_uses(
        identity.status.get("credentials") or [], book.credentials if book is not None else {}
    )
    if issued:
        usage["credentials"] = issued
    if spec.rightsizing == RIGHTSIZING_SUGGEST:
        rules, cluster = policy.rightsize(
            spec.rules, spec.cluster_rules, identity.namespace, entries
        )
        usage["suggestion"] = {
            "rules": [r.to_k8s() for r in rules],
            "clusterRules": [r.to_k8s() for r in cluster],
        }
    return usage, conds


async def assess(
    store: UsageStore, bodies: Iterable[Mapping[str, Any]], scope: PolicyScope | None = None
) -> int:
    """Write status.usage and the condition where they changed; returns how many.

    ``scope``: the IdentityPolicies and a namespace's labels, for their ``unusedAfter``."""
    now = store.clock()
    policies = list(scope.policies()) if scope is not None else []
    changed = 0
    for body in bodies:
        try:
            identity = MachineIdentity.from_body(body)
        except Exception as err:  # an invalid spec: its own reconcile reports it
            log.debug("usage status skipped", extra={"error": repr(err)})
            continue
        if identity.deleting:
            continue
        after = (
            policy.unused_window(
                policies, scope.namespace_labels(identity.namespace), store.unused_after
            )
            if scope is not None and policies
            else None
        )
        usage, conds = verdict(store, identity, now, after)
        old = identity.status
        if _same(old.get("usage"), usage) and old.get("conditions") == conds:
            continue
        patch = {
            "metadata": {"resourceVersion": body["metadata"].get("resourceVersion")},
            "status": {"usage": usage, "conditions": conds},
        }
        try:
            await store.api.patch(
                "MachineIdentity", identity.namespace, identity.name, patch,
                subresource="status",
            )  # fmt: skip
        except (NotFound, Conflict):  # gone, or changed: the next pass sees the newer body
            continue
        except ApiError as err:
            log.error(
                "could not write the usage status",
                extra={"namespace": identity.namespace, "identity": identity.name,
                       "error": str(err)},
            )  # fmt: skip
            continue
        changed += 1
    return changed


def _same(old: Any, new: Mapping[str, object]) -> bool:
    """status.usage unchanged, comparing through JSON (the API server's form)."""
    return bool(json.loads(json.dumps(new)) == old)

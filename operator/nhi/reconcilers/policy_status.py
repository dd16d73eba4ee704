"""The IdentityPolicies' status: how many identities each covers, and how many break it.

:func:`compute_policy_status` is pure; :class:`PolicyStatusWriter` computes it from the
watch caches' identities and patches a policy's status only when it changed.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from nhi.k8s.client import Api, ApiError, NotFound
from nhi.models import conditions as cond
from nhi.models.identity import MachineIdentity, SpecError
from nhi.models.meta import Reason
from nhi.models.policy import IdentityPolicy
from nhi.policies.identity_policy import check_policy

log = logging.getLogger("nhi.reconcilers.policy")

# Policy condition reasons.
EVALUATED = "Evaluated"

#: The live identities, parsed (None: a spec that cannot be parsed), and their namespaces.
Identities = tuple[list[MachineIdentity | None], list[str]]


def compute_policy_status(
    body: Mapping[str, Any],
    identities: Iterable[MachineIdentity | None],
    namespaces: Iterable[str],
    namespace_labels: Callable[[str], Mapping[str, str]],
    now: dt.datetime,
) -> dict[str, Any]:
    """Pure: the status of one IdentityPolicy.

    ``identities`` yields the parsed identities (None for one whose spec cannot be parsed;
    it counts as covered, not as violating) and ``namespaces`` their namespaces, in the same
    order.
    """
    meta = body.get("metadata") or {}
    gen = int(meta.get("generation") or 0)
    old = body.get("status") or {}
    conds: Sequence[Mapping[str, Any]] = old.get("conditions") or []
    try:
        policy = IdentityPolicy.from_body(body)
    except SpecError as err:
        message = f"the policy cannot be enforced: {err}"
        conds = cond.set_condition(
            conds, cond.READY, cond.FALSE, Reason.INVALID_SPEC, message, gen, now
        )
        conds = cond.set_condition(
            conds, cond.RECONCILING, cond.FALSE, Reason.INVALID_SPEC, message, gen, now
        )
        conds = cond.set_condition(
            conds, cond.STALLED, cond.TRUE, Reason.INVALID_SPEC, message, gen, now
        )
        return {"observedGeneration": gen, "conditions": conds}
    covered = violating = 0
    labels_cache: dict[str, Mapping[str, str]] = {}
    for identity, ns in zip(identities, namespaces, strict=True):
        if ns not in labels_cache:
            labels_cache[ns] = namespace_labels(ns)
        if not policy.selects(labels_cache[ns]):
            continue
        covered += 1
        if identity is not None and check_policy(identity, policy):
            violating += 1
    message = (
        f"covers {covered} MachineIdentit{'y' if covered == 1 else 'ies'}; "
        f"{violating} break{'s' if violating == 1 else ''} the policy "
        f"(enforcement {policy.enforcement})"
    )
    conds = cond.set_condition(conds, cond.READY, cond.TRUE, EVALUATED, message, gen, now)
    conds = cond.set_condition(
        conds, cond.RECONCILING, cond.FALSE, EVALUATED, "nothing pending", gen, now
    )
    conds = cond.set_condition(conds, cond.STALLED, cond.FALSE, EVALUATED, "no error", gen, now)
    return {
        "observedGeneration": gen,
        "identitiesCovered": covered,
        "identitiesViolating": violating,
        "conditions": conds,
    }


class PolicyStatusWriter:
    """Computes policies' status from the watch caches; patches only what changed.

    Parsed identities are cached by (namespace, name, resourceVersion), so a pass over
    thousands of unchanged identities parses none of them again.
    """

    def __init__(self, api: Api, clock: Callable[[], dt.datetime]) -> None:
        self.api = api
        self.clock = clock
        self._parsed: dict[tuple[str, str], tuple[str, MachineIdentity | None]] = {}

    def forget(self) -> None:
        """Drop the parsed identities (no policy left to compute a status for)."""
        self._parsed.clear()

    def parse(self, body: Mapping[str, Any]) -> MachineIdentity | None:
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        version = str(meta.get("resourceVersion") or meta.get("generation") or "")
        hit = self._parsed.get(key)
        if hit is not None and hit[0] == version and version:
            return hit[1]
        try:
            identity: MachineIdentity | None = MachineIdentity.from_body(body)
        except SpecError:
            identity = None
        self._parsed[key] = (version, identity)
        return identity

    def identities(self, identity_bodies: Sequence[Mapping[str, Any]]) -> Identities:
        """The identities a status counts (not those being deleted), parsed."""
        live = [
            b for b in identity_bodies if not (b.get("metadata") or {}).get("deletionTimestamp")
        ]
        parsed = [self.parse(b) for b in live]
        spaces = [str((b.get("metadata") or {}).get("namespace", "")) for b in live]
        keep = {
            (ns, str((b.get("metadata") or {}).get("name", "")))
            for b, ns in zip(live, spaces, strict=True)
        }
        for key in list(self._parsed):
            if key not in keep:
                del self._parsed[key]
        return parsed, spaces

    async def write(
        self,
        body: Mapping[str, Any],
        identities: Identities,
        namespace_labels: Callable[[str], Mapping[str, str]],
        now: dt.datetime,
    ) -> bool | None:
        """Patch the policy's status if it changed. True: patched; False: nothing to write
        (or the policy is gone); None: the API server refused it (logged)."""
        parsed, spaces = identities
        status = compute_policy_status(body, parsed, spaces, namespace_labels, now)
        if not cond.status_changed(body.get("status") or {}, status):
            return False
        name = str((body.get("metadata") or {}).get("name", ""))
        try:
            await self.api.patch(
                "IdentityPolicy", None, name, {"status": status}, subresource="status"
            )
        except NotFound:
            return False  # deleted since the cache saw it
        except ApiError as err:
            log.warning(
                "could not write the IdentityPolicy status",
                extra={"policy": name, "error": str(err)},
            )
            return None
        return True

    async def sync(
        self,
        policy_bodies: Sequence[Mapping[str, Any]],
        identity_bodies: Sequence[Mapping[str, Any]],
        namespace_labels: Callable[[str], Mapping[str, str]],
    ) -> int:
        """One pass over every policy; returns how many statuses were patched."""
        identities = self.identities(identity_bodies)
        now = self.clock()
        patched = 0
        for body in policy_bodies:
            if await self.write(body, identities, namespace_labels, now):
                patched += 1
        return patched

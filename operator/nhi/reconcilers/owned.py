"""Writes and deletes that touch only what an identity owns.

An object the identity does not own yet is created with a plain create, which the API server
refuses when the name is taken: the operator never takes over a namesake, whoever made it. An
object it owns (proven by the controller ownerReference's UID, :mod:`nhi.policies.ownership`)
is updated by server-side apply carrying that UID, and deleted with that UID as a
precondition, so a namesake that replaced it meanwhile is never touched either.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from nhi.builders.rbac import ChildKey, is_adopted, release_patch
from nhi.k8s.client import Api, ApiError, Conflict, Invalid
from nhi.models.identity import MachineIdentity
from nhi.models.meta import Reason
from nhi.policies.ownership import Claim, OwnershipConflict, describe_owner, owned_by


def uid_of(obj: Mapping[str, Any] | None) -> str:
    return str(((obj or {}).get("metadata") or {}).get("uid") or "")


class OwnedWriter:
    def __init__(
        self,
        api: Api,
        record: Callable[[Mapping[str, Any]], None] = lambda obj: None,
        forget: Callable[[ChildKey], None] = lambda key: None,
    ) -> None:
        self.api = api
        #: Told about every write and removal, so the caller's caches know before the watch.
        self.record = record
        self.forget = forget

    async def write(
        self,
        identity: MachineIdentity,
        obj: Mapping[str, Any],
        current: Mapping[str, Any] | None,
        field: str,
    ) -> dict[str, Any]:
        """Create ``obj``, or update ``current``: the object of that name that the identity
        owns (or may adopt). Raises :class:`OwnershipConflict` when the name is taken by an
        object the identity does not own; that object is left exactly as it was."""
        uid = uid_of(current)
        written = None
        if uid:
            try:
                written = await self._apply(obj, uid)
            except (Conflict, Invalid) as err:
                if "uid" not in err.message:
                    raise
                # Deleted or replaced by a namesake since it was seen: start again from
                # nothing (a namesake then gives an OwnershipConflict).
        if written is None:
            written = await self._create(identity, obj, field)
        self.record(written)
        return written

    async def _create(
        self, identity: MachineIdentity, obj: Mapping[str, Any], field: str
    ) -> dict[str, Any]:
        meta = obj["metadata"]
        kind, namespace, name = obj["kind"], meta.get("namespace") or None, meta["name"]
        try:
            return await self.api.create(kind, namespace, obj)
        except Conflict as err:
            if err.reason != "AlreadyExists":
                raise
        # Taken: ours after all (the watch had not shown it yet), or someone else's.
        found = await self.api.get(kind, namespace, name)
        if found is not None and owned_by(
            found, identity.uid, namespace=identity.namespace, name=identity.name
        ):
            return await self._apply(obj, uid_of(found))
        raise OwnershipConflict(Claim(field, kind, namespace or "", name, describe_owner(found)))

    async def _apply(self, obj: Mapping[str, Any], uid: str) -> dict[str, Any]:
        # The UID makes the API server refuse the apply if the object was replaced by a
        # namesake meanwhile (or deleted: apply would otherwise create it afresh).
        body = copy.copy(dict(obj))
        body["metadata"] = {**obj["metadata"], "uid": uid}
        return await self.api.apply(body)

    async def delete(self, kind: str, current: Mapping[str, Any]) -> bool:
        """Delete the owned object ``current``; False when it was already gone."""
        meta = current.get("metadata") or {}
        try:
            return await self.api.delete(
                kind,
                meta.get("namespace") or None,
                str(meta.get("name")),
                uid=uid_of(current) or None,
            )
        except Conflict:
            return False  # the UID precondition failed: a namesake, not ours to delete

    async def remove(self, uid: str, key: ChildKey, obj: Mapping[str, Any]) -> str:
        """Delete an owned child, or give an adopted ServiceAccount back as it was.
        Returns what was done (a Reason), or "" when the object was already gone."""
        if key.kind == "ServiceAccount" and is_adopted(obj):
            try:
                await self.api.patch(
                    "ServiceAccount",
                    key.namespace,
                    key.name,
                    release_patch(obj, uid),
                    content_type="application/json-patch+json",
                )
            except ApiError as err:
                if err.status not in (404, 409, 422):  # gone, or not the one we adopted
                    raise
                return ""
            self.forget(key)
            return Reason.RELEASED
        if not await self.delete(key.kind, obj):
            return ""
        self.forget(key)
        return Reason.DELETED

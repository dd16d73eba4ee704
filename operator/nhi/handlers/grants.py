"""The AccessGrant controller: what drives it, and its reconcile.

A grant is reconciled when it changes, when its Role or RoleBindings change (a deleted Role
of an Active grant comes back), when its identity changes, when any IdentityPolicy or
namespace changes, and at the times its verdict names: its start, its expiry (exact to the
timer heap's resolution, and derived from its status after a restart), the end of its
record's retention.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from nhi import IDENTITY_FINALIZER, metrics
from nhi.handlers.identity_cache import IdentityCache
from nhi.k8s.client import Api, NotFound
from nhi.k8s.events import EventRecorder
from nhi.models.grant import GRANT_LABEL, KIND
from nhi.models.meta import MANAGED_BY, MANAGED_BY_KEY
from nhi.reconcilers.grants import ChildKey, Gathered, GrantReconciler
from nhi.runtime import finalizers
from nhi.runtime.caches import WatchCaches
from nhi.runtime.clock import Clock
from nhi.runtime.controller import Controller, Result
from nhi.runtime.informer import Informer, Key
from nhi.runtime.store import without_managed_fields

log = logging.getLogger("nhi.handlers.grants")

#: Grants reconciled at the same time (500 expiring in the same second end together: the
#: API server, not this process, is then the limit).
WORKERS = 64
CHILD_SELECTOR = f"{MANAGED_BY_KEY}={MANAGED_BY},{GRANT_LABEL}"
CHILD_KINDS = ("Role", "RoleBinding")


class GrantController:
    def __init__(
        self,
        api: Api,
        events: EventRecorder,
        cache: IdentityCache,
        clock: Clock,
        retention: dt.timedelta,
        ready: asyncio.Event,
        active: asyncio.Event | None = None,
    ) -> None:
        self.api = api
        self.cache = cache
        self.reconciler = GrantReconciler(api, events, clock.now, retention)
        self.controller: Controller[Key] = Controller(
            KIND,
            self.reconcile,
            clock=clock,
            workers=WORKERS,
            ready=ready,
            active=active,
            on_error=lambda key: metrics.reconcile_errors.labels(KIND).inc(),
        )
        self.reconciler.on_written = self._wrote
        self._grants: list[Informer] = []
        self._children: dict[str, list[Informer]] = {}
        #: Bodies this controller wrote, newer than the watch may have delivered yet.
        self._written: dict[Key, dict[str, Any]] = {}

    def watch(self, caches: WatchCaches) -> None:
        self._grants = caches.add(KIND, transform=without_managed_fields)
        self.controller.watch(self._grants, lambda key, old, new: (key,))
        for kind in CHILD_KINDS:
            informers = caches.add(kind, label_selector=CHILD_SELECTOR, transform=_slim)
            self._children[kind] = informers
            self.controller.watch(informers, self._owner)
        self.controller.watch(caches.of("MachineIdentity"), self._of_identity)
        self.controller.watch(
            [*caches.of("IdentityPolicy"), *caches.of("Namespace")], self._every, delay=1.0
        )

    def _owner(self, key: Key, old: Any, new: Any) -> Iterable[Key]:
        for obj in (old, new):
            name = ((obj or {}).get("metadata") or {}).get("labels", {}).get(GRANT_LABEL)
            if name:
                yield (key[0], str(name))

    def _of_identity(self, key: Key, old: Any, new: Any) -> Iterable[Key]:
        namespace, identity = key
        for (ns, name), body in self.bodies():
            if (
                ns == namespace
                and ((body.get("spec") or {}).get("identityRef") or {}).get("name") == identity
            ):
                yield (ns, name)

    def _every(self, key: Key, old: Any, new: Any) -> Iterable[Key]:
        return [k for k, _ in self.bodies()]

    def bodies(self) -> Iterable[tuple[Key, Mapping[str, Any]]]:
        for informer in self._grants:
            yield from informer.objects.items()

    # ------------------------------------------------------------------ reconcile

    def body(self, key: Key) -> dict[str, Any] | None:
        live = None
        for informer in self._grants:
            live = informer.objects.get(key, live)
        mine = self._written.get(key)
        if live is None:
            self._written.pop(key, None)
            return None
        if mine is not None and _version(mine) > _version(live):
            return mine
        self._written.pop(key, None)
        return dict(live)

    def children(self, namespace: str, grant: str) -> dict[ChildKey, Mapping[str, Any]]:
        out: dict[ChildKey, Mapping[str, Any]] = {}
        for kind, informers in self._children.items():
            for informer in informers:
                for (ns, name), obj in informer.objects.items():
                    labels = (obj.get("metadata") or {}).get("labels") or {}
                    if ns == namespace and labels.get(GRANT_LABEL) == grant:
                        out[(kind, name)] = obj
        return out

    async def reconcile(self, key: Key) -> Result:
        body = self.body(key)
        if body is None:
            self.controller.forget(key)
            metrics.GRANTS.forget(*key)
            return Result()
        seen = self._gather(key, body)
        if finalizers.deleting(body):
            if finalizers.has(body, IDENTITY_FINALIZER):
                await self.reconciler.remove_all(seen)
                await self._patch(key, finalizers.remove(body, IDENTITY_FINALIZER))
            metrics.GRANTS.forget(*key)
            return Result()
        if not finalizers.has(body, IDENTITY_FINALIZER):
            written = await self._patch(key, finalizers.add(body, IDENTITY_FINALIZER))
            if written is None:
                return Result()
            seen = self._gather(key, without_managed_fields(written))
        verdict = await self.reconciler.reconcile(seen)
        return Result(requeue_at=verdict.next_look) if verdict.next_look else Result()

    def _gather(self, key: Key, body: Mapping[str, Any]) -> Gathered:
        identity = ((body.get("spec") or {}).get("identityRef") or {}).get("name")
        return Gathered(
            body=body,
            identity=self.cache.identity_body((key[0], str(identity))) if identity else None,
            children=self.children(*key),
            policies=self.cache.policies(),
            namespace_labels=self.cache.namespace_labels(key[0]),
        )

    def _wrote(self, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        self._written[(str(meta.get("namespace", "")), str(meta.get("name", "")))] = (
            without_managed_fields(body)
        )

    async def _patch(self, key: Key, patch: finalizers.Patch) -> dict[str, Any] | None:
        try:
            written: dict[str, Any] = await self.api.patch(
                KIND, key[0], key[1], patch, content_type=finalizers.JSON_PATCH
            )
        except NotFound:
            return None
        self._written[key] = without_managed_fields(written)
        return written


def _version(body: Mapping[str, Any]) -> int:
    try:
        return int((body.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def _slim(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What a reconcile needs of a grant's child: its metadata and what it grants."""
    meta = obj.get("metadata") or {}
    return {
        "kind": obj.get("kind"),
        "metadata": {
            k: meta[k]
            for k in ("name", "namespace", "uid", "labels", "ownerReferences", "creationTimestamp")
            if k in meta
        },
        **{k: obj[k] for k in ("rules", "roleRef", "subjects") if k in obj},
    }

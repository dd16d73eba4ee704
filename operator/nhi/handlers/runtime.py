"""The operator's shared state: API client, watch caches, work queue, reconcilers.

Created once at start-up. The watch caches are :class:`nhi.k8s.informer.Informer` s: the
operator's own children are listed and watched with a server-side label selector, other
context (workloads, ServiceAccount names, namespaces, policies) as reduced values or metadata
only. No reconcile runs before every cache has its first listing, so a restart sees every
child that exists and re-creates nothing. MachineIdentities themselves arrive through kopf
(which pauses them on a standby replica when peering).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from nhi import IDENTITY_FINALIZER
from nhi.builders.rbac import ChildKey
from nhi.k8s.cache import WriteOverlay, slim
from nhi.k8s.client import Api, ApiError, Conflict, NotFound, load_connection
from nhi.k8s.events import EventRecorder
from nhi.k8s.informer import Informer, Key, scopes
from nhi.models.identity import LabelSelector, MachineIdentity, SpecError
from nhi.models.meta import (
    CREDENTIAL_LABEL,
    IDENTITY_LABEL,
    IDENTITY_NAMESPACE_LABEL,
    MANAGED_BY,
    MANAGED_BY_KEY,
)
from nhi.models.policy import IdentityPolicy
from nhi.models.workload import WORKLOAD_KINDS, Workload, workload_from_body
from nhi.reconcilers.identity import IdentityReconciler, utcnow
from nhi.reconcilers.issuer import IssuerService
from nhi.reconcilers.workqueue import WorkQueue
from nhi.settings import current as current_settings

log = logging.getLogger("nhi.runtime")

CHILD_KINDS = ("ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")
CLUSTER_KINDS = {"ClusterRole", "ClusterRoleBinding"}
MANAGED_SELECTOR = f"{MANAGED_BY_KEY}={MANAGED_BY},{IDENTITY_LABEL}"
SECRET_SELECTOR = f"{MANAGED_SELECTOR},{CREDENTIAL_LABEL}"
#: Retry delay of a failed deletion clean-up.
CLEANUP_RETRY = 5.0


def _owner(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    return (
        str(labels.get(IDENTITY_NAMESPACE_LABEL) or meta.get("namespace") or ""),
        str(labels.get(IDENTITY_LABEL) or ""),
    )


def _labels(obj: Mapping[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


# The per-identity caches keep compact JSON text instead of parsed objects: a parsed child or
# identity takes 3-5 times the memory of its text, and reading one back costs microseconds.
def _pack(obj: Mapping[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _unpack(text: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(text)
    return value


def _slim_identity(body: Mapping[str, Any]) -> dict[str, Any]:
    """The identity without managedFields (the largest part nobody here reads)."""
    out = dict(body)
    meta = dict(out.get("metadata") or {})
    meta.pop("managedFields", None)
    out["metadata"] = meta
    return out


class _Matcher:
    """What makes a workload relevant to an identity: its selector and ServiceAccount."""

    __slots__ = ("selector", "service_account")

    def __init__(self, selector: LabelSelector | None, service_account: str | None) -> None:
        self.selector = selector
        self.service_account = service_account

    def wants(self, w: Workload) -> bool:
        if self.selector is None:  # an invalid spec: re-check on anything
            return True
        return w.service_account == self.service_account or w.matched_by(self.selector)


class Runtime:
    def __init__(self, api: Api, workers: int = 32) -> None:
        self.api = api
        self.events = EventRecorder(api)
        self.overlay = WriteOverlay()
        #: Identities as delivered by the watch (managedFields dropped), by (namespace, name).
        self._identities: dict[Key, str] = {}
        #: Identities as last written by us (status patches), until the watch catches up.
        self.identity_overlay: dict[Key, dict[str, Any]] = {}
        settings = current_settings()
        self.namespaces = tuple(settings.namespaces)
        self.operator_namespace = settings.operator_namespace
        self.issuers = IssuerService(
            api,
            self.events,
            operator_namespace=settings.operator_namespace,
            clock=utcnow,
            namespaces=settings.namespaces,
        )
        self.issuers.on_change = self.issuer_changed
        self.identities = IdentityReconciler(api, self, self.events, self.issuers)
        self.queue: WorkQueue[Key] = WorkQueue(self.process, workers=workers)
        self.locks: dict[Key, asyncio.Lock] = {}
        #: Identity names by namespace, so a workload event does not scan every identity.
        self.by_namespace: dict[str, set[str]] = {}
        self._matchers: dict[Key, _Matcher] = {}
        #: resourceVersion of our last write of an identity whose reconcile saw everything
        #: that write returned (same generation, labels, annotations): its watch event, and
        #: older ones, need no reconcile.
        self._echoes: dict[Key, int] = {}
        # Watch caches, filled by the informers.
        self._children: dict[Key, dict[ChildKey, str]] = {}
        self._workloads: dict[str, dict[tuple[str, str], Workload]] = {}
        self._service_accounts: dict[Key, str] = {}
        self._namespace_labels: dict[Key, dict[str, str]] = {}
        self._policies: dict[Key, dict[str, Any]] = {}
        self.informers: list[Informer] = []
        self.synced = asyncio.Event()
        self._sync_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ caches

    def start_informers(self) -> None:
        """Start every watch cache; :attr:`synced` is set once all have listed."""
        if self.informers:
            return
        where, keep = scopes(self.namespaces)
        secret_where, secret_keep = scopes(self.namespaces, self.operator_namespace)

        def add(kind: str, namespaced: bool = True, **kw: Any) -> None:
            targets = (kw.pop("where", where), kw.pop("keep", keep)) if namespaced else ([None], ())
            for ns in targets[0]:
                self.informers.append(
                    Informer(self.api, kind, namespace=ns, namespaces=targets[1], **kw)
                )

        for kind in CHILD_KINDS:
            add(
                kind,
                namespaced=kind not in CLUSTER_KINDS,
                label_selector=MANAGED_SELECTOR,
                transform=_slimmer(kind),
                on_change=self._child_changer(kind),
            )
        # Credential state lives in the Secrets' annotations: their data is never listed.
        add(
            "Secret",
            label_selector=SECRET_SELECTOR,
            metadata_only=True,
            transform=_slimmer("Secret"),
            on_change=self._child_changer("Secret"),
        )
        # Every Secret's name and resourceVersion (metadata only): the issuers' CA Secrets.
        add(
            "Secret",
            where=secret_where,
            keep=secret_keep,
            metadata_only=True,
            transform=lambda o: str((o.get("metadata") or {}).get("resourceVersion") or "-"),
            on_change=self._secret_changed,
        )
        # Every ServiceAccount's labels (metadata only): is a name taken by a foreign one?
        add(
            "ServiceAccount",
            metadata_only=True,
            transform=lambda o: _pack(_labels(o)),
            on_change=_store(self._service_accounts),
        )
        for kind in WORKLOAD_KINDS:
            add(kind, transform=_workload(kind), on_change=self._workload_changed)
        add(
            "Namespace",
            namespaced=False,
            metadata_only=True,
            transform=_labels,
            on_change=_store(self._namespace_labels),
        )
        add(
            "IdentityPolicy",
            namespaced=False,
            transform=_slim_identity,
            on_change=self._policy_changed,
        )
        for informer in self.informers:
            informer.start()
        self._sync_task = asyncio.create_task(self._wait_synced(), name="nhi-caches-synced")

    async def _wait_synced(self) -> None:
        started = time.monotonic()
        await asyncio.gather(*(i.synced.wait() for i in self.informers))
        self.synced.set()
        log.info(
            "watch caches ready",
            extra={
                "informers": len(self.informers),
                "objects": sum(len(i.objects) for i in self.informers),
                "seconds": round(time.monotonic() - started, 2),
            },
        )

    async def stop_informers(self) -> None:
        if self._sync_task is not None:
            self._sync_task.cancel()
        await asyncio.gather(*(i.stop() for i in self.informers))
        self.informers = []

    def _child_changer(self, kind: str) -> Any:
        def changed(key: Key, old: str | None, new: str | None) -> None:
            ckey = ChildKey(kind, key[0], key[1])
            before = _unpack(old) if old is not None else None
            after = _unpack(new) if new is not None else None
            if before is not None:
                owner = _owner(before)
                bucket = self._children.get(owner)
                if bucket is not None:
                    bucket.pop(ckey, None)
                    if not bucket:
                        del self._children[owner]
            if after is not None and new is not None:
                self._children.setdefault(_owner(after), {})[ckey] = new
            if len(self.overlay):
                self.overlay.seen(kind, after or before or {}, deleted=after is None)
            if self.synced.is_set():
                for obj in (before, after):
                    if obj is not None:
                        self.queue.add(_owner(obj))

        return changed

    def _workload_changed(self, key: Key, old: Workload | None, new: Workload | None) -> None:
        workloads = self._workloads.setdefault(key[0], {})
        if new is None and old is not None:
            workloads.pop((old.kind, old.name), None)
        if new is not None:
            workloads[(new.kind, new.name)] = new
        if self.synced.is_set():
            self.requeue_for(key[0], [w for w in (old, new) if w is not None])

    def _secret_changed(self, key: Key, old: str | None, new: str | None) -> None:
        if self.issuers.watches_secret(key[0], key[1]):
            self.issuers.secret_changed(key[0], key[1], new or "")

    def _policy_changed(self, key: Key, old: Any, new: dict[str, Any] | None) -> None:
        """A policy changed: every identity may be affected, so re-check them all."""
        if new is None:
            self._policies.pop(key, None)
        else:
            self._policies[key] = new
        if self.synced.is_set():
            for ikey in list(self._identities):
                self.queue.add(ikey)

    def children_of(self, namespace: str, name: str) -> dict[ChildKey, dict[str, Any]]:
        """The identity's children: the watch caches, corrected by our own recent writes."""
        cached = {k: _unpack(v) for k, v in (self._children.get((namespace, name)) or {}).items()}
        if not len(self.overlay):
            return cached
        keys = set(cached) | {
            ChildKey(*k)
            for k in self.overlay.keys_for(
                namespace, name, IDENTITY_LABEL, IDENTITY_NAMESPACE_LABEL
            )
        }
        out: dict[ChildKey, dict[str, Any]] = {}
        for key in keys:
            _, obj = self.overlay.resolve((key.kind, key.namespace, key.name), cached.get(key))
            if obj is not None:
                out[key] = obj
        return out

    def written(self, obj: Mapping[str, Any]) -> None:
        self.overlay.written(obj)

    def deleted(self, key: ChildKey) -> None:
        self.overlay.deleted(key.kind, key.namespace, key.name)

    def policy_bodies(self) -> list[dict[str, Any]]:
        return list(self._policies.values())

    def policies(self) -> Sequence[IdentityPolicy]:
        out = []
        for body in self._policies.values():
            try:
                out.append(IdentityPolicy.from_body(body))
            except ValueError as err:
                log.warning("ignoring an invalid IdentityPolicy", extra={"error": str(err)})
        return out

    def namespace_labels(self, namespace: str) -> Mapping[str, str]:
        return self._namespace_labels.get(("", namespace)) or {}

    def service_account(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """Any ServiceAccount of that name (managed or not), as its labels, from the watch."""
        labels = self._service_accounts.get((namespace, name))
        return {"metadata": {"labels": _unpack(labels)}} if labels is not None else None

    def workloads(self, namespace: str) -> list[Workload]:
        return list((self._workloads.get(namespace) or {}).values())

    # ------------------------------------------------------------------ identities

    def identity_observed(self, body: Mapping[str, Any], deleted: bool = False) -> None:
        """The watch delivered an identity: keep it, and what its workloads look like."""
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        names = self.by_namespace.setdefault(key[0], set())
        if deleted:
            names.discard(key[1])
            self._identities.pop(key, None)
            self._matchers.pop(key, None)
            self._echoes.pop(key, None)
            self.queue.forget(key)
            self.locks.pop(key, None)
            self.identity_overlay.pop(key, None)
            return
        names.add(key[1])
        self._identities[key] = _pack(_slim_identity(body))
        echo = self._echoes.get(key)
        if echo is not None:
            if _rv(body) <= echo:
                # Our own write coming back (or an older state): that reconcile saw it all.
                if _rv(body) == echo:
                    del self._echoes[key]
                return
            del self._echoes[key]
        try:
            spec = MachineIdentity.from_body(body).spec
            self._matchers[key] = _Matcher(spec.selector, spec.service_account)
        except SpecError:
            self._matchers[key] = _Matcher(None, None)
        self.queue.add(key)

    def identity_keys(self) -> list[Key]:
        return list(self._identities)

    def identity_bodies(self) -> list[dict[str, Any]]:
        """Every identity as last seen (parsed anew: the caller may keep or change them)."""
        return [_unpack(text) for text in list(self._identities.values())]

    def requeue_for(self, namespace: str, workloads: Sequence[Workload]) -> None:
        """A workload changed: re-check the identities it matches (before or after)."""
        for name in list(self.by_namespace.get(namespace, ())):
            matcher = self._matchers.get((namespace, name))
            if matcher is None or any(matcher.wants(w) for w in workloads):
                self.queue.add((namespace, name))

    def identity_body(self, key: Key) -> dict[str, Any] | None:
        text = self._identities.get(key)
        cached = _unpack(text) if text is not None else None
        mine = self.identity_overlay.get(key)
        if mine is None:
            return cached
        if cached is None or _rv(cached) >= _rv(mine):
            # The watch has caught up with our write (or the identity is gone).
            self.identity_overlay.pop(key, None)
            return cached
        return mine

    def identity_written(self, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        key = (str(meta.get("namespace", "")), str(meta.get("name")))
        self.identity_overlay[key] = _slim_identity(obj)

    # ------------------------------------------------------------------ work

    def lock(self, key: Key) -> asyncio.Lock:
        lock = self.locks.get(key)
        if lock is None:
            lock = self.locks[key] = asyncio.Lock()
        return lock

    async def process(self, key: Key) -> None:
        if not self.synced.is_set():
            await self.synced.wait()  # never decide on half-listed caches
        async with self.lock(key):
            body = self.identity_body(key)
            if body is None:
                return
            meta = body.get("metadata") or {}
            if meta.get("deletionTimestamp"):
                if IDENTITY_FINALIZER in (meta.get("finalizers") or ()):
                    await self._finalize(key, body)
                return
            if IDENTITY_FINALIZER not in (meta.get("finalizers") or ()):
                # Cluster-scoped children and revocations need a word before the identity
                # goes: hold its deletion until the clean-up ran.
                updated = await self._add_finalizer(key, body)
                if updated is None:
                    return
                body = updated
            outcome = await self.identities.reconcile(body)
            mine = self.identity_overlay.get(key)
            if mine is not None and _inputs(mine) == _inputs(body):
                self._echoes[key] = _rv(mine)
            if outcome.next_due is not None:
                delay = (outcome.next_due - utcnow()).total_seconds()
                self.queue.add_after(key, max(delay, 0.0) + 0.05)
            elif not outcome.ready and not outcome.stalled and not outcome.settled:
                # Waiting on something outside (an issuer): look again soon.
                self.queue.add_after(key, 10.0)

    async def _add_finalizer(self, key: Key, body: Mapping[str, Any]) -> dict[str, Any] | None:
        meta = body.get("metadata") or {}
        finalizers = list(meta.get("finalizers") or ())
        # JSON patch guarded by the list we saw: a concurrent change makes it fail (409/422).
        ops: list[dict[str, Any]] = (
            [
                {"op": "test", "path": "/metadata/finalizers", "value": finalizers},
                {"op": "add", "path": "/metadata/finalizers/-", "value": IDENTITY_FINALIZER},
            ]
            if finalizers
            else [{"op": "add", "path": "/metadata/finalizers", "value": [IDENTITY_FINALIZER]}]
        )
        written = await self._patch_finalizers(key, ops)
        if written is None:
            return None
        self.identity_written(written)
        return _slim_identity(written)

    async def _finalize(self, key: Key, body: Mapping[str, Any]) -> None:
        """The identity is being deleted: remove what it made, then let it go."""
        try:
            removed = await self.identities.cleanup(body)
        except ApiError as err:
            log.warning(
                "could not remove the identity's objects; retrying",
                extra={"namespace": key[0], "identity": key[1], "error": str(err)},
            )
            self.queue.add_after(key, CLEANUP_RETRY)
            return
        log.info(
            "removed the identity's objects",
            extra={"namespace": key[0], "identity": key[1], "removed": removed},
        )
        meta = body.get("metadata") or {}
        index = list(meta.get("finalizers") or ()).index(IDENTITY_FINALIZER)
        await self._patch_finalizers(
            key,
            [
                {
                    "op": "test",
                    "path": f"/metadata/finalizers/{index}",
                    "value": IDENTITY_FINALIZER,
                },
                {"op": "remove", "path": f"/metadata/finalizers/{index}"},
            ],
        )

    async def _patch_finalizers(self, key: Key, ops: list[dict[str, Any]]) -> dict[str, Any] | None:
        """A JSON patch guarded by ``test`` ops. None when the identity is gone, or changed
        meanwhile (409/422: it is looked at again shortly)."""
        try:
            return await self.api.patch(
                "MachineIdentity", key[0], key[1], ops, content_type="application/json-patch+json"
            )
        except NotFound:
            return None
        except ApiError as err:
            if not (isinstance(err, Conflict) or err.status == 422):
                raise
            self.queue.add_after(key, 0.2)
            return None

    def issuer_changed(self, issuer: tuple[str, str, str]) -> None:
        """Re-queue every identity whose credentials name the issuer."""
        kind, namespace, name = issuer
        for key, text in list(self._identities.items()):
            if f'"{name}"' not in text:
                continue  # cheap: the issuer is not named anywhere in this identity
            body = self.identity_body(key)
            for cred in ((body or {}).get("spec") or {}).get("credentials") or []:
                ref = cred.get("issuerRef") or {}
                if (
                    ref.get("name") == name
                    and ref.get("kind", "ClusterIdentityIssuer") == kind
                    and (kind == "ClusterIdentityIssuer" or key[0] == namespace)
                ):
                    self.queue.add(key)
                    break


def _rv(obj: Mapping[str, Any]) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


_runtime: Runtime | None = None


def get() -> Runtime:
    global _runtime
    if _runtime is None:
        _runtime = Runtime(Api(load_connection()), workers=current_settings().workers)
    return _runtime


def set_runtime(rt: Runtime | None) -> None:
    global _runtime
    _runtime = rt


def _inputs(body: Mapping[str, Any]) -> tuple[Any, ...]:
    """What of an identity a reconcile acts on, besides its status."""
    meta = body.get("metadata") or {}
    return (
        meta.get("uid"),
        meta.get("generation"),
        meta.get("labels"),
        meta.get("annotations"),
        meta.get("deletionTimestamp"),
        meta.get("finalizers"),
    )


def _slimmer(kind: str) -> Any:
    return lambda obj: _pack(slim(kind, obj))


def _workload(kind: str) -> Any:
    return lambda obj: workload_from_body(kind, obj)


def _store(into: dict[Key, Any]) -> Any:
    def changed(key: Key, old: Any, new: Any) -> None:
        if new is None:
            into.pop(key, None)
        else:
            into[key] = new

    return changed

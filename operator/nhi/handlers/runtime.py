"""The operator's shared state: API client, watch caches, work queue, reconcilers.

Created once at start-up. The watch caches are :class:`nhi.runtime.informer.Informer` s: the
operator's RBAC children are listed and watched with a server-side label selector; Secrets
(metadata only) and ServiceAccounts in one watch each, the operator's own kept as children,
any other reduced to what is needed of it; other context (workloads, namespaces, policies)
as reduced values or metadata only. No reconcile runs before every cache has its first
listing, so a restart sees every child that exists and re-creates nothing. MachineIdentities
have such a cache too (not kopf: its per-object workers held every listed identity at once);
with peering, :class:`nhi.runtime.peering.PeeringGate` holds the reconciles of a standby replica
by kopf's own rule.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from nhi import IDENTITY_FINALIZER, metrics
from nhi.builders.rbac import ChildKey
from nhi.k8s.client import Api, NotFound, load_connection
from nhi.k8s.events import EventRecorder
from nhi.models.duration import utcnow
from nhi.models.identity import LabelSelector, MachineIdentity, Spec
from nhi.models.issuer import IssuerKey, issuer_key
from nhi.models.meta import (
    CREDENTIAL_LABEL,
    IDENTITY_LABEL,
    IDENTITY_NAMESPACE_LABEL,
    MANAGED_BY,
    MANAGED_BY_KEY,
)
from nhi.models.policy import IdentityPolicy
from nhi.models.workload import WORKLOAD_KINDS, Workload, workload_from_body
from nhi.reconcilers.identity import IdentityReconciler
from nhi.reconcilers.issuers import IssuerService
from nhi.runtime.informer import Informer, Key, scopes
from nhi.runtime.overlay import WriteOverlay, slim
from nhi.runtime.peering import PeeringGate
from nhi.runtime.queue import WorkQueue
from nhi.settings import current as current_settings

log = logging.getLogger("nhi.runtime")

#: Children watched with a label selector (ServiceAccounts and Secrets: in one watch each
#: with the others of their kind, see Runtime.start_informers).
RBAC_KINDS = ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")
CLUSTER_KINDS = {"ClusterRole", "ClusterRoleBinding"}
MANAGED_SELECTOR = f"{MANAGED_BY_KEY}={MANAGED_BY},{IDENTITY_LABEL}"
#: Informers listing at the same time (start-up, or a relist after 410 Gone).
LIST_CONCURRENCY = 2


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
        self.issuers.users = self.issuers_used
        # Trust bundles are computed from every identity's issuers: not before all are listed.
        self.issuers.bundles.synced = lambda: self.synced.is_set() and self.gate.active.is_set()
        #: The issuers each identity's X509 credentials name, and how many identities of each
        #: namespace name each issuer (what the namespace's trust bundles must hold).
        self._issuer_uses: dict[Key, frozenset[IssuerKey]] = {}
        self._issuer_counts: dict[str, dict[IssuerKey, int]] = {}
        self.identities = IdentityReconciler(api, self, self.events, self.issuers)
        self.queue: WorkQueue[Key] = WorkQueue(
            self.process, workers=workers, on_retry=_count_failure
        )
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
        self._child_secret = self._child_changer("Secret")
        self._child_service_account = self._child_changer("ServiceAccount")
        self.informers: list[Informer] = []
        self.synced = asyncio.Event()
        #: Open while this replica may reconcile (always, without peering).
        self.gate = PeeringGate(
            api,
            enabled=settings.peering,
            name=settings.peering_name,
            namespaces=tuple(settings.namespaces),
            identity=settings.peering_identity,
            priority=settings.peering_priority,
            on_active=self._requeue_all,
        )
        self._sync_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ caches

    def start_informers(self) -> None:
        """Start every watch cache; :attr:`synced` is set once all have listed."""
        if self.informers:
            return
        where, keep = scopes(self.namespaces)
        # A parsed page of 500 objects is several MB of small Python objects; listing every
        # resource at once at start-up multiplies that peak, which the process then keeps as
        # fragmented heap. Two at a time list about as fast (the API server is the limit).
        slots = asyncio.Semaphore(LIST_CONCURRENCY)
        secret_where, secret_keep = scopes(self.namespaces, self.operator_namespace)

        def add(kind: str, namespaced: bool = True, **kw: Any) -> None:
            targets = (kw.pop("where", where), kw.pop("keep", keep)) if namespaced else ([None], ())
            for ns in targets[0]:
                self.informers.append(
                    Informer(
                        self.api,
                        kind,
                        namespace=ns,
                        namespaces=targets[1],
                        list_slots=slots,
                        **kw,
                    )
                )

        # The identities themselves: each kept as compact JSON without managedFields. Listed
        # a page at a time (kopf's per-object workers held every listed body at once).
        add("MachineIdentity", transform=_identity_entry, on_change=self._identity_changed)
        for kind in RBAC_KINDS:
            add(
                kind,
                namespaced=kind not in CLUSTER_KINDS,
                label_selector=MANAGED_SELECTOR,
                transform=_slimmer(kind),
                on_change=self._child_changer(kind),
            )
        # One watch of every Secret, metadata only (their data is never listed): the
        # credential Secrets keep their slim metadata (credential state lives in their
        # annotations), any other Secret only its resourceVersion (the issuers' CA Secrets).
        # One watch rather than a label-selected one beside it: each credential Secret's
        # change is then served, decoded and kept once.
        add(
            "Secret",
            where=secret_where,
            keep=secret_keep,
            metadata_only=True,
            transform=_secret_entry,
            on_change=self._secret_changed,
        )
        # Every ServiceAccount (they are small): the operator's own as children, any other
        # by its labels (is a name taken by a foreign one?).
        add("ServiceAccount", transform=_service_account_entry, on_change=self._sa_changed)
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
        self.gate.start()
        self._sync_task = asyncio.create_task(self._wait_synced(), name="nhi-caches-synced")

    async def _wait_synced(self) -> None:
        started = time.monotonic()
        await asyncio.gather(*(i.synced.wait() for i in self.informers))
        self.synced.set()
        self.issuers.sweep_bundles()
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
        await self.gate.stop()
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
        mine_old, mine_new = _child_entry(old), _child_entry(new)
        if (mine_old is not None or mine_new is not None) and self._in_scope(key[0]):
            self._child_secret(key, mine_old, mine_new)
        if self.issuers.watches_secret(key[0], key[1]):
            self.issuers.secret_changed(key[0], key[1], _entry_version(new))

    def _sa_changed(self, key: Key, old: str | None, new: str | None) -> None:
        mine_old, mine_new = _child_entry(old), _child_entry(new)
        if mine_old is not None or mine_new is not None:
            self._child_service_account(key, mine_old, mine_new)
        if new is None:
            self._service_accounts.pop(key, None)
        else:
            self._service_accounts[key] = new
        if self.synced.is_set() and mine_old is None and mine_new is None:
            # A ServiceAccount that is not one of ours came or went: an identity blocked by
            # it (ServiceAccountConflict) may go on now, or must stop.
            for name in list(self.by_namespace.get(key[0], ())):
                matcher = self._matchers.get((key[0], name))
                if matcher is None or matcher.service_account == key[1]:
                    self.queue.add((key[0], name))

    def _in_scope(self, namespace: str) -> bool:
        """Is the namespace one the operator serves (the Secret watch also covers its own)?"""
        return not self.namespaces or any(
            fnmatch.fnmatchcase(namespace, p) for p in self.namespaces
        )

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
        """Any ServiceAccount of that name, from the watch: the operator's own as a child
        (slim), any other as its uid, labels and ownerReferences."""
        entry = self._service_accounts.get((namespace, name))
        if entry is None:
            return None
        mine = _child_entry(entry)
        if mine is not None:
            return _unpack(mine)
        return {"metadata": {"namespace": namespace, "name": name, **_unpack(entry[1:])}}

    def workloads(self, namespace: str) -> list[Workload]:
        return list((self._workloads.get(namespace) or {}).values())

    # ------------------------------------------------------------------ identities

    def _identity_changed(self, key: Key, old: str | None, new: str | None) -> None:
        if new is None:
            self._identity_gone(key)
        else:
            self._identity_seen(key, new, _unpack(new))

    def identity_observed(self, body: Mapping[str, Any], deleted: bool = False) -> None:
        """The watch delivered an identity: keep it, and what its workloads look like."""
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        if deleted:
            self._identity_gone(key)
        else:
            self._identity_seen(key, _identity_entry(body), body)

    def issuers_used(self, namespace: str) -> Collection[IssuerKey]:
        """The issuers named by the X509 credentials of the identities in ``namespace``."""
        return self._issuer_counts.get(namespace, {}).keys()

    def _set_issuer_uses(self, key: Key, uses: frozenset[IssuerKey]) -> None:
        old = self._issuer_uses.get(key, frozenset())
        if uses == old:
            return
        if uses:
            self._issuer_uses[key] = uses
        else:
            self._issuer_uses.pop(key, None)
        counts = self._issuer_counts.setdefault(key[0], {})
        for issuer in uses - old:
            counts[issuer] = counts.get(issuer, 0) + 1
        dropped = False
        for issuer in old - uses:
            counts[issuer] = counts.get(issuer, 1) - 1
            if counts[issuer] <= 0:
                del counts[issuer]
                dropped = True
        if not counts:
            del self._issuer_counts[key[0]]
        if dropped:
            self.issuers.unused(key[0])

    def _identity_gone(self, key: Key) -> None:
        self._set_issuer_uses(key, frozenset())
        names = self.by_namespace.get(key[0])
        if names is not None:
            names.discard(key[1])
        self._identities.pop(key, None)
        self._matchers.pop(key, None)
        self._echoes.pop(key, None)
        self.queue.forget(key)
        self.locks.pop(key, None)
        self.identity_overlay.pop(key, None)

    def _identity_seen(self, key: Key, entry: str, body: Mapping[str, Any]) -> None:
        self.by_namespace.setdefault(key[0], set()).add(key[1])
        before = self._identities.get(key)
        self._identities[key] = entry
        # Someone changed what a reconcile acts on (spec, labels, annotations, deletion): it
        # runs at once even if the last run failed. Anything else (our own status writes,
        # children's events) waits for a failed run's retry.
        fresh = before is not None and _inputs(_unpack(before)) != _inputs(body)
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
            self._set_issuer_uses(key, _issuers_of(spec, key[0]))
        except Exception:
            # An invalid spec (SpecError), or a body no rule foresaw: never the watch's end.
            self._matchers[key] = _Matcher(None, None)  # its issuers: as they were
        self.queue.add(key, fresh=fresh)

    def _requeue_all(self) -> None:
        """This replica became the active one: look at every identity (as kopf would, on
        resuming, by listing again)."""
        for key in list(self._identities):
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
        if not self.gate.active.is_set():
            await self.gate.active.wait()  # a standby replica (peering): wait for our turn
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
                # A due time already past backs off instead of running again at once.
                self.queue.schedule_next(key, delay + 0.05 if delay > 0 else delay)
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
        # A failure (an API error) is raised: the queue retries with its backoff, from 0.5 s
        # up to 5 min, rather than every few seconds for ever.
        removed = await self.identities.cleanup(body)
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
        """A JSON patch guarded by ``test`` ops. None when the identity is gone.

        A refusal (409, or 422 when a ``test`` op found the identity changed meanwhile) is
        raised: the change's own watch event runs the identity again at once (its finalizers
        are among its inputs), and a refusal that lasts backs off instead of being retried
        every 200 ms for ever.
        """
        try:
            return await self.api.patch(
                "MachineIdentity", key[0], key[1], ops, content_type="application/json-patch+json"
            )
        except NotFound:
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


def _issuers_of(spec: Spec, namespace: str) -> frozenset[IssuerKey]:
    return frozenset(
        issuer_key(c.issuer_ref.kind, c.issuer_ref.name, namespace)
        for c in spec.credentials
        if c.issuer_ref is not None
    )


def _count_failure(key: Key) -> None:
    metrics.reconcile_errors.labels("MachineIdentity").inc()


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


#: Marks a cache entry that is not one of the operator's children (only what the watch keeps
#: of any object of that kind); a child's entry is its slim JSON, which starts with "{".
_FOREIGN = "L"


def _is_child(obj: Mapping[str, Any], *labels: str) -> bool:
    have = (obj.get("metadata") or {}).get("labels") or {}
    return have.get(MANAGED_BY_KEY) == MANAGED_BY and all(
        k in have for k in (IDENTITY_LABEL, *labels)
    )


def _child_entry(entry: str | None) -> str | None:
    """The slim JSON of a child's cache entry; None for any other entry (or none)."""
    return entry if entry is not None and entry.startswith("{") else None


def _identity_entry(obj: Mapping[str, Any]) -> str:
    return _pack(_slim_identity(obj))


def _secret_entry(obj: Mapping[str, Any]) -> str:
    """A Secret's cache entry: a credential Secret's slim metadata, else its resourceVersion."""
    if _is_child(obj, CREDENTIAL_LABEL):
        return _pack(slim("Secret", obj))
    return str((obj.get("metadata") or {}).get("resourceVersion") or "-")


def _entry_version(entry: str | None) -> str:
    if entry is None:
        return ""
    mine = _child_entry(entry)
    if mine is None:
        return entry
    return str((_unpack(mine).get("metadata") or {}).get("resourceVersion") or "-")


def _service_account_entry(obj: Mapping[str, Any]) -> str:
    """A ServiceAccount's cache entry: the operator's own as a child; any other as what tells
    whether it may be adopted (uid, labels, ownerReferences)."""
    if _is_child(obj):
        return _pack(slim("ServiceAccount", obj))
    meta = obj.get("metadata") or {}
    keep = {k: meta[k] for k in ("uid", "labels", "ownerReferences") if meta.get(k)}
    return _FOREIGN + _pack(keep)

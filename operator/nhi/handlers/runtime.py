"""The operator's shared state: API client, watch caches, work queue, reconcilers.

Created once at start-up. The watch caches are kopf indexes (kopf fills them from the
initial listing before any handler runs, so a restart sees every child that exists and
re-creates nothing); the handlers hand them over on their first call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from nhi.builders.rbac import ChildKey
from nhi.k8s.cache import WriteOverlay
from nhi.k8s.client import Api, load_connection
from nhi.k8s.events import EventRecorder
from nhi.models.meta import IDENTITY_LABEL, IDENTITY_NAMESPACE_LABEL
from nhi.models.policy import IdentityPolicy
from nhi.models.workload import Workload
from nhi.reconcilers.identity import IdentityReconciler, utcnow
from nhi.reconcilers.issuer import IssuerService
from nhi.reconcilers.workqueue import WorkQueue
from nhi.settings import current as current_settings

log = logging.getLogger("nhi.runtime")

CHILD_INDEXES = (
    "nhi_sa",
    "nhi_roles",
    "nhi_rolebindings",
    "nhi_clusterroles",
    "nhi_clusterrolebindings",
    "nhi_secrets",
)
WORKLOAD_INDEXES = tuple(
    f"nhi_workloads_{plural}"
    for plural in ("deployments", "statefulsets", "daemonsets", "jobs", "cronjobs", "pods")
)
IDENTITY_INDEX = "nhi_identities"
ALL_SERVICE_ACCOUNTS_INDEX = "nhi_all_service_accounts"
POLICY_INDEX = "nhi_policies"
NAMESPACE_INDEX = "nhi_namespaces"

Key = tuple[str, str]


class Runtime:
    def __init__(self, api: Api, workers: int = 16) -> None:
        self.api = api
        self.events = EventRecorder(api)
        self.indexes: dict[str, Mapping[Any, Any]] = {}
        self.overlay = WriteOverlay()
        #: Identities as last written by us (status patches), until the watch catches up.
        self.identity_overlay: dict[Key, dict[str, Any]] = {}
        settings = current_settings()
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

    # ------------------------------------------------------------------ caches

    def capture(self, kwargs: Mapping[str, Any]) -> None:
        self.issuers.capture(kwargs)
        if len(self.indexes) < len(CHILD_INDEXES) + len(WORKLOAD_INDEXES) + 4:
            for name in (
                *CHILD_INDEXES,
                *WORKLOAD_INDEXES,
                IDENTITY_INDEX,
                POLICY_INDEX,
                NAMESPACE_INDEX,
                ALL_SERVICE_ACCOUNTS_INDEX,
            ):
                if name in kwargs:
                    self.indexes[name] = kwargs[name]

    def _values(self, index: str, key: Any) -> list[Any]:
        idx = self.indexes.get(index)
        if idx is None:
            return []
        try:
            return list(idx[key])
        except KeyError:
            return []

    def children_of(self, namespace: str, name: str) -> dict[ChildKey, dict[str, Any]]:
        """The identity's children: the watch caches, corrected by our own recent writes."""
        cached: dict[ChildKey, dict[str, Any]] = {}
        for index in CHILD_INDEXES:
            for obj in self._values(index, (namespace, name)):
                meta = obj["metadata"]
                cached[ChildKey(obj["kind"], meta.get("namespace", ""), meta["name"])] = obj
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

    def policies(self) -> Sequence[IdentityPolicy]:
        out = []
        for body in self._values(POLICY_INDEX, None):
            try:
                out.append(IdentityPolicy.from_body(body))
            except ValueError as err:
                log.warning("ignoring an invalid IdentityPolicy", extra={"error": str(err)})
        return out

    def namespace_labels(self, namespace: str) -> Mapping[str, str]:
        values = self._values(NAMESPACE_INDEX, namespace)
        return values[0] if values else {}

    def service_account(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        """Any ServiceAccount of that name (managed or not), as its labels, from the watch."""
        values = self._values(ALL_SERVICE_ACCOUNTS_INDEX, (namespace, name))
        return {"metadata": {"labels": values[0]}} if values else None

    def workloads(self, namespace: str) -> list[Workload]:
        out: list[Workload] = []
        for index in WORKLOAD_INDEXES:
            out.extend(self._values(index, namespace))
        return out

    def identity_seen(self, key: Key, deleted: bool = False) -> None:
        """Keep the identities of each namespace at hand for workload events."""
        names = self.by_namespace.setdefault(key[0], set())
        if deleted:
            names.discard(key[1])
        else:
            names.add(key[1])

    def requeue_namespace(self, namespace: str) -> None:
        """A workload changed: re-check the identities of its namespace (and only those)."""
        for name in list(self.by_namespace.get(namespace, ())):
            self.queue.add((namespace, name))

    def identity_body(self, key: Key) -> dict[str, Any] | None:
        values = self._values(IDENTITY_INDEX, key)
        cached = values[0] if values else None
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
        self.identity_overlay[(str(meta.get("namespace", "")), str(meta.get("name")))] = dict(obj)

    # ------------------------------------------------------------------ work

    def lock(self, key: Key) -> asyncio.Lock:
        lock = self.locks.get(key)
        if lock is None:
            lock = self.locks[key] = asyncio.Lock()
        return lock

    async def process(self, key: Key) -> None:
        async with self.lock(key):
            body = self.identity_body(key)
            if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
                return
            outcome = await self.identities.reconcile(body)
            if outcome.next_due is not None:
                delay = (outcome.next_due - utcnow()).total_seconds()
                self.queue.add_after(key, max(delay, 0.0) + 0.05)
            elif not outcome.ready and not outcome.stalled and not outcome.settled:
                # Waiting on something outside (an issuer): look again soon.
                self.queue.add_after(key, 10.0)

    def issuer_changed(self, issuer: tuple[str, str, str]) -> None:
        """Re-queue every identity whose credentials name the issuer."""
        kind, namespace, name = issuer
        for key in list(self.indexes.get(IDENTITY_INDEX) or ()):
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

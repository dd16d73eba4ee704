"""What the MachineIdentity controller knows from its watch caches, and which events re-check
which identities.

The operator's RBAC children are listed and watched with a server-side label selector;
Secrets (metadata only) and ServiceAccounts in one watch each, the operator's own kept as
children, any other reduced to what is needed of it; other context (workloads, namespaces,
policies) as reduced values or metadata only. MachineIdentities have such a cache too (not
kopf: its per-object workers held every listed identity at once).

:class:`IdentityCache` is the :class:`~nhi.reconcilers.identity.ChildView` the reconciler
reads, and the consumer of those watch caches: a change queues the identities it concerns,
once the caches are ready (before that, the first run of every identity sees it anyway).
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from nhi.builders.rbac import ChildKey
from nhi.handlers import entries
from nhi.models.identity import LabelSelector, MachineIdentity, Spec
from nhi.models.issuer import IssuerKey, issuer_key
from nhi.models.meta import IDENTITY_LABEL, IDENTITY_NAMESPACE_LABEL, MANAGED_BY, MANAGED_BY_KEY
from nhi.models.policy import IdentityPolicy
from nhi.models.workload import WORKLOAD_KINDS, Workload
from nhi.reconcilers.issuers import IssuerService
from nhi.runtime.caches import WatchCaches
from nhi.runtime.controller import Controller
from nhi.runtime.informer import Key, OnChange
from nhi.runtime.overlay import WriteOverlay
from nhi.runtime.store import ObjectStore, OwnerIndex, Seen, keep_in, unpack, without_managed_fields

log = logging.getLogger("nhi.runtime")

#: Children watched with a label selector (ServiceAccounts and Secrets: in one watch each
#: with the others of their kind, see IdentityCache.watch).
RBAC_KINDS = ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")
CLUSTER_KINDS = {"ClusterRole", "ClusterRoleBinding"}
MANAGED_SELECTOR = f"{MANAGED_BY_KEY}={MANAGED_BY},{IDENTITY_LABEL}"


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


def _issuers_of(spec: Spec, namespace: str) -> frozenset[IssuerKey]:
    return frozenset(
        issuer_key(c.issuer_ref.kind, c.issuer_ref.name, namespace)
        for c in spec.credentials
        if c.issuer_ref is not None
    )


class IdentityCache:
    def __init__(
        self,
        controller: Controller[Key],
        issuers: IssuerService,
        overlay: WriteOverlay,
        synced: asyncio.Event,
        namespaces: Sequence[str] = (),
        operator_namespace: str = "",
    ) -> None:
        self.controller = controller
        self.issuers = issuers
        self.overlay = overlay
        #: Set once every watch cache has listed: before, events queue nothing.
        self.synced = synced
        self.namespaces = tuple(namespaces)
        self.operator_namespace = operator_namespace
        self.store = ObjectStore()
        self.children: OwnerIndex[ChildKey] = OwnerIndex(
            overlay, entries.owner, ChildKey, (IDENTITY_LABEL, IDENTITY_NAMESPACE_LABEL)
        )
        #: Identity names by namespace, so a workload event does not scan every identity.
        self.by_namespace: dict[str, set[str]] = {}
        self._matchers: dict[Key, _Matcher] = {}
        #: The issuers each identity's X509 credentials name, and how many identities of each
        #: namespace name each issuer (what the namespace's trust bundles must hold).
        self._issuer_uses: dict[Key, frozenset[IssuerKey]] = {}
        self._issuer_counts: dict[str, dict[IssuerKey, int]] = {}
        self._workloads: dict[str, dict[tuple[str, str], Workload]] = {}
        self._service_accounts: dict[Key, str] = {}
        self._namespace_labels: dict[Key, dict[str, str]] = {}
        self._policies: dict[Key, dict[str, Any]] = {}
        self._child_secret = self._child_changer("Secret")
        self._child_service_account = self._child_changer("ServiceAccount")

    def watch(self, caches: WatchCaches) -> None:
        """Add the watch caches this consumes."""
        # The identities themselves: each kept as compact JSON without managedFields. Listed
        # a page at a time (kopf's per-object workers held every listed body at once).
        caches.add(
            "MachineIdentity", transform=entries.identity_entry, on_change=self._identity_changed
        )
        for kind in RBAC_KINDS:
            caches.add(
                kind,
                namespaced=kind not in CLUSTER_KINDS,
                label_selector=MANAGED_SELECTOR,
                transform=entries.slimmer(kind),
                on_change=self._child_changer(kind),
            )
        # One watch of every Secret, metadata only (their data is never listed): the
        # credential Secrets keep their slim metadata (credential state lives in their
        # annotations), any other Secret only its resourceVersion (the issuers' CA Secrets).
        # One watch rather than a label-selected one beside it: each credential Secret's
        # change is then served, decoded and kept once.
        caches.add(
            "Secret",
            also=self.operator_namespace,
            metadata_only=True,
            transform=entries.secret_entry,
            on_change=self._secret_changed,
        )
        # Every ServiceAccount (they are small): the operator's own as children, any other
        # by its labels (is a name taken by a foreign one?).
        caches.add(
            "ServiceAccount", transform=entries.service_account_entry, on_change=self._sa_changed
        )
        for kind in WORKLOAD_KINDS:
            caches.add(kind, transform=entries.workload(kind), on_change=self._workload_changed)
        caches.add(
            "Namespace",
            namespaced=False,
            metadata_only=True,
            transform=entries.labels,
            on_change=keep_in(self._namespace_labels),
        )
        caches.add(
            "IdentityPolicy",
            namespaced=False,
            transform=without_managed_fields,
            on_change=self._policy_changed,
        )

    # ------------------------------------------------------------------ watch events

    def _child_changer(self, kind: str) -> OnChange:
        def changed(key: Key, old: str | None, new: str | None) -> None:
            owners = self.children.changed(kind, key, old, new)
            if self.synced.is_set():
                for owner in owners:
                    if owner is not None:
                        self.controller.add(owner)

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
        mine_old, mine_new = entries.child_entry(old), entries.child_entry(new)
        if (mine_old is not None or mine_new is not None) and self._in_scope(key[0]):
            self._child_secret(key, mine_old, mine_new)
        if self.issuers.watches_secret(key[0], key[1]):
            self.issuers.secret_changed(key[0], key[1], entries.entry_version(new))

    def _sa_changed(self, key: Key, old: str | None, new: str | None) -> None:
        mine_old, mine_new = entries.child_entry(old), entries.child_entry(new)
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
                    self.controller.add((key[0], name))

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
            self.controller.requeue(self.store.keys())

    def _identity_changed(self, key: Key, old: str | None, new: str | None) -> None:
        if new is None:
            self._identity_gone(key)
        else:
            self._identity_seen(key, new, unpack(new))

    def identity_observed(self, body: Mapping[str, Any], deleted: bool = False) -> None:
        """The watch delivered an identity: keep it, and what its workloads look like."""
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        if deleted:
            self._identity_gone(key)
        else:
            self._identity_seen(key, entries.identity_entry(body), body)

    def _identity_gone(self, key: Key) -> None:
        self._set_issuer_uses(key, frozenset())
        names = self.by_namespace.get(key[0])
        if names is not None:
            names.discard(key[1])
        self.store.gone(key)
        self._matchers.pop(key, None)
        self.controller.forget(key)

    def _identity_seen(self, key: Key, entry: str, body: Mapping[str, Any]) -> None:
        self.by_namespace.setdefault(key[0], set()).add(key[1])
        # Someone changed what a reconcile acts on (spec, labels, annotations, deletion): it
        # runs at once even if the last run failed. Anything else (our own status writes,
        # children's events) waits for a failed run's retry.
        seen = self.store.observed(key, entry, body)
        if seen is Seen.ECHO:
            return
        try:
            spec = MachineIdentity.from_body(body).spec
            self._matchers[key] = _Matcher(spec.selector, spec.service_account)
            self._set_issuer_uses(key, _issuers_of(spec, key[0]))
        except Exception:
            # An invalid spec (SpecError), or a body no rule foresaw: never the watch's end.
            self._matchers[key] = _Matcher(None, None)  # its issuers: as they were
        self.controller.add(key, fresh=seen is Seen.EDITED)

    # ------------------------------------------------------------------ issuers

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

    def issuer_changed(self, issuer: tuple[str, str, str]) -> None:
        """Re-queue every identity whose credentials name the issuer."""
        kind, namespace, name = issuer
        for key, text in self.store.texts():
            if f'"{name}"' not in text:
                continue  # cheap: the issuer is not named anywhere in this identity
            body = self.store.get(key)
            for cred in ((body or {}).get("spec") or {}).get("credentials") or []:
                ref = cred.get("issuerRef") or {}
                if (
                    ref.get("name") == name
                    and ref.get("kind", "ClusterIdentityIssuer") == kind
                    and (kind == "ClusterIdentityIssuer" or key[0] == namespace)
                ):
                    self.controller.add(key)
                    break

    def requeue_for(self, namespace: str, workloads: Sequence[Workload]) -> None:
        """A workload changed: re-check the identities it matches (before or after)."""
        for name in list(self.by_namespace.get(namespace, ())):
            matcher = self._matchers.get((namespace, name))
            if matcher is None or any(matcher.wants(w) for w in workloads):
                self.controller.add((namespace, name))

    # ------------------------------------------------------------------ reads (ChildView)

    def children_of(self, namespace: str, name: str) -> dict[ChildKey, dict[str, Any]]:
        """The identity's children: the watch caches, corrected by our own recent writes."""
        return self.children.of(namespace, name)

    def written(self, obj: Mapping[str, Any]) -> None:
        self.overlay.written(obj)

    def deleted(self, key: ChildKey) -> None:
        self.overlay.deleted(key.kind, key.namespace, key.name)

    def identity_written(self, obj: Mapping[str, Any]) -> None:
        self.store.written(obj)

    def identity_body(self, key: Key) -> dict[str, Any] | None:
        return self.store.get(key)

    def identity_bodies(self) -> list[dict[str, Any]]:
        """Every identity as last seen (parsed anew: the caller may keep or change them)."""
        return self.store.bodies()

    def policy_keys(self) -> list[Key]:
        return list(self._policies)

    def policy_body(self, key: Key) -> dict[str, Any] | None:
        return self._policies.get(key)

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
        return entries.service_account(namespace, name, entry)

    def workloads(self, namespace: str) -> list[Workload]:
        return list((self._workloads.get(namespace) or {}).values())

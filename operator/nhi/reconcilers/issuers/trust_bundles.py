"""Trust bundles: one ConfigMap per namespace and name, holding the roots of every issuer used.

Every issuer publishes into the ConfigMap its ``spec.trustBundle.configMapName`` names (by
default all into ``nhi-trust-bundle``), in each namespace where identities use it. So the
content of one ConfigMap is the merge of the bundles of several issuers
(:func:`nhi.builders.trust_bundle.merge_bundles`); the issuers' side
(:mod:`nhi.reconcilers.issuers.distribution`) says which issuers and what each one
contributes now (gather), the merge is pure (decide), and the ConfigMap is written only when
it differs (apply). It is deleted when no issuer is left in it.

The operator writes or deletes only a ConfigMap it created: it creates it with a POST (which
fails when the name is taken), tags it with a provenance tag bound to the UID the API server
gave it, and makes every later write and delete conditional on that UID. A ConfigMap of that
name without the tag is left exactly as it is and reported (:class:`BundleConflict`).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nhi.builders.ca_secret import CA_CRT
from nhi.builders.issuer import configmap_text
from nhi.builders.trust_bundle import (
    TRUST_BUNDLE_PURPOSE,
    MergedBundle,
    build_trust_bundle,
    bundle_certificates,
    bundle_sources,
    is_legacy_bundle,
    legacy_bundle_source,
    merge_bundles,
    trust_bundle_labels,
)
from nhi.crypto import Certificate, fingerprint_sha256, load_cert_chain
from nhi.k8s.client import Api, ApiError, Forbidden, NotFound
from nhi.models.issuer import ISSUER_LABEL, PROVENANCE_ANNOTATION, SOURCES_ANNOTATION
from nhi.models.meta import MANAGED_SELECTOR
from nhi.policies.provenance import Origin, configmap_origin
from nhi.reconcilers.issuers.provenance import Provenance, ProvenanceKeys
from nhi.runtime.clock import Clock
from nhi.runtime.locks import KeyedLocks
from nhi.runtime.queue import WorkQueue

# The logger name these log lines have always carried (docs/observability.md).
log = logging.getLogger("nhi.reconcilers.trust_bundles")

BundleKey = tuple[str, str]  # (namespace, ConfigMap name)
SourceKey = tuple[str, str, str]  # an issuer's key: (kind, namespace or '', name)

_SWEEP: BundleKey = ("", "")
"""Queue key of the start-up sweep (no ConfigMap has an empty name)."""

NOT_SYNCED_DELAY = 1.0
"""Seconds before looking again at a bundle while the identities are still being listed."""


class BundleConflict(Exception):
    """A ConfigMap of the bundle's name exists and the operator did not create it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Contributions:
    """What the issuers used in a namespace give to one bundle now."""

    parts: Mapping[str, Sequence[Certificate]]  # "Kind/name" -> its bundle
    pending: frozenset[str] = frozenset()  # used, but its bundle is not known now


@dataclass(frozen=True)
class _Written:
    uid: str
    bundle: MergedBundle
    certs: Mapping[str, Certificate]  # what ca.crt holds, by fingerprint


def _gone_namespace(err: ApiError) -> bool:
    return isinstance(err, NotFound) or (
        isinstance(err, Forbidden) and "being terminated" in err.message
    )


def _glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def is_current(cm: Mapping[str, Any], bundle: MergedBundle, tag: str) -> bool:
    """True when the ConfigMap already is what would be written (no request needed)."""
    meta = cm.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    return (
        configmap_text(cm, CA_CRT) == bundle.pem.decode("ascii")
        and annotations.get(SOURCES_ANNOTATION) == bundle.annotation
        and annotations.get(PROVENANCE_ANNOTATION) == tag
        and all(labels.get(k) == v for k, v in trust_bundle_labels().items())
        and ISSUER_LABEL not in labels  # an earlier version's bundle, labelled for one issuer
        and not meta.get("ownerReferences")
    )


class TrustBundles:
    def __init__(
        self,
        api: Api,
        provenance: ProvenanceKeys,
        clock: Clock,
        contributions: Callable[[str, str, frozenset[SourceKey]], Awaitable[Contributions]],
        *,
        operator_namespace: str,
        namespaces: Sequence[str] = (),
        workers: int = 2,
    ) -> None:
        self.api = api
        self.provenance = provenance
        self.clock = clock.now
        #: (namespace, name, issuers certainly in use) -> what the issuers give now.
        self.contributions = contributions
        self.operator_namespace = operator_namespace
        self.namespaces = tuple(namespaces)
        #: False until the identities are all known: a bundle computed from half of them
        #: would drop roots still in use (and put them back a moment later).
        self.synced: Callable[[], bool] = lambda: True
        self.queue: WorkQueue[BundleKey] = WorkQueue(
            self._process, workers=workers, monotonic=clock.monotonic
        )
        self._written: dict[BundleKey, _Written] = {}
        self._lock: KeyedLocks[BundleKey] = KeyedLocks()
        self._reported: dict[BundleKey, str] = {}  # foreign ConfigMap -> its uid, logged once

    def start(self) -> None:
        self.queue.start()

    async def stop(self) -> None:
        await self.queue.stop()

    # ------------------------------------------------------------------ lookups

    def where(self, source: str, namespace: str | None = None) -> list[BundleKey]:
        """The bundles written with ``source`` in them (in ``namespace`` only, if given)."""
        return [
            key
            for key, written in self._written.items()
            if source in written.bundle.sources and namespace in (None, key[0])
        ]

    def in_namespace(self, namespace: str) -> list[BundleKey]:
        return [key for key in self._written if key[0] == namespace]

    def written(self, namespace: str, name: str) -> MergedBundle | None:
        w = self._written.get((namespace, name))
        return w.bundle if w is not None else None

    # ------------------------------------------------------------------ queue

    def enqueue(self, keys: Iterable[BundleKey]) -> None:
        for key in keys:
            self.queue.add(key)

    def sweep(self) -> None:
        """Look at every trust bundle the operator may have written (once, at start-up)."""
        self.queue.add(_SWEEP)

    async def _process(self, key: BundleKey) -> None:
        if not self.synced():
            self.queue.add_after(key, NOT_SYNCED_DELAY)
            return
        if key == _SWEEP:
            self.enqueue(await self.listed())
            return
        try:
            await self.sync(*key)
        except BundleConflict:
            pass  # logged in sync; identities that use the bundle report it

    async def listed(self, source: str | None = None) -> list[BundleKey]:
        """The trust bundles (this version's and earlier ones') found by listing.

        With ``source``, only those that say they hold it.
        """
        out = []
        for cm in await self._list_managed():
            meta = cm.get("metadata") or {}
            labels = meta.get("labels") or {}
            mine = all(labels.get(k) == v for k, v in trust_bundle_labels().items())
            if not mine and not is_legacy_bundle(cm):
                continue
            if source is not None and source not in bundle_sources(cm):
                if legacy_bundle_source(cm) != source:
                    continue
            out.append((str(meta.get("namespace") or ""), str(meta.get("name") or "")))
        return out

    async def _list_managed(self) -> list[dict[str, Any]]:
        try:
            return await self.api.list("ConfigMap", None, label_selector=MANAGED_SELECTOR)
        except Forbidden:
            if not self.namespaces:
                raise
        # Namespace-scoped install: the served namespaces and the operator's own. Identities
        # publish their bundle again when they reconcile, so a namespace missed here heals.
        out: list[dict[str, Any]] = []
        scopes = {self.operator_namespace, *(n for n in self.namespaces if not _glob(n))}
        for namespace in sorted(scopes):
            try:
                out.extend(
                    await self.api.list("ConfigMap", namespace, label_selector=MANAGED_SELECTOR)
                )
            except Forbidden:
                continue
        return out

    # ------------------------------------------------------------------ sync

    async def sync(
        self, namespace: str, name: str, used: frozenset[SourceKey] = frozenset()
    ) -> None:
        """Bring one bundle to what its issuers give now; BundleConflict if it is not ours.

        ``used``: issuers the caller knows to be in use (by the identity being reconciled).
        No request when what was written last is still right.
        """
        key = (namespace, name)
        async with self._lock(key):
            contrib = await self.contributions(namespace, name, used)
            now = self.clock()
            written = self._written.get(key)
            if written is not None:
                parts: dict[str, Sequence[Certificate]] = {}
                parts.update(_kept(written.bundle.sources, written.certs, contrib.pending))
                parts.update(contrib.parts)
                if merge_bundles(parts, now) == written.bundle:
                    return
            try:
                await self._apply(key, contrib, now)
            except ApiError as err:
                if not _gone_namespace(err):
                    raise
                self._written.pop(key, None)

    async def _apply(self, key: BundleKey, contrib: Contributions, now: dt.datetime) -> None:
        namespace, name = key
        provenance = await self.provenance.get()
        cm = await self.api.get("ConfigMap", namespace, name)
        origin = self._origin(cm, provenance)
        if cm is not None and origin == "foreign":
            self._written.pop(key, None)
            raise self._conflict(key, cm)
        self._reported.pop(key, None)
        parts: dict[str, Sequence[Certificate]] = {}
        if contrib.pending and cm is not None:
            attributed = dict(bundle_sources(cm))
            legacy = legacy_bundle_source(cm) if origin == "legacy" else None
            have = bundle_certificates(cm)
            if legacy is not None:
                attributed[legacy] = tuple(have)
            parts.update(_kept(attributed, have, contrib.pending))
        parts.update(contrib.parts)
        bundle = merge_bundles(parts, now)
        if not bundle.sources:
            # No issuer is used here any more (or none can say what it trusts).
            if cm is not None:
                uid = str((cm.get("metadata") or {}).get("uid") or "")
                await self.api.delete("ConfigMap", namespace, name, uid=uid)
                log.info("deleted trust bundle", extra={"namespace": namespace, "configmap": name})
            self._written.pop(key, None)
            return
        if cm is None:
            cm = await self.api.create(
                "ConfigMap", namespace, build_trust_bundle(namespace, name, bundle)
            )
        uid = str((cm.get("metadata") or {}).get("uid") or "")
        # Ours from now on (the UID is kept), even if tagging it fails now: tagged next time.
        self._written[key] = _Written(uid, MergedBundle(b"", {}), {})
        tag = provenance.tag(uid, TRUST_BUNDLE_PURPOSE)
        if not is_current(cm, bundle, tag):
            await self.api.apply(build_trust_bundle(namespace, name, bundle, uid=uid, tag=tag))
            log.info(
                "published trust bundle",
                extra={
                    "namespace": namespace,
                    "configmap": name,
                    "sources": sorted(bundle.sources),
                },
            )
        certs = load_cert_chain(bundle.pem)
        self._written[key] = _Written(uid, bundle, {fingerprint_sha256(c): c for c in certs})

    def _origin(self, cm: Mapping[str, Any] | None, provenance: Provenance) -> Origin | None:
        if cm is None:
            return None
        uid = str((cm.get("metadata") or {}).get("uid") or "")
        written = self._written.get(_key_of(cm))
        if written is not None and uid and written.uid == uid:
            return "ours"
        return configmap_origin(
            cm,
            key=provenance.key,
            purpose=TRUST_BUNDLE_PURPOSE,
            created_before=provenance.since,
            legacy=is_legacy_bundle,
        )

    def _conflict(self, key: BundleKey, cm: Mapping[str, Any]) -> BundleConflict:
        namespace, name = key
        uid = str((cm.get("metadata") or {}).get("uid") or "")
        message = (
            f"ConfigMap {namespace}/{name} exists and was not created by the operator (it has "
            f"no valid nhi.dev/provenance tag), so it is left as it is and the trust bundle is "
            f"not published there; delete or rename it, or set spec.trustBundle.configMapName "
            f"of the issuer to another name"
        )
        if self._reported.get(key) != uid:
            self._reported[key] = uid
            log.warning(
                "trust bundle name taken by a foreign ConfigMap",
                extra={"namespace": namespace, "configmap": name},
            )
        return BundleConflict(message)


def _key_of(cm: Mapping[str, Any]) -> BundleKey:
    meta = cm.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def _kept(
    attributed: Mapping[str, Sequence[str]],
    have: Mapping[str, Certificate],
    pending: Iterable[str],
) -> dict[str, list[Certificate]]:
    """The certificates a bundle attributes to sources whose own bundle is unknown now."""
    out: dict[str, list[Certificate]] = {}
    for source in pending:
        certs = [have[fp] for fp in attributed.get(source, ()) if fp in have]
        if certs:
            out[source] = certs
    return out

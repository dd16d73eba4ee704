"""IdentityIssuer / ClusterIdentityIssuer: CA material, trust bundles and CRLs.

One :class:`IssuerService` per operator. Its own work queue reconciles issuers: load or
generate the CA (gather), decide what it needs (pure, in ``nhi.policies.ca``), write the
root Secret and the CRL only when they must change (apply), and patch the status only when it
changed. The MachineIdentity reconciler asks it for a :class:`Signer` (served from memory), to
publish the trust bundle into a namespace, and to revoke serials. A namespace's trust bundle
is shared by the issuers used there (:mod:`nhi.reconcilers.issuers.trust_bundles`); this
service says what each one gives it. The CRL and trust bundle ConfigMaps are written only if
the operator created them (:mod:`nhi.reconcilers.issuers.provenance`).

Nothing here logs or reports key material: messages name Secrets, rules, subjects, serials
and fingerprints only.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from nhi import API_VERSION, metrics
from nhi.builders.ca_secret import CAMaterial, CAProblem, load_ca_secret
from nhi.builders.issuer import (
    CRL_KEY,
    RootMaterial,
    build_crl_configmap,
    build_root_secret,
    compose_bundle,
    configmap_text,
    crl_purpose,
    crl_summary,
    legacy_crl,
    owned_by,
    parse_root_secret,
    root_secret_name,
    rotate,
)
from nhi.crypto import (
    CryptoError,
    PreparedIssuer,
    PrivateKey,
    RevokedSerial,
    build_crl,
    build_self_signed_ca,
    chain_pem,
    crl_entries,
    crl_number,
    crl_pem,
    fingerprint_sha256,
    generate_key,
    key_algorithm_of,
    load_cert_chain,
    load_crl,
    next_expiry,
    serial_hex,
    still_valid,
    trusted_since,
)
from nhi.k8s.client import Api, ApiError, NotFound
from nhi.k8s.events import EventRecorder
from nhi.models import conditions as cond
from nhi.models.duration import rfc3339
from nhi.models.identity import SpecError
from nhi.models.issuer import (
    CLUSTER_ISSUER_KIND,
    ISSUER_KIND,
    ISSUER_KIND_LABEL,
    ISSUER_LABEL,
    KINDS,
    PROVENANCE_ANNOTATION,
    CASource,
    Issuer,
    IssuerKey,
    IssuerReason,
    SelfSignedSource,
    VaultSource,
    issuer_key,
)
from nhi.policies.ca import (
    crl_resign_at,
    crl_resign_reason,
    merge_revoked,
    prune_revoked,
    root_action,
    rotation_at,
)
from nhi.policies.provenance import configmap_origin
from nhi.reconcilers.issuers.provenance import Provenance, ProvenanceError, ProvenanceKeys
from nhi.reconcilers.issuers.trust_bundles import (
    BundleConflict,
    BundleKey,
    Contributions,
    TrustBundles,
)
from nhi.reconcilers.workqueue import WorkQueue

log = logging.getLogger("nhi.reconcilers.issuer")

__all__ = [
    "CLUSTER_ISSUER_INDEX",
    "ISSUER_INDEX",
    "IssuerKey",
    "IssuerNotReady",
    "IssuerOutcome",
    "IssuerService",
    "Signer",
    "compute_status",
]

#: kopf index ids (the handlers register them; :meth:`IssuerService.capture` picks them up).
ISSUER_INDEX = "nhi_identityissuers"
CLUSTER_ISSUER_INDEX = "nhi_clusteridentityissuers"
INDEX_OF_KIND = {ISSUER_KIND: ISSUER_INDEX, CLUSTER_ISSUER_KIND: CLUSTER_ISSUER_INDEX}

RETRY_INTERVAL = 10.0
"""Seconds between checks of an issuer that waits for something outside (its CA Secret)."""

RESYNC_INTERVAL = 60.0
"""Seconds between checks of a Ready issuer (a changed CA Secret, a deleted CRL)."""

_PAST_TENSE = {
    IssuerReason.CA_GENERATED: "generated root CA",
    IssuerReason.CA_ROTATED: "rotated root CA",
    IssuerReason.CA_RESTORED: "restored root CA",
}


class IssuerNotReady(Exception):
    """The issuer cannot sign now; ``reason`` is a CamelCase constant for conditions."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Signer:
    kind: str  # IdentityIssuer | ClusterIdentityIssuer
    name: str
    namespace: str  # the issuer's namespace ('' for ClusterIdentityIssuer)
    trust_domain: str
    ca: PreparedIssuer  # the CA certificate and key, checked once when loaded; signs leaves
    chain: tuple[x509.Certificate, ...]  # intermediates between ca_cert and the root, if any
    bundle_pem: bytes  # every root a verifier should trust now (old + new during CA rotation)

    @property
    def ca_cert(self) -> x509.Certificate:
        return self.ca.cert

    @property
    def ca_key(self) -> PrivateKey:
        return self.ca.key

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.name}"

    @property
    def key(self) -> IssuerKey:
        return (self.kind, self.namespace, self.name)


@dataclass
class IssuerOutcome:
    """What one reconcile found; the status is computed from it."""

    ready: bool
    reason: str
    message: str
    stalled: bool = False
    retry: bool = False  # waiting on something outside the spec: look again soon
    cert: x509.Certificate | None = None
    crl_number: int | None = None
    revoked_count: int | None = None
    next_due: dt.datetime | None = None  # the next time-based action (rotation, CRL re-sign)


@dataclass
class _Crl:
    number: int
    entries: list[RevokedSerial]
    resign_at: dt.datetime
    ca_fingerprint: str


@dataclass
class _Known:
    """In-memory state of one issuer."""

    issuer: Issuer | None = None
    signer: Signer | None = None
    problem: IssuerNotReady | None = None
    generation: int | None = None
    root: RootMaterial | None = None  # a self-signed issuer's last root, to restore it
    crl: _Crl | None = None
    crl_uid: str | None = None  # the CRL ConfigMap this process created or checked
    #: What it puts in trust bundles: its last bundle (kept while it is not Ready), and under
    #: which ConfigMap name.
    bundle: tuple[x509.Certificate, ...] | None = None
    bundle_sig: tuple[str, tuple[str, ...]] | None = None
    secrets: set[tuple[str, str]] = field(default_factory=set)  # Secrets it reads


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# ----------------------------------------------------------------------------- pure status


def compute_status(
    old: Mapping[str, Any], generation: int, outcome: IssuerOutcome, now: dt.datetime
) -> dict[str, Any]:
    """The status an outcome leads to, keeping transition times that did not change.

    ``caFingerprint`` and ``notAfter`` are removed (None in a merge patch) when no CA
    certificate could be read; ``crlNumber`` and ``revokedCount`` keep their last values.
    """
    conds: Sequence[Mapping[str, Any]] = old.get("conditions") or []
    gen = generation
    conds = cond.kstatus_conditions(
        conds,
        ready=outcome.ready,
        stalled=outcome.stalled,
        reason=outcome.reason,
        message=outcome.message,
        generation=gen,
        now=now,
    )
    status: dict[str, Any] = {
        "observedGeneration": gen,
        "conditions": conds,
        "caFingerprint": fingerprint_sha256(outcome.cert) if outcome.cert else None,
        "notAfter": rfc3339(outcome.cert.not_valid_after_utc) if outcome.cert else None,
    }
    if outcome.crl_number is not None:
        status["crlNumber"] = outcome.crl_number
    if outcome.revoked_count is not None:
        status["revokedCount"] = outcome.revoked_count
    return status


def status_changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    return any(old.get(k) != v for k, v in new.items())


def _key_of(body: Mapping[str, Any]) -> IssuerKey:
    meta = body.get("metadata") or {}
    return issuer_key(
        str(body.get("kind") or ""), str(meta.get("name") or ""), meta.get("namespace")
    )


def _material(signer: Signer | None) -> tuple[Any, ...] | None:
    """What identities depend on: a change re-queues them."""
    if signer is None:
        return None
    return (
        fingerprint_sha256(signer.ca_cert),
        tuple(fingerprint_sha256(c) for c in signer.chain),
        signer.bundle_pem,
        signer.trust_domain,
    )


def _problem(problem: IssuerNotReady | None) -> tuple[str, str] | None:
    return None if problem is None else (problem.reason, problem.message)


def _annotation(obj: Mapping[str, Any], key: str) -> str | None:
    value = ((obj.get("metadata") or {}).get("annotations") or {}).get(key)
    return value if isinstance(value, str) else None


def _ref(issuer: Issuer) -> dict[str, Any]:
    """Enough of an issuer's body to post an Event about it."""
    meta: dict[str, Any] = {"name": issuer.name, "uid": issuer.uid}
    if issuer.namespace:
        meta["namespace"] = issuer.namespace
    return {"apiVersion": API_VERSION, "kind": issuer.kind, "metadata": meta}


def _count_failure(key: IssuerKey) -> None:
    metrics.reconcile_errors.labels(key[0]).inc()


# --------------------------------------------------------------------------------- service


class IssuerService:
    def __init__(
        self,
        api: Api,
        events: EventRecorder,
        operator_namespace: str,
        clock: Callable[[], dt.datetime],
        *,
        workers: int = 4,
        retry_interval: float = RETRY_INTERVAL,
        resync_interval: float = RESYNC_INTERVAL,
        namespaces: Sequence[str] = (),
    ) -> None:
        self.api = api
        self.events = events
        self.operator_namespace = operator_namespace
        self.clock = clock
        self.retry_interval = retry_interval
        self.resync_interval = resync_interval
        #: The namespaces the operator serves (empty: all). A namespace-scoped install may not
        #: list ConfigMaps cluster-wide; it lists these instead (globs are skipped).
        self.namespaces = tuple(namespaces)
        #: Called with the issuer's key whenever its signing material or readiness changed,
        #: so identities that use it can be re-queued.
        self.on_change: Callable[[IssuerKey], None] = lambda key: None
        self.queue: WorkQueue[IssuerKey] = WorkQueue(
            self._process, workers=workers, on_retry=_count_failure
        )
        self.indexes: dict[str, Mapping[Any, Any]] = {}
        self._known: dict[IssuerKey, _Known] = {}
        self._locks: dict[IssuerKey, asyncio.Lock] = {}
        self._secret_refs: dict[tuple[str, str], set[IssuerKey]] = {}
        self._written: dict[tuple[str, str], str] = {}  # Secret -> resourceVersion we wrote
        self.provenance = ProvenanceKeys(api, operator_namespace)
        self.bundles = TrustBundles(
            api,
            self.provenance,
            clock,
            self._contributions,
            operator_namespace=operator_namespace,
            namespaces=namespaces,
        )
        #: The issuers the identities of a namespace use (the runtime's index of them). Without
        #: it, those that published into the namespace in this process.
        self.users: Callable[[str], Collection[IssuerKey]] | None = None
        self._used: dict[str, set[IssuerKey]] = {}
        self._leaving: set[IssuerKey] = set()  # cluster issuers being deleted

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.queue.start()
        self.bundles.start()

    async def stop(self) -> None:
        await self.queue.stop()
        await self.bundles.stop()

    def capture(self, kwargs: Mapping[str, Any]) -> None:
        """Keep the kopf indexes of issuers (kopf passes every index to every handler)."""
        for name in (ISSUER_INDEX, CLUSTER_ISSUER_INDEX):
            if name not in self.indexes and name in kwargs:
                self.indexes[name] = kwargs[name]

    def _lock(self, key: IssuerKey) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    def _state(self, key: IssuerKey) -> _Known:
        known = self._known.get(key)
        if known is None:
            known = self._known[key] = _Known()
        return known

    # ------------------------------------------------------------------ watch input

    def observed(self, event_type: str, body: Mapping[str, Any]) -> None:
        """An issuer event: queue it, unless only its status or metadata changed."""
        key = _key_of(body)
        if event_type == "DELETED":
            self.forget(key)
            return
        meta = body.get("metadata") or {}
        known = self._known.get(key)
        if (
            known is not None
            and not meta.get("deletionTimestamp")
            and known.generation == int(meta.get("generation") or 0)
            and (known.signer is not None or known.problem is not None)
        ):
            return  # our own status patch, a finalizer, a label: nothing to reconcile
        # A new generation is someone's edit: it runs now, even if the last run failed.
        edited = known is not None and known.generation != int(meta.get("generation") or 0)
        self.queue.add(key, fresh=edited)

    def watches_secret(self, namespace: str | None, name: str | None) -> bool:
        """True for a Secret an issuer reads (its CA Secret, or its self-signed root)."""
        return (namespace or "", name or "") in self._secret_refs

    def secret_changed(self, namespace: str | None, name: str | None, version: str) -> None:
        """A watched Secret changed: re-check the issuers that read it (not our own writes)."""
        ref = (namespace or "", name or "")
        if version and self._written.get(ref) == version:
            return
        for key in self._secret_refs.get(ref, ()):
            self.queue.add(key)

    def forget(self, key: IssuerKey) -> None:
        """The issuer is gone: drop what is kept about it and tell the identities."""
        self._track_secrets(key, set())
        known = self._known.pop(key, None)
        self._locks.pop(key, None)
        self.queue.forget(key)
        kind, namespace, name = key
        for gauge in (metrics.issuer_ready, metrics.issuer_ca_expiration):
            try:
                gauge.remove(kind, namespace, name)
            except KeyError:
                pass
        if known is not None and (known.signer is not None or known.problem is not None):
            self._notify(key)
        # Its roots leave the trust bundles it was in.
        kind, namespace, name = key
        self.bundles.enqueue(self.bundles.where(f"{kind}/{name}", namespace or None))

    def _track_secrets(self, key: IssuerKey, refs: set[tuple[str, str]]) -> None:
        known = self._known.get(key)
        old = known.secrets if known is not None else set()
        for ref in old - refs:
            users = self._secret_refs.get(ref)
            if users is not None:
                users.discard(key)
                if not users:
                    del self._secret_refs[ref]
                    self._written.pop(ref, None)
        for ref in refs:
            self._secret_refs.setdefault(ref, set()).add(key)
        if known is not None:
            known.secrets = set(refs)

    def _notify(self, key: IssuerKey) -> None:
        try:
            self.on_change(key)
        except Exception as err:
            log.warning(
                "issuer change callback failed", extra={"issuer": str(key), "error": str(err)}
            )

    def _indexed(self, key: IssuerKey) -> tuple[bool, Mapping[str, Any] | None]:
        """(whether the kopf index is known, the issuer's body from it or None)."""
        idx = self.indexes.get(INDEX_OF_KIND.get(key[0], ""))
        if idx is None:
            return False, None
        try:
            values = list(idx[key])
        except KeyError:
            return True, None
        return True, (values[0] if values else None)

    async def _fetch(self, key: IssuerKey) -> Mapping[str, Any] | None:
        """The issuer's body: from the index, or from the API server before it is known."""
        indexed, body = self._indexed(key)
        if indexed:
            return body
        kind, namespace, name = key
        got = await self.api.get(kind, namespace or None, name)
        if got is not None:
            got.setdefault("kind", kind)
        return got

    # ------------------------------------------------------------------ identity-facing API

    async def signer(self, kind: str, name: str, identity_namespace: str) -> Signer:
        """The signing material of an issuer, from memory; IssuerNotReady when it cannot sign.

        For an IdentityIssuer, the issuer lives in ``identity_namespace``. The first call for
        an issuer not reconciled yet reconciles it; later calls make no API request.
        """
        key = issuer_key(kind, name, identity_namespace)
        if kind not in KINDS:
            raise IssuerNotReady(IssuerReason.ISSUER_NOT_FOUND, f"unknown issuer kind {kind!r}")
        known = self._known.get(key)
        if known is None or (known.signer is None and known.problem is None):
            body = await self._fetch(key)
            if body is None:
                raise IssuerNotReady(IssuerReason.ISSUER_NOT_FOUND, self._not_found(key))
            if (body.get("metadata") or {}).get("deletionTimestamp"):
                raise IssuerNotReady(
                    IssuerReason.ISSUER_NOT_FOUND, f"{kind} {name} is being deleted"
                )
            await self.reconcile(body, only_if_unknown=True)
            known = self._known.get(key)
        elif self._indexed(key) == (True, None):
            raise IssuerNotReady(IssuerReason.ISSUER_NOT_FOUND, self._not_found(key))
        if known is None:
            raise IssuerNotReady(IssuerReason.ISSUER_NOT_FOUND, self._not_found(key))
        if known.signer is not None:
            if self.clock() < known.signer.ca_cert.not_valid_after_utc:
                return known.signer
            self.queue.add(key)
            raise IssuerNotReady(
                IssuerReason.CA_EXPIRED,
                f"the CA certificate of {kind} {name} expired at "
                f"{rfc3339(known.signer.ca_cert.not_valid_after_utc)}",
            )
        if known.problem is not None:
            raise IssuerNotReady(known.problem.reason, known.problem.message)
        raise IssuerNotReady(IssuerReason.API_ERROR, f"{kind} {name} has not been loaded yet")

    async def _loaded(self, key: IssuerKey) -> _Known:
        """The issuer's in-memory state, reconciling it first if this process has not yet."""
        known = self._known.get(key)
        if known is None or known.issuer is None:
            body = await self._fetch(key)
            if body is None:
                raise IssuerNotReady(IssuerReason.ISSUER_NOT_FOUND, self._not_found(key))
            await self.reconcile(body, only_if_unknown=True)
            known = self._known.get(key)
            if known is None or known.issuer is None:
                problem = known.problem if known is not None else None
                if problem is not None:
                    raise IssuerNotReady(problem.reason, problem.message)
                raise IssuerNotReady(IssuerReason.ISSUER_NOT_FOUND, self._not_found(key))
        return known

    def _not_found(self, key: IssuerKey) -> str:
        kind, namespace, name = key
        where = f" in namespace {namespace}" if namespace else ""
        return f"{kind} {name} does not exist{where}"

    def _require(self, key: IssuerKey) -> tuple[_Known, Issuer]:
        """The issuer's state and model, or IssuerNotFound (call with the issuer's lock held)."""
        known = self._known.get(key)
        if known is None or known.issuer is None:
            raise IssuerNotReady(IssuerReason.ISSUER_NOT_FOUND, self._not_found(key))
        return known, known.issuer

    async def publish_trust_bundle(self, signer: Signer, namespace: str) -> None:
        """Bring the trust bundle of ``namespace`` that the issuer publishes into up to date.

        That ConfigMap holds the roots of every issuer used in the namespace that publishes
        under the same name (:mod:`nhi.reconcilers.issuers.trust_bundles`). No request when it
        already holds the current bundles (in-memory cache). The current bundle is published
        even if ``signer`` predates a CA rotation.
        """
        key = signer.key
        known = await self._loaded(key)
        if known.issuer is None:
            raise IssuerNotReady(IssuerReason.ISSUER_NOT_FOUND, self._not_found(key))
        if self.users is None:
            self._used.setdefault(namespace, set()).add(key)
        try:
            await self.bundles.sync(
                namespace, known.issuer.trust_bundle_configmap, frozenset({key})
            )
        except BundleConflict as err:
            raise IssuerNotReady(IssuerReason.TRUST_BUNDLE_CONFLICT, err.message) from None
        except ProvenanceError as err:
            raise IssuerNotReady(IssuerReason.API_ERROR, str(err)) from None

    async def _contributions(
        self, namespace: str, name: str, used: frozenset[IssuerKey]
    ) -> Contributions:
        """What the issuers used in ``namespace`` that publish as ``name`` give it now."""
        users = set(self.users(namespace)) if self.users is not None else set()
        if self.users is None:
            users |= self._used.get(namespace, set())
        parts: dict[str, tuple[x509.Certificate, ...]] = {}
        pending: set[str] = set()
        for key in sorted(users | set(used)):
            kind, home, _ = key
            if key in self._leaving or (kind == ISSUER_KIND and home != namespace):
                continue
            try:
                known = await self._loaded(key)
            except IssuerNotReady:
                continue  # gone (its roots leave), or never valid
            issuer = known.issuer
            if issuer is None or issuer.deleting or issuer.trust_bundle_configmap != name:
                continue
            if known.bundle is not None:
                parts[issuer.ref] = known.bundle
            else:
                pending.add(issuer.ref)
        return Contributions(parts, frozenset(pending))

    def unused(self, namespace: str) -> None:
        """An issuer is no longer used in ``namespace``: its bundles there are looked at."""
        self.bundles.enqueue(self.bundles.in_namespace(namespace))

    def sweep_bundles(self) -> None:
        """Look at every trust bundle once (after a restart: issuers gone meanwhile leave)."""
        self.bundles.sweep()

    def _bundle_changed(self, key: IssuerKey, known: _Known) -> None:
        """Re-publish the bundles it is in when what it gives them changed."""
        issuer = known.issuer
        if issuer is None:
            return
        sig = (
            issuer.trust_bundle_configmap,
            tuple(fingerprint_sha256(c) for c in known.bundle or ()),
        )
        if sig == known.bundle_sig:
            return
        known.bundle_sig = sig
        targets: set[BundleKey] = set()
        for namespace, name in self.bundles.where(issuer.ref, issuer.namespace or None):
            targets.add((namespace, name))
            targets.add((namespace, issuer.trust_bundle_configmap))  # renamed: move it
        self.bundles.enqueue(sorted(targets))

    async def revoke(self, signer: Signer, serials: Sequence[tuple[int, dt.datetime]]) -> None:
        """Add (serial, revokedAt) entries to the issuer's CRL and publish it, signed by its CA.

        The published CRL is the state: its entries are read back, the new ones added (a
        serial already listed keeps one entry), the CRL number incremented and the CRL
        re-signed. Revoking only serials already listed changes nothing.
        """
        key = signer.key
        await self._loaded(key)
        async with self._lock(key):
            known, issuer = self._require(key)
            current = known.signer or signer
            new = [RevokedSerial(int(s), at.astimezone(dt.UTC)) for s, at in serials]
            number, count, added = await self._publish_crl(
                known, issuer, current, self.clock(), new=new
            )
        if added:
            await self.events.normal(
                _ref(issuer),
                IssuerReason.REVOKED,
                f"revoked {len(added)} serial(s): {crl_summary(added)} (CRL number {number}, "
                f"{count} listed)",
            )
            log.info(
                "revoked serials",
                extra={
                    "issuer": issuer.ref,
                    "serials": [serial_hex(e.serial) for e in added],
                    "crl_number": number,
                },
            )
            self.queue.add(key)

    # ------------------------------------------------------------------ work queue

    async def _process(self, key: IssuerKey) -> None:
        body = await self._fetch(key)
        if body is None:
            self.forget(key)
            return
        if (body.get("metadata") or {}).get("deletionTimestamp"):
            return
        await self.reconcile(body)

    def _schedule(self, key: IssuerKey, outcome: IssuerOutcome) -> None:
        if outcome.retry:
            self.queue.add_after(key, self.retry_interval)
        elif outcome.ready:
            delay = self.resync_interval
            if outcome.next_due is not None:
                due = (outcome.next_due - self.clock()).total_seconds()
                # A due time already past backs off (schedule_next) rather than spinning.
                delay = min(delay, due + 0.05) if due > 0 else due
            self.queue.schedule_next(key, delay)

    # ------------------------------------------------------------------ reconcile

    async def reconcile(
        self, body: Mapping[str, Any], *, only_if_unknown: bool = False
    ) -> IssuerOutcome | None:
        """Converge one issuer and write its status; None when it was skipped."""
        key = _key_of(body)
        async with self._lock(key):
            known = self._state(key)
            if only_if_unknown and (known.signer is not None or known.problem is not None):
                return None
            started = self.clock()
            outcome = await self._reconcile(key, known, body)
        self._schedule(key, outcome)
        metrics.reconcile_duration.labels(key[0]).observe((self.clock() - started).total_seconds())
        return outcome

    async def _reconcile(
        self, key: IssuerKey, known: _Known, body: Mapping[str, Any]
    ) -> IssuerOutcome:
        now = self.clock()
        meta = body.get("metadata") or {}
        generation = int(meta.get("generation") or 0)
        try:
            issuer = Issuer.from_body(body)
        except SpecError as err:
            outcome = IssuerOutcome(False, IssuerReason.INVALID_SPEC, str(err), stalled=True)
            self._settle(key, known, None, None, outcome, generation)
            await self._write_status(body, generation, outcome)
            return outcome
        known.issuer = issuer
        try:
            outcome, signer = await self._converge(issuer, known, body, now)
        except CryptoError as err:
            # An input the crypto layer refuses (a commonName too long in bytes...): the same
            # spec fails the same way, so it is Stalled until it changes.
            where = "spec.selfSigned" if isinstance(issuer.source, SelfSignedSource) else "spec"
            outcome = IssuerOutcome(
                False,
                IssuerReason.INVALID_SPEC,
                f"{where}: the CA cannot be made as specified: {err}",
                stalled=True,
            )
            self._settle(key, known, None, None, outcome, generation)
            await self._write_status(body, generation, outcome, known)
            return outcome
        except ApiError as err:
            outcome = IssuerOutcome(False, IssuerReason.API_ERROR, str(err))
            known.generation = generation
            await self._write_status(body, generation, outcome, known)
            raise
        self._settle(key, known, issuer, signer, outcome, generation)
        await self._write_status(body, generation, outcome, known)
        return outcome

    def _settle(
        self,
        key: IssuerKey,
        known: _Known,
        issuer: Issuer | None,
        signer: Signer | None,
        outcome: IssuerOutcome,
        generation: int,
    ) -> None:
        """Install the reconcile's result in memory; notify identities when it changed."""
        before, before_problem = known.signer, known.problem
        known.generation = generation
        if signer is not None and outcome.ready:
            known.signer, known.problem = signer, None
            known.bundle = tuple(load_cert_chain(signer.bundle_pem))
        else:
            known.signer = None
            known.problem = IssuerNotReady(outcome.reason, outcome.message)
        # A CA rotation, an expired previous root or a renamed bundle: every namespace that
        # has its bundle gets the new one.
        self._bundle_changed(key, known)
        if _material(before) != _material(known.signer) or _problem(before_problem) != _problem(
            known.problem
        ):
            self._notify(key)

    async def _converge(
        self, issuer: Issuer, known: _Known, body: Mapping[str, Any], now: dt.datetime
    ) -> tuple[IssuerOutcome, Signer | None]:
        source = issuer.source
        if isinstance(source, VaultSource):
            self._track_secrets(issuer.key, set())
            return (
                IssuerOutcome(
                    False,
                    IssuerReason.VAULT_NOT_SUPPORTED,
                    "spec.vault: the Vault/OpenBao source is not supported by this operator "
                    "version yet; use selfSigned or ca",
                    stalled=True,
                ),
                None,
            )
        if isinstance(source, SelfSignedSource):
            loaded = await self._self_signed(issuer, source, known, body, now)
        else:
            loaded = await self._ca(issuer, source, known, body, now)
        if isinstance(loaded, IssuerOutcome):
            return loaded, None
        material, note, due = loaded
        try:
            ca = PreparedIssuer(material.cert, material.key, now)
        except CryptoError as err:
            return (
                IssuerOutcome(
                    False,
                    IssuerReason.CA_SECRET_INVALID,
                    f"the CA cannot sign: {err}",
                    stalled=True,
                    retry=True,
                    cert=material.cert,
                ),
                None,
            )
        signer = Signer(
            kind=issuer.kind,
            name=issuer.name,
            namespace=issuer.namespace,
            trust_domain=issuer.trust_domain,
            ca=ca,
            chain=material.chain,
            bundle_pem=chain_pem(material.roots),
        )
        try:
            number, count, _ = await self._publish_crl(known, issuer, signer, now)
        except IssuerNotReady as err:
            return (
                IssuerOutcome(
                    False, err.reason, err.message, stalled=True, retry=True, cert=material.cert
                ),
                None,
            )
        assert known.crl is not None
        dues = [d for d in (due, known.crl.resign_at, material.cert.not_valid_after_utc) if d]
        message = (
            f"CA {material.cert.subject.rfc4514_string()} ({fingerprint_sha256(material.cert)}) "
            f"valid until {rfc3339(material.cert.not_valid_after_utc)}"
        )
        if note:
            message = f"{message}; {note}"
        return (
            IssuerOutcome(
                True,
                IssuerReason.CA_READY,
                message,
                cert=material.cert,
                crl_number=number,
                revoked_count=count,
                next_due=min(dues),
            ),
            signer,
        )

    # ------------------------------------------------------------------ sources

    async def _self_signed(
        self,
        issuer: Issuer,
        source: SelfSignedSource,
        known: _Known,
        body: Mapping[str, Any],
        now: dt.datetime,
    ) -> IssuerOutcome | tuple[CAMaterial, str, dt.datetime | None]:
        namespace = issuer.home_namespace(self.operator_namespace)
        name = root_secret_name(issuer)
        self._track_secrets(issuer.key, {(namespace, name)})
        secret = await self.api.get("Secret", namespace, name)
        if secret is not None and not owned_by(secret, issuer):
            return IssuerOutcome(
                False,
                IssuerReason.ROOT_SECRET_CONFLICT,
                f"Secret {namespace}/{name} exists and was not created for {issuer.ref} (it "
                f"lacks the issuer's labels); delete or rename it so the operator can keep the "
                f"root CA there",
                stalled=True,
                retry=True,
            )
        root: RootMaterial | None = None
        problem = "the Secret did not exist"
        if secret is not None:
            try:
                root = parse_root_secret(secret)
            except CAProblem as err:
                problem = err.message
        restored = False
        if root is None and known.root is not None and now < known.root.cert.not_valid_after_utc:
            # The Secret was deleted or damaged, but the root is still in memory: restore it,
            # so every certificate it signed stays trusted.
            root, restored = known.root, True
        action = root_action(root, now)
        notes: list[tuple[str, str]] = []
        if restored:
            notes.append(
                (IssuerReason.CA_RESTORED, f"restored the root CA in {namespace}/{name}: {problem}")
            )
        if action == "create":
            cert, key = await self._new_root(issuer, source, now)
            root = RootMaterial(cert=cert, key=key)
            message = (
                f"generated root CA {fingerprint_sha256(cert)} ({source.key_algorithm}, valid "
                f"until {rfc3339(cert.not_valid_after_utc)}) in {namespace}/{name}"
            )
            if secret is not None:
                message += f"; the Secret held no usable root: {problem}"
            notes.append((IssuerReason.CA_GENERATED, message))
        elif action == "rotate":
            assert root is not None
            old = root
            cert, key = await self._new_root(issuer, source, now)
            root = rotate(old, cert, key, now)
            notes.append(
                (
                    IssuerReason.CA_ROTATED,
                    f"rotated root CA {fingerprint_sha256(old.cert)} -> {fingerprint_sha256(cert)}"
                    f" (valid until {rfc3339(cert.not_valid_after_utc)}); the previous root stays "
                    f"in the trust bundle until {rfc3339(old.cert.not_valid_after_utc)}",
                )
            )
        elif action == "prune":
            assert root is not None
            root = RootMaterial(root.cert, root.key, still_valid(root.previous, now))
        assert root is not None
        if action is not None or restored:
            result = await self.api.apply(build_root_secret(issuer, namespace, root))
            version = str((result.get("metadata") or {}).get("resourceVersion") or "")
            if version:
                self._written[(namespace, name)] = version
        known.root = root
        for reason, message in notes:
            log.info(
                _PAST_TENSE.get(reason, reason),
                extra={
                    "issuer": issuer.ref,
                    "secret_name": f"{namespace}/{name}",
                    "fingerprint": fingerprint_sha256(root.cert),
                },
            )
            await self.events.normal(body, reason, message)
        previous_due = next_expiry(root.previous)
        due = min(d for d in (rotation_at(root.cert), previous_due) if d is not None)
        material = CAMaterial(
            cert=root.cert,
            key=root.key,
            chain=(),
            roots=tuple(load_cert_chain(compose_bundle([root.cert], root.previous, now))),
        )
        return material, self._pending_spec(source, root.cert), due

    @staticmethod
    async def _new_root(
        issuer: Issuer, source: SelfSignedSource, now: dt.datetime
    ) -> tuple[x509.Certificate, PrivateKey]:
        # RSA-4096 takes seconds: keep the event loop (and the other reconciles) running.
        key = await asyncio.to_thread(generate_key, source.key_algorithm)
        common_name = source.common_name or issuer.trust_domain[:64]
        return build_self_signed_ca(common_name, key, now, source.ttl), key

    @staticmethod
    def _pending_spec(source: SelfSignedSource, cert: x509.Certificate) -> str:
        """Spec changes that apply at the next rotation (the root is not replaced early)."""
        pending = []
        try:
            alg = key_algorithm_of(cert.public_key()).value
        except CryptoError:
            alg = "unsupported"
        if alg != source.key_algorithm:
            pending.append(f"keyAlgorithm {alg} -> {source.key_algorithm}")
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        # build_self_signed_ca back-dates notBefore by one minute.
        if abs(lifetime - source.ttl - dt.timedelta(minutes=1)) > dt.timedelta(seconds=1):
            pending.append("ttl")
        if not pending:
            return ""
        return (
            f"spec.selfSigned changes ({', '.join(pending)}) apply at the next rotation, at "
            f"{rfc3339(rotation_at(cert))}"
        )

    async def _ca(
        self,
        issuer: Issuer,
        source: CASource,
        known: _Known,
        body: Mapping[str, Any],
        now: dt.datetime,
    ) -> IssuerOutcome | tuple[CAMaterial, str, dt.datetime | None]:
        namespace, name = issuer.ca_secret(self.operator_namespace)
        self._track_secrets(issuer.key, {(namespace, name)})
        secret = await self.api.get("Secret", namespace, name)
        try:
            material = load_ca_secret(secret, namespace, name, now)
        except CAProblem as err:
            return IssuerOutcome(
                False, err.reason, err.message, stalled=True, retry=True, cert=err.cert
            )
        before = known.signer
        if before is not None and fingerprint_sha256(before.ca_cert) != fingerprint_sha256(
            material.cert
        ):
            await self.events.normal(
                body,
                IssuerReason.CA_CHANGED,
                f"the CA in Secret {namespace}/{name} changed: {fingerprint_sha256(before.ca_cert)}"
                f" -> {fingerprint_sha256(material.cert)}",
            )
        due = next_expiry((*material.roots, *material.chain))
        return material, "", due

    # ------------------------------------------------------------------ CRL

    async def _publish_crl(
        self,
        known: _Known,
        issuer: Issuer,
        signer: Signer,
        now: dt.datetime,
        new: Sequence[RevokedSerial] = (),
    ) -> tuple[int, int, list[RevokedSerial]]:
        """Keep the CRL current; add ``new`` entries. (number, listed, entries added)."""
        namespace = issuer.home_namespace(self.operator_namespace)
        name = issuer.crl_configmap
        cm = await self.api.get("ConfigMap", namespace, name)
        origin = await self._crl_origin(cm, issuer, known) if cm is not None else None
        if cm is not None and origin == "foreign":
            known.crl_uid = None
            raise IssuerNotReady(IssuerReason.CRL_CONFLICT, self._crl_conflict(issuer, cm))
        existing: x509.CertificateRevocationList | None = None
        text = configmap_text(cm, CRL_KEY)
        if text:
            try:
                existing = load_crl(text)
            except CryptoError:
                existing = None
        # Entries only ever add revocations, so the union of what is published and what this
        # process published last is safe even if the ConfigMap was edited or lost.
        old_entries = crl_entries(existing) if existing is not None else []
        cached = known.crl
        if cached is not None:
            old_entries, _ = merge_revoked(old_entries, cached.entries)
        anchors = [signer.ca_cert, *load_cert_chain(signer.bundle_pem)]
        kept = prune_revoked(old_entries, trusted_since(anchors))
        entries, _ = merge_revoked(kept, new)
        listed = {e.serial for e in kept}
        added = [e for e in entries if e.serial not in listed]
        why = crl_resign_reason(existing, signer.ca_cert, now, issuer.crl_validity)
        if (
            existing is not None
            and why is None
            and ({e.serial for e in crl_entries(existing)} != {e.serial for e in entries})
        ):
            why = "entries changed"
        number = max(
            crl_number(existing) if existing is not None else 0,
            cached.number if cached is not None else 0,
        )
        provenance = await self._provenance()
        uid = str(((cm or {}).get("metadata") or {}).get("uid") or "")
        tag = provenance.tag(uid, crl_purpose(issuer)) if uid else ""
        untagged = cm is None or _annotation(cm, PROVENANCE_ANNOTATION) != tag
        if why is None and untagged:
            why = "provenance"  # created by an earlier version, or tagging it failed
        if why is not None:
            number += 1
            crl = build_crl(
                ca_cert=signer.ca_cert,
                ca_key=signer.ca_key,
                revoked=entries,
                now=now,
                next_update=issuer.crl_validity,
                crl_number=number,
            )
            pem = crl_pem(crl)
            if cm is None:
                # POST: fails if the name was taken meanwhile; nothing is overwritten.
                created = await self.api.create(
                    "ConfigMap", namespace, build_crl_configmap(issuer, namespace, pem)
                )
                uid = str((created.get("metadata") or {}).get("uid") or "")
                tag = provenance.tag(uid, crl_purpose(issuer))
            known.crl_uid = uid
            # Conditional on the UID: never writes a namesake created meanwhile.
            await self.api.apply(build_crl_configmap(issuer, namespace, pem, uid=uid, tag=tag))
            log.info(
                "published CRL",
                extra={
                    "issuer": issuer.ref,
                    "configmap": f"{namespace}/{name}",
                    "crl_number": number,
                    "revoked": len(entries),
                    "why": why,
                },
            )
        else:
            assert existing is not None
            crl = existing
        known.crl = _Crl(
            number=number,
            entries=entries,
            resign_at=crl_resign_at(crl, issuer.crl_validity),
            ca_fingerprint=fingerprint_sha256(signer.ca_cert),
        )
        return number, len(entries), added

    async def _provenance(self) -> Provenance:
        try:
            return await self.provenance.get()
        except ProvenanceError as err:
            raise IssuerNotReady(IssuerReason.API_ERROR, str(err)) from None

    async def _crl_origin(self, cm: Mapping[str, Any], issuer: Issuer, known: _Known | None) -> str:
        uid = str((cm.get("metadata") or {}).get("uid") or "")
        if known is not None and uid and known.crl_uid == uid:
            return "ours"
        provenance = await self._provenance()
        return configmap_origin(
            cm,
            key=provenance.key,
            purpose=crl_purpose(issuer),
            created_before=provenance.since,
            legacy=legacy_crl(issuer),
        )

    def _crl_conflict(self, issuer: Issuer, cm: Mapping[str, Any]) -> str:
        """Why the CRL cannot be published there, naming the field and who has the name."""
        home = issuer.home_namespace(self.operator_namespace)
        where = f"ConfigMap {home}/{issuer.crl_configmap} (spec.crl.configMapName)"
        other = next(
            (
                k.issuer.ref
                for key, k in self._known.items()
                if key != issuer.key
                and k.issuer is not None
                and k.issuer.crl_configmap == issuer.crl_configmap
                and k.issuer.home_namespace(self.operator_namespace) == home
            ),
            None,
        )
        if other is None:
            labels = (cm.get("metadata") or {}).get("labels") or {}
            if labels.get(ISSUER_KIND_LABEL) and labels.get(ISSUER_LABEL):
                other = f"{labels[ISSUER_KIND_LABEL]}/{labels[ISSUER_LABEL]}"
        holder = (
            f"is the CRL of {other}"
            if other is not None
            else "exists and was not created by the operator for this issuer"
        )
        return (
            f"{where} {holder}; it is left as it is. Set spec.crl.configMapName to a name no "
            f"other issuer or user uses in {home}, or remove it to use the default, one per "
            f"issuer"
        )

    # ------------------------------------------------------------------ deletion

    async def cleanup(self, body: Mapping[str, Any]) -> list[str]:
        """A ClusterIdentityIssuer is being deleted: remove what the operator created for it.

        Its root Secret and its CRL, and its roots from the trust bundles (a bundle left with
        no issuer is deleted). Only objects the operator created are touched. (A namespaced
        issuer's Secret and CRL carry an owner reference: the garbage collector removes them;
        its roots leave the bundles when the operator sees it gone.)
        """
        key = _key_of(body)
        removed: list[str] = []
        try:
            issuer = Issuer.from_body(body)
        except ValueError:
            self.forget(key)  # an invalid spec made nothing that needs removing here
            return removed
        home = issuer.home_namespace(self.operator_namespace)
        self._leaving.add(key)
        async with self._lock(key):
            secret = await self.api.get("Secret", home, root_secret_name(issuer))
            if secret is not None and owned_by(secret, issuer):
                uid = (secret.get("metadata") or {}).get("uid")
                if await self.api.delete("Secret", home, root_secret_name(issuer), uid=uid):
                    removed.append(f"Secret/{home}/{root_secret_name(issuer)}")
            known = self._known.get(key)
            cm = await self.api.get("ConfigMap", home, issuer.crl_configmap)
            if cm is not None and await self._crl_origin(cm, issuer, known) != "foreign":
                uid = (cm.get("metadata") or {}).get("uid")
                if await self.api.delete("ConfigMap", home, issuer.crl_configmap, uid=uid):
                    removed.append(f"ConfigMap/{home}/{issuer.crl_configmap}")
        # Without the issuer's lock: a bundle's sync may load other issuers.
        targets = set(self.bundles.where(issuer.ref)) | set(await self.bundles.listed(issuer.ref))
        for namespace, name in sorted(targets):
            try:
                await self.bundles.sync(namespace, name)
            except BundleConflict:
                continue
            left = self.bundles.written(namespace, name)
            removed.append(f"ConfigMap/{namespace}/{name}" + (" (its roots)" if left else ""))
        self.forget(key)
        self._leaving.discard(key)
        return removed

    # ------------------------------------------------------------------ status

    async def _write_status(
        self,
        body: Mapping[str, Any],
        generation: int,
        outcome: IssuerOutcome,
        known: _Known | None = None,
    ) -> None:
        meta = body.get("metadata") or {}
        kind = str(body.get("kind") or "")
        namespace, name = meta.get("namespace") or None, str(meta.get("name") or "")
        old: Mapping[str, Any] = body.get("status") or {}
        if known is not None and known.crl is not None and outcome.crl_number is None:
            outcome.crl_number, outcome.revoked_count = known.crl.number, len(known.crl.entries)
        status = compute_status(old, generation, outcome, self.clock())
        if status_changed(old, status):
            try:
                await self.api.patch(
                    kind, namespace, name, {"status": status}, subresource="status"
                )
            except NotFound:
                return
            ready = cond.get_condition(old.get("conditions") or [], cond.READY)
            same = bool(
                ready
                and ready.get("reason") == outcome.reason
                and ready.get("message") == outcome.message
            )
            if not outcome.ready and not same:
                await self.events.warning(body, outcome.reason, outcome.message)
                log.warning(
                    "issuer not ready",
                    extra={
                        "issuer": f"{kind}/{name}",
                        "namespace": namespace or "",
                        "reason": outcome.reason,
                        "detail": outcome.message,
                    },
                )
        labels = (kind, namespace or "", name)
        metrics.issuer_ready.labels(*labels).set(1 if outcome.ready else 0)
        if outcome.cert is not None:
            metrics.issuer_ca_expiration.labels(*labels).set(
                outcome.cert.not_valid_after_utc.timestamp()
            )

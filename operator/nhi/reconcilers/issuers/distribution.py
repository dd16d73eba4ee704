"""Trust-bundle distribution, the issuers' side: what each issuer gives the bundles, and where.

The ConfigMaps themselves are written by :class:`TrustBundles`. This part keeps, for each
issuer, the roots it puts in bundles (its last ones, kept while it is not Ready) and the
namespaces that use it, and tells the bundles to look again when those change: a CA
rotation, an expired previous root, a renamed bundle, an issuer gone or no longer used.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence

from nhi.crypto import Certificate, fingerprint_sha256
from nhi.k8s.client import Api
from nhi.models.issuer import ISSUER_KIND, Issuer, IssuerKey, IssuerReason
from nhi.reconcilers.issuers.provenance import ProvenanceError, ProvenanceKeys
from nhi.reconcilers.issuers.signers import IssuerNotReady, Signer
from nhi.reconcilers.issuers.trust_bundles import (
    BundleConflict,
    BundleKey,
    Contributions,
    TrustBundles,
)
from nhi.runtime.clock import Clock


class TrustBundleDistribution:
    def __init__(
        self,
        api: Api,
        provenance: ProvenanceKeys,
        clock: Clock,
        loaded: Callable[[IssuerKey], Awaitable[Issuer]],
        *,
        operator_namespace: str,
        namespaces: Sequence[str] = (),
    ) -> None:
        #: The issuer's model once its controller reconciled it (waiting for that if need
        #: be); IssuerNotReady when it does not exist or its spec is invalid.
        self.loaded = loaded
        self.bundles = TrustBundles(
            api,
            provenance,
            clock,
            self.contributions,
            operator_namespace=operator_namespace,
            namespaces=namespaces,
        )
        #: The issuers the identities of a namespace use (the runtime's index of them). Without
        #: it, those that published into the namespace in this process.
        self.users: Callable[[str], Collection[IssuerKey]] | None = None
        self._used: dict[str, set[IssuerKey]] = {}
        #: What each issuer puts in trust bundles (its last roots), and under which name.
        self._roots: dict[IssuerKey, tuple[Certificate, ...]] = {}
        self._signatures: dict[IssuerKey, tuple[str, tuple[str, ...]]] = {}
        self.leaving: set[IssuerKey] = set()  # cluster issuers being deleted

    def start(self) -> None:
        self.bundles.start()

    async def stop(self) -> None:
        await self.bundles.stop()

    # ------------------------------------------------------------------ identity-facing

    async def publish(self, signer: Signer, namespace: str) -> None:
        """Bring the trust bundle of ``namespace`` that the issuer publishes into up to date.

        That ConfigMap holds the roots of every issuer used in the namespace that publishes
        under the same name. No request when it already holds the current bundles (in-memory
        cache). The current bundle is published even if ``signer`` predates a CA rotation.
        """
        key = signer.key
        issuer = await self.loaded(key)
        if self.users is None:
            self._used.setdefault(namespace, set()).add(key)
        try:
            await self.bundles.sync(namespace, issuer.trust_bundle_configmap, frozenset({key}))
        except BundleConflict as err:
            raise IssuerNotReady(IssuerReason.TRUST_BUNDLE_CONFLICT, err.message) from None
        except ProvenanceError as err:
            raise IssuerNotReady(IssuerReason.API_ERROR, str(err)) from None

    def unused(self, namespace: str) -> None:
        """An issuer is no longer used in ``namespace``: its bundles there are looked at."""
        self.bundles.enqueue(self.bundles.in_namespace(namespace))

    def sweep(self) -> None:
        """Look at every trust bundle once (after a restart: issuers gone meanwhile leave)."""
        self.bundles.sweep()

    # ------------------------------------------------------------------ bundle-facing

    async def contributions(
        self, namespace: str, name: str, used: frozenset[IssuerKey]
    ) -> Contributions:
        """What the issuers used in ``namespace`` that publish as ``name`` give it now."""
        users = set(self.users(namespace)) if self.users is not None else set()
        if self.users is None:
            users |= self._used.get(namespace, set())
        parts: dict[str, tuple[Certificate, ...]] = {}
        pending: set[str] = set()
        for key in sorted(users | set(used)):
            kind, home, _ = key
            if key in self.leaving or (kind == ISSUER_KIND and home != namespace):
                continue
            try:
                issuer = await self.loaded(key)
            except IssuerNotReady:
                continue  # gone (its roots leave), or never valid
            if issuer.deleting or issuer.trust_bundle_configmap != name:
                continue
            roots = self._roots.get(key)
            if roots is not None:
                parts[issuer.ref] = roots
            else:
                pending.add(issuer.ref)
        return Contributions(parts, frozenset(pending))

    # ------------------------------------------------------------------ controller-facing

    def settled(
        self, key: IssuerKey, issuer: Issuer | None, roots: tuple[Certificate, ...] | None
    ) -> None:
        """The controller settled an issuer: ``roots`` are its roots now (None: it is not
        Ready, its last roots stay). Re-publish the bundles it is in when what it gives
        them changed."""
        if roots is not None:
            self._roots[key] = roots
        if issuer is None:
            return
        signature = (
            issuer.trust_bundle_configmap,
            tuple(fingerprint_sha256(c) for c in self._roots.get(key, ())),
        )
        if signature == self._signatures.get(key):
            return
        self._signatures[key] = signature
        targets: set[BundleKey] = set()
        for namespace, name in self.bundles.where(issuer.ref, issuer.namespace or None):
            targets.add((namespace, name))
            targets.add((namespace, issuer.trust_bundle_configmap))  # renamed: move it
        self.bundles.enqueue(sorted(targets))

    def forgotten(self, key: IssuerKey) -> None:
        """The issuer is gone: its roots leave the trust bundles it was in."""
        self._roots.pop(key, None)
        self._signatures.pop(key, None)
        kind, namespace, name = key
        self.bundles.enqueue(self.bundles.where(f"{kind}/{name}", namespace or None))

    async def remove(self, issuer: Issuer) -> list[str]:
        """A cluster issuer is being deleted: every bundle with its roots is synced without
        them (deleted when no issuer is left in it). Call with the issuer in ``leaving``."""
        removed: list[str] = []
        targets = set(self.bundles.where(issuer.ref)) | set(await self.bundles.listed(issuer.ref))
        for namespace, name in sorted(targets):
            try:
                await self.bundles.sync(namespace, name)
            except BundleConflict:
                continue
            left = self.bundles.written(namespace, name)
            removed.append(f"ConfigMap/{namespace}/{name}" + (" (its roots)" if left else ""))
        return removed

"""One object for the rest of the operator: the issuer parts, built and wired together.

The runtime builds one :class:`IssuerService` and hands it its watch caches (:meth:`watch`);
identities ask it for signers, trust bundles and revocations. Each call goes to the part
that owns the state concerned; this class keeps none of its own.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from nhi.crypto import serial_hex
from nhi.k8s.client import Api
from nhi.k8s.events import EventRecorder
from nhi.models.identity import SpecError
from nhi.models.issuer import (
    CLUSTER_ISSUER_KIND,
    ISSUER_KIND,
    Issuer,
    IssuerKey,
    IssuerReason,
    VaultSource,
    issuer_key,
)
from nhi.reconcilers.issuers.controller import (
    RESYNC_INTERVAL,
    RETRY_INTERVAL,
    IssuerController,
    key_of,
)
from nhi.reconcilers.issuers.crl import CrlPublisher
from nhi.reconcilers.issuers.distribution import TrustBundleDistribution
from nhi.reconcilers.issuers.provenance import ProvenanceKeys
from nhi.reconcilers.issuers.signers import IssuerNotReady, Signer
from nhi.reconcilers.issuers.sources import CASources, SecretWatch, VaultSigning
from nhi.reconcilers.issuers.status import IssuerOutcome
from nhi.runtime.caches import WatchCaches
from nhi.runtime.clock import Clock
from nhi.runtime.store import without_managed_fields
from nhi.vault import VaultClient


class IssuerService:
    def __init__(
        self,
        api: Api,
        events: EventRecorder,
        operator_namespace: str,
        clock: Clock,
        *,
        workers: int = 4,
        retry_interval: float = RETRY_INTERVAL,
        resync_interval: float = RESYNC_INTERVAL,
        namespaces: Sequence[str] = (),
    ) -> None:
        secrets = SecretWatch()
        self.sources = CASources(api, events, operator_namespace, secrets)
        self.provenance = ProvenanceKeys(api, operator_namespace)
        crl = CrlPublisher(
            api, self.provenance, operator_namespace, issuers=lambda: self.controller.issuers()
        )
        # ``namespaces``: those the operator serves (empty: all). A namespace-scoped install
        # may not list ConfigMaps cluster-wide; it lists these instead (globs are skipped).
        self.distribution = TrustBundleDistribution(
            api,
            self.provenance,
            clock,
            loaded=lambda key: self.controller.loaded(key),
            operator_namespace=operator_namespace,
            namespaces=namespaces,
        )
        self.controller = IssuerController(
            api,
            events,
            clock,
            sources=self.sources,
            crl=crl,
            distribution=self.distribution,
            secrets=secrets,
            workers=workers,
            retry_interval=retry_interval,
            resync_interval=resync_interval,
        )
        self.signers = self.controller.signers
        self.queue = self.controller.queue
        self.bundles = self.distribution.bundles

    # ------------------------------------------------------------------ wiring

    @property
    def on_change(self) -> Callable[[IssuerKey], None]:
        """Called with an issuer's key when its signing material or readiness changed."""
        return self.controller.on_change

    @on_change.setter
    def on_change(self, callback: Callable[[IssuerKey], None]) -> None:
        self.controller.on_change = callback

    @property
    def users(self) -> Callable[[str], Collection[IssuerKey]] | None:
        """The issuers the identities of a namespace use (the runtime's index of them)."""
        return self.distribution.users

    @users.setter
    def users(self, users: Callable[[str], Collection[IssuerKey]] | None) -> None:
        self.distribution.users = users

    def start(self) -> None:
        self.controller.start()
        self.distribution.start()

    async def stop(self) -> None:
        await self.controller.stop()
        await self.distribution.stop()
        self.sources.vault_pool.close()

    # ------------------------------------------------------------------ watch input

    def watch(
        self,
        caches: WatchCaches,
        *,
        ready: asyncio.Event | None = None,
        active: asyncio.Event | None = None,
    ) -> None:
        """List and watch the issuers in ``caches``; reconcile them once ``ready`` (the caches
        are listed) and while ``active`` (this replica leads)."""
        for kind, namespaced in ((ISSUER_KIND, True), (CLUSTER_ISSUER_KIND, False)):
            informers = caches.add(
                kind,
                namespaced=namespaced,
                transform=_entry(kind),
                on_change=self.controller.changed(kind),
            )
            self.controller.index.watch(informers)
        self.controller.controller.gate(ready=ready, active=active)

    def watches_secret(self, namespace: str | None, name: str | None) -> bool:
        return self.controller.watches_secret(namespace, name)

    def secret_changed(self, namespace: str | None, name: str | None, version: str) -> None:
        self.controller.secret_changed(namespace, name, version)

    def forget(self, key: IssuerKey) -> None:
        self.controller.forget(key)

    def requeue_all(self) -> None:
        """Look at every listed issuer (this replica became the active one)."""
        for informers in self.controller.index.informers.values():
            for informer in informers:
                for body in list(informer.objects.values()):
                    self.queue.add(key_of(body))

    async def reconcile(self, body: Mapping[str, Any]) -> IssuerOutcome | None:
        """Converge one issuer from ``body`` now, write its status and plan its next look."""
        key = key_of(body)
        result = await self.controller.reconcile_body(body)
        self.controller.requeue(key, result)
        return result.outcome

    async def cleanup(self, body: Mapping[str, Any]) -> list[str]:
        return await self.controller.cleanup(body)

    # ------------------------------------------------------------------ identity-facing

    async def signer(self, kind: str, name: str, identity_namespace: str) -> Signer:
        return await self.signers.signer(kind, name, identity_namespace)

    async def vault_client(self, kind: str, name: str, identity_namespace: str) -> VaultClient:
        """The Vault client (server and login) of a Ready issuer with a ``vault`` source;
        IssuerNotReady otherwise."""
        signer = await self.signers.signer(kind, name, identity_namespace)
        remote = signer.remote
        if remote is None or not isinstance(remote.signing, VaultSigning):
            raise IssuerNotReady(
                IssuerReason.INVALID_SPEC,
                f"spec.vault.issuerRef: {kind} {name} has no vault source; name an issuer "
                f"whose Vault keeps the credentials",
            )
        return remote.signing.client

    async def publish_trust_bundle(self, signer: Signer, namespace: str) -> None:
        await self.distribution.publish(signer, namespace)

    async def revoke(self, signer: Signer, serials: Sequence[tuple[int, dt.datetime]]) -> None:
        await self.controller.revoke(signer, serials)

    async def revoke_later(
        self, kind: str, name: str, identity_namespace: str, serials: Sequence[int]
    ) -> bool:
        """Serials of an issuer that cannot sign now: for a vault source, kept in memory and
        in its status (``status.vault.pendingRevocations``) and sent when its server answers
        again, after a restart too. False for any other issuer (nothing is kept)."""
        key = issuer_key(kind, name, identity_namespace)
        body = await self.controller.index.fetch(key)
        if body is None:
            return False
        try:
            issuer = Issuer.from_body(body)
        except SpecError:
            return False
        if not isinstance(issuer.source, VaultSource):
            return False
        waiting = self.sources.vault.defer(key, body, [serial_hex(s) for s in serials])
        await self.controller.status.record_unconfirmed(issuer, waiting)
        return True

    def unused(self, namespace: str) -> None:
        self.distribution.unused(namespace)

    def sweep_bundles(self) -> None:
        self.distribution.sweep()


def _entry(kind: str) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    """What the watch cache keeps of an issuer: its body (they are few), with its kind."""

    def entry(obj: Mapping[str, Any]) -> dict[str, Any]:
        body = without_managed_fields(obj)
        body["kind"] = kind
        return body

    return entry

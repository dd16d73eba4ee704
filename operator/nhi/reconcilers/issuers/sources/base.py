"""The interface of a CA source, and the Secrets the sources read.

A source turns an issuer's ``spec`` into CA material: the certificate and key it signs with,
its chain and the roots verifiers trust (:class:`Loaded`), or the reason it cannot
(an :class:`IssuerOutcome` that is not Ready). Each source says which Secrets it reads
(:class:`SecretWatch`), so a change to one of them re-checks the issuer at once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nhi.builders.ca_secret import CAMaterial
from nhi.crypto import Certificate
from nhi.k8s.client import Api
from nhi.k8s.events import EventRecorder
from nhi.models.issuer import Issuer, IssuerKey
from nhi.reconcilers.issuers.signers import RemoteCA
from nhi.reconcilers.issuers.status import IssuerOutcome

SecretRef = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class Loaded:
    """CA material a source made ready to sign with."""

    material: CAMaterial
    note: str = ""  # added to the Ready message (spec changes waiting for a rotation)
    due: dt.datetime | None = None  # the next time the source must act (a rotation, expiry)


@dataclass(frozen=True)
class RemoteLoaded:
    """A CA whose key stays on a server (Vault/OpenBao): it signs CSRs; its CRL is mirrored."""

    ca: RemoteCA
    chain: tuple[Certificate, ...]  # intermediates sent with each leaf
    roots: tuple[Certificate, ...]
    crl_pem: str  # the server's CRL, to mirror into the issuer's CRL ConfigMap
    vault: dict[str, Any]  # status.vault: address, crlURL, maxTTL, pendingRevocations
    note: str = ""


@dataclass(frozen=True)
class LoadRequest:
    """What a source is asked to load: the issuer (``body`` for its Events) at ``now``.

    ``current`` is the CA the issuer signs with so far (None before its first load).
    """

    issuer: Issuer
    body: Mapping[str, Any]
    now: dt.datetime
    current: Certificate | None = None


class CASourceStrategy:
    """One kind of ``spec`` CA source (selfSigned, ca...): what every source is given."""

    #: The spec field named when the CA cannot be made as specified.
    field = "spec"

    def __init__(
        self, api: Api, events: EventRecorder, operator_namespace: str, secrets: SecretWatch
    ) -> None:
        self.api = api
        self.events = events
        self.operator_namespace = operator_namespace
        self.secrets = secrets

    async def load(self, req: LoadRequest) -> Loaded | RemoteLoaded | IssuerOutcome:
        """The CA material of ``req.issuer`` now, or why there is none."""
        raise NotImplementedError

    def forget(self, key: IssuerKey) -> None:
        """The issuer is gone: drop what is kept about it (nothing, unless a source keeps state)."""


class SecretWatch:
    """The Secrets each issuer reads, and the versions of those the operator wrote itself."""

    def __init__(self) -> None:
        self._readers: dict[SecretRef, set[IssuerKey]] = {}
        self._reads: dict[IssuerKey, set[SecretRef]] = {}
        self._written: dict[SecretRef, str] = {}  # Secret -> resourceVersion we wrote

    def track(self, key: IssuerKey, refs: set[SecretRef]) -> None:
        """``key`` reads ``refs`` now (and no other Secret)."""
        for ref in self._reads.get(key, set()) - refs:
            readers = self._readers.get(ref)
            if readers is not None:
                readers.discard(key)
                if not readers:
                    del self._readers[ref]
                    self._written.pop(ref, None)
        for ref in refs:
            self._readers.setdefault(ref, set()).add(key)
        if refs:
            self._reads[key] = set(refs)
        else:
            self._reads.pop(key, None)

    def wrote(self, ref: SecretRef, version: str) -> None:
        if version:
            self._written[ref] = version

    def watches(self, ref: SecretRef) -> bool:
        return ref in self._readers

    def readers(self, ref: SecretRef, version: str) -> list[IssuerKey]:
        """The issuers to re-check after ``ref`` changed to ``version`` (none for our write)."""
        if version and self._written.get(ref) == version:
            return []
        return list(self._readers.get(ref, ()))

"""CA sources: one strategy per kind of ``spec`` source, behind :class:`CASourceStrategy`.

``selfSigned`` (:mod:`.self_signed`), ``ca`` (:mod:`.secret`) and ``vault``
(:mod:`.vault`: Vault or OpenBao signs CSRs; the key stays in the operator).
"""

from __future__ import annotations

from nhi.k8s.client import Api
from nhi.k8s.events import EventRecorder
from nhi.models.issuer import Issuer, IssuerKey, SelfSignedSource, VaultSource
from nhi.reconcilers.issuers.sources.base import (
    CASourceStrategy,
    Loaded,
    LoadRequest,
    RemoteLoaded,
    SecretWatch,
)
from nhi.reconcilers.issuers.sources.secret import SecretCA
from nhi.reconcilers.issuers.sources.self_signed import SelfSignedCA
from nhi.reconcilers.issuers.sources.vault import VaultCA, VaultSigning
from nhi.vault import VaultPool

__all__ = [
    "CASourceStrategy",
    "CASources",
    "LoadRequest",
    "Loaded",
    "RemoteLoaded",
    "SecretCA",
    "SecretWatch",
    "SelfSignedCA",
    "VaultCA",
    "VaultSigning",
]


class CASources:
    """The strategy for each kind of source."""

    def __init__(
        self,
        api: Api,
        events: EventRecorder,
        operator_namespace: str,
        secrets: SecretWatch,
        vault_pool: VaultPool | None = None,
    ) -> None:
        self.self_signed = SelfSignedCA(api, events, operator_namespace, secrets)
        self.secret = SecretCA(api, events, operator_namespace, secrets)
        self.vault_pool = vault_pool or VaultPool()
        self.vault = VaultCA(api, events, operator_namespace, secrets, self.vault_pool)

    def of(self, issuer: Issuer) -> CASourceStrategy:
        if isinstance(issuer.source, SelfSignedSource):
            return self.self_signed
        if isinstance(issuer.source, VaultSource):
            return self.vault
        return self.secret

    def forget(self, key: IssuerKey) -> None:
        for strategy in (self.self_signed, self.secret, self.vault):
            strategy.forget(key)

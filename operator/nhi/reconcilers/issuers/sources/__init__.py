"""CA sources: one strategy per kind of ``spec`` source, behind :class:`CASourceStrategy`.

``selfSigned`` (:mod:`.self_signed`) and ``ca`` (:mod:`.secret`); ``vault`` is recognised
and reported as not supported yet (:class:`VaultNotSupported`).
"""

from __future__ import annotations

from nhi.k8s.client import Api
from nhi.k8s.events import EventRecorder
from nhi.models.issuer import Issuer, IssuerKey, IssuerReason, SelfSignedSource, VaultSource
from nhi.reconcilers.issuers.sources.base import (
    CASourceStrategy,
    Loaded,
    LoadRequest,
    SecretWatch,
)
from nhi.reconcilers.issuers.sources.secret import SecretCA
from nhi.reconcilers.issuers.sources.self_signed import SelfSignedCA
from nhi.reconcilers.issuers.status import IssuerOutcome

__all__ = [
    "CASourceStrategy",
    "CASources",
    "LoadRequest",
    "Loaded",
    "SecretCA",
    "SecretWatch",
    "SelfSignedCA",
    "VaultNotSupported",
]


class VaultNotSupported(CASourceStrategy):
    field = "spec.vault"

    async def load(self, req: LoadRequest) -> Loaded | IssuerOutcome:
        self.secrets.track(req.issuer.key, set())
        return IssuerOutcome(
            False,
            IssuerReason.VAULT_NOT_SUPPORTED,
            "spec.vault: the Vault/OpenBao source is not supported by this operator "
            "version yet; use selfSigned or ca",
            stalled=True,
        )


class CASources:
    """The strategy for each kind of source."""

    def __init__(
        self, api: Api, events: EventRecorder, operator_namespace: str, secrets: SecretWatch
    ) -> None:
        self.self_signed = SelfSignedCA(api, events, operator_namespace, secrets)
        self.secret = SecretCA(api, events, operator_namespace, secrets)
        self.vault = VaultNotSupported(api, events, operator_namespace, secrets)

    def of(self, issuer: Issuer) -> CASourceStrategy:
        if isinstance(issuer.source, SelfSignedSource):
            return self.self_signed
        if isinstance(issuer.source, VaultSource):
            return self.vault
        return self.secret

    def forget(self, key: IssuerKey) -> None:
        for strategy in (self.self_signed, self.secret, self.vault):
            strategy.forget(key)

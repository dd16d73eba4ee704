"""From an issuer's spec to the signer identities use: CA material, checked, and a current CRL.

The issuer's CA source (:mod:`.sources`) makes or loads the CA; the CA is checked once here
(:class:`nhi.crypto.PreparedIssuer`), the CRL is kept current by the CRL publisher, and the
Ready message and next due time are composed. Called by the issuer controller with the
issuer's lock held.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from nhi.crypto import Certificate, CryptoError, PreparedIssuer, chain_pem, fingerprint_sha256
from nhi.models.duration import rfc3339
from nhi.models.issuer import Issuer, IssuerKey, IssuerReason
from nhi.reconcilers.issuers.crl import CrlPublisher
from nhi.reconcilers.issuers.signers import IssuerNotReady, Signer
from nhi.reconcilers.issuers.sources import CASources, LoadRequest, RemoteLoaded
from nhi.reconcilers.issuers.status import IssuerOutcome


class Converger:
    def __init__(self, sources: CASources, crl: CrlPublisher) -> None:
        self.sources = sources
        self.crl = crl

    def field(self, issuer: Issuer) -> str:
        """The spec field named when the issuer's CA cannot be made as specified."""
        return self.sources.of(issuer).field

    def forget(self, key: IssuerKey) -> None:
        self.sources.forget(key)
        self.crl.forget(key)

    async def converge(
        self,
        issuer: Issuer,
        body: Mapping[str, Any],
        now: dt.datetime,
        current: Certificate | None,
    ) -> tuple[IssuerOutcome, Signer | None]:
        """The outcome, and the signer when the issuer is Ready (``current``: its CA so far).

        CryptoError when the crypto layer refuses the spec; ApiError when a request failed.
        """
        loaded = await self.sources.of(issuer).load(LoadRequest(issuer, body, now, current))
        if isinstance(loaded, IssuerOutcome):
            return loaded, None
        if isinstance(loaded, RemoteLoaded):
            return await self._remote(issuer, loaded, now)
        material = loaded.material
        try:
            ca = PreparedIssuer(material.cert, material.key, now)
        except CryptoError as err:
            return _not_ready(
                IssuerReason.CA_SECRET_INVALID, f"the CA cannot sign: {err}", material.cert
            ), None
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
            published, _ = await self.crl.publish(issuer, signer, now)
        except IssuerNotReady as err:
            return _not_ready(err.reason, err.message, material.cert), None
        dues = [
            d for d in (loaded.due, published.resign_at, material.cert.not_valid_after_utc) if d
        ]
        message = (
            f"CA {material.cert.subject.rfc4514_string()} ({fingerprint_sha256(material.cert)}) "
            f"valid until {rfc3339(material.cert.not_valid_after_utc)}"
        )
        if loaded.note:
            message = f"{message}; {loaded.note}"
        outcome = IssuerOutcome(
            True,
            IssuerReason.CA_READY,
            message,
            cert=material.cert,
            crl_number=published.number,
            revoked_count=len(published.entries),
            next_due=min(dues),
        )
        return outcome, signer

    async def _remote(
        self, issuer: Issuer, loaded: RemoteLoaded, now: dt.datetime
    ) -> tuple[IssuerOutcome, Signer | None]:
        """A CA on a server (Vault): its CRL is mirrored, not signed here."""
        cert = loaded.ca.cert
        signer = Signer(
            kind=issuer.kind,
            name=issuer.name,
            namespace=issuer.namespace,
            trust_domain=issuer.trust_domain,
            ca=loaded.ca,
            chain=loaded.chain,
            bundle_pem=chain_pem(loaded.roots),
        )
        try:
            published = await self.crl.mirror(issuer, cert, loaded.crl_pem, now)
        except IssuerNotReady as err:
            outcome = _not_ready(err.reason, err.message, cert)
            outcome.vault = loaded.vault
            return outcome, None
        message = (
            f"CA {cert.subject.rfc4514_string()} ({fingerprint_sha256(cert)}) valid until "
            f"{rfc3339(cert.not_valid_after_utc)}; {loaded.note}"
        )
        dues = [d for d in (published.resign_at, cert.not_valid_after_utc) if d]
        outcome = IssuerOutcome(
            True,
            IssuerReason.CA_READY,
            message,
            cert=cert,
            crl_number=published.number,
            revoked_count=len(published.entries),
            next_due=min(dues),
            vault=loaded.vault,
        )
        return outcome, signer


def _not_ready(reason: str, message: str, cert: Certificate) -> IssuerOutcome:
    """The CA was read but cannot serve: Stalled until its Secret or spec changes."""
    return IssuerOutcome(False, reason, message, stalled=True, retry=True, cert=cert)

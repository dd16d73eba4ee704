"""``spec.ca``: a CA someone else made, read from a Secret the issuer names.

The Secret is read on every reconcile (and re-checked when its watch event says it changed);
a CA that is missing, invalid or expired makes the issuer not Ready until the Secret is
fixed. Nothing is written.
"""

from __future__ import annotations

from nhi.builders.ca_secret import CAProblem, load_ca_secret
from nhi.crypto import fingerprint_sha256, next_expiry
from nhi.models.issuer import IssuerReason
from nhi.reconcilers.issuers.sources.base import CASourceStrategy, Loaded, LoadRequest
from nhi.reconcilers.issuers.status import IssuerOutcome


class SecretCA(CASourceStrategy):
    """Nothing is kept: the Secret is the state."""

    async def load(self, req: LoadRequest) -> Loaded | IssuerOutcome:
        issuer, body, now, current = req.issuer, req.body, req.now, req.current
        namespace, name = issuer.ca_secret(self.operator_namespace)
        self.secrets.track(issuer.key, {(namespace, name)})
        secret = await self.api.get("Secret", namespace, name)
        try:
            material = load_ca_secret(secret, namespace, name, now)
        except CAProblem as err:
            return IssuerOutcome(
                False, err.reason, err.message, stalled=True, retry=True, cert=err.cert
            )
        if current is not None and fingerprint_sha256(current) != fingerprint_sha256(material.cert):
            await self.events.normal(
                body,
                IssuerReason.CA_CHANGED,
                f"the CA in Secret {namespace}/{name} changed: {fingerprint_sha256(current)}"
                f" -> {fingerprint_sha256(material.cert)}",
            )
        return Loaded(material, "", next_expiry((*material.roots, *material.chain)))

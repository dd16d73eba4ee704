"""``spec.ca``: a CA someone else made, read from a Secret the issuer names.

The Secret is read on every reconcile (and re-checked when its watch event says it changed);
a CA that is missing, invalid or expired makes the issuer not Ready until the Secret is
fixed. Nothing is written.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from cryptography import x509

from nhi.builders.ca_secret import CAProblem, load_ca_secret
from nhi.crypto import fingerprint_sha256, next_expiry
from nhi.k8s.client import Api
from nhi.k8s.events import EventRecorder
from nhi.models.issuer import Issuer, IssuerKey, IssuerReason
from nhi.reconcilers.issuers.sources.base import Loaded, SecretWatch
from nhi.reconcilers.issuers.status import IssuerOutcome


class SecretCA:
    field = "spec"

    def __init__(
        self, api: Api, events: EventRecorder, operator_namespace: str, secrets: SecretWatch
    ) -> None:
        self.api = api
        self.events = events
        self.operator_namespace = operator_namespace
        self.secrets = secrets

    def forget(self, key: IssuerKey) -> None:
        pass  # nothing is kept: the Secret is the state

    async def load(
        self,
        issuer: Issuer,
        body: Mapping[str, Any],
        now: dt.datetime,
        current: x509.Certificate | None,
    ) -> Loaded | IssuerOutcome:
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

"""The admission webhook's serving material in its Secret, and its configuration.

One Secret, shared by every replica and every restart (``<operator namespace>/<secret>``):
a self-signed CA (``ca.crt``, ``ca.key``) and a serving certificate for the webhook's host
names (``tls.crt``, ``tls.key``). A restart reuses it, so the caBundle the API server trusts
does not change. What to renew is decided by :func:`nhi.policies.webhook.plan_material`; the
material is built in :mod:`nhi.crypto.serving`, the configuration in
:mod:`nhi.builders.webhook`.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from nhi import FIELD_MANAGER
from nhi.builders.webhook import LABELS
from nhi.crypto.serving import ServingMaterial
from nhi.k8s.client import Api, Conflict
from nhi.policies.webhook import DEFAULT_CA_TTL, DEFAULT_CERT_TTL, plan_material

log = logging.getLogger("nhi.reconcilers.webhook")

Clock = Callable[[], dt.datetime]

VWC_PATH = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"


class WebhookCertificates:
    """Reads, creates and renews the shared serving material; writes the configuration."""

    def __init__(
        self,
        api: Api,
        namespace: str,
        secret_name: str,
        hosts: Sequence[str],
        clock: Clock,
        cert_ttl: dt.timedelta = DEFAULT_CERT_TTL,
        ca_ttl: dt.timedelta = DEFAULT_CA_TTL,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.secret_name = secret_name
        self.hosts = list(hosts)
        self.clock = clock
        self.cert_ttl = cert_ttl
        self.ca_ttl = ca_ttl

    async def ensure(self) -> ServingMaterial:
        """The material to serve with: the Secret's, renewed and written back when due."""
        for _ in range(5):
            secret = await self.api.get("Secret", self.namespace, self.secret_name)
            current = ServingMaterial.from_secret(secret)
            material, reason = plan_material(
                current, self.hosts, self.clock(), self.cert_ttl, self.ca_ttl
            )
            if not reason:
                return material
            try:
                await self._write(secret, material)
            except Conflict:
                continue  # another replica wrote it first: use theirs
            log.info(
                "%s for the admission webhook",
                reason,
                extra={
                    "secret_name": f"{self.namespace}/{self.secret_name}",
                    "serial": f"{material.serial:x}",
                    "notAfter": material.cert.not_valid_after_utc.isoformat(),
                },
            )
            return material
        raise RuntimeError("the webhook certificate Secret kept changing under the operator")

    async def _write(self, old: Mapping[str, Any] | None, material: ServingMaterial) -> None:
        data = material.secret_data()
        if old is None:
            body = {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "kubernetes.io/tls",
                "metadata": {
                    "name": self.secret_name,
                    "namespace": self.namespace,
                    "labels": dict(LABELS),
                },
                "data": data,
            }
            await self.api.create("Secret", self.namespace, body)
            return
        patch_data: dict[str, str | None] = dict(data)
        for key in (old.get("data") or {}).keys() - data.keys():
            patch_data[key] = None
        # resourceVersion makes the patch conditional: a concurrent writer gets a Conflict.
        patch = {
            "metadata": {"resourceVersion": old["metadata"]["resourceVersion"]},
            "data": patch_data,
        }
        await self.api.patch("Secret", self.namespace, self.secret_name, patch)

    async def publish(self, configuration: Mapping[str, Any]) -> None:
        """Server-side apply the ValidatingWebhookConfiguration (a no-op when unchanged)."""
        name = configuration["metadata"]["name"]
        await self.api.request(
            "PATCH",
            f"{VWC_PATH}/{name}",
            body=configuration,
            params={"fieldManager": FIELD_MANAGER, "force": "true"},
            content_type="application/apply-patch+yaml",
            kind="ValidatingWebhookConfiguration",
            name=name,
        )

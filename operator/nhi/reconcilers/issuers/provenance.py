"""The key of the operator's provenance tags, kept in a Secret in its own namespace.

Created once (POST: of two replicas starting together, one wins and the other reads it) and
then read once per process. Tenants cannot read Secrets in the operator's namespace, so they
cannot compute a tag (see :mod:`nhi.crypto.provenance`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nhi.crypto import PROVENANCE_KEY_BYTES, new_provenance_key, provenance_tag
from nhi.k8s.client import Api, Conflict
from nhi.models.duration import parse_time
from nhi.models.meta import MANAGED_BY, MANAGED_BY_KEY

# The logger name these log lines have always carried (docs/observability.md).
log = logging.getLogger("nhi.reconcilers.provenance")

KEY_SECRET = "nhi-provenance-key"  # noqa: S105 - a name, not a secret
KEY_FIELD = "key"


class ProvenanceError(Exception):
    """The key Secret exists but cannot be used."""


@dataclass(frozen=True)
class Provenance:
    key: bytes
    since: dt.datetime  # the key Secret's creationTimestamp (the API server's clock)

    def tag(self, uid: str, purpose: str) -> str:
        return provenance_tag(self.key, uid, purpose)


def parse_key_secret(secret: Mapping[str, Any]) -> Provenance:
    meta = secret.get("metadata") or {}
    where = f"Secret {meta.get('namespace', '')}/{meta.get('name', '')}"
    raw = (secret.get("data") or {}).get(KEY_FIELD)
    try:
        key = base64.b64decode(str(raw or ""), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != PROVENANCE_KEY_BYTES:
        raise ProvenanceError(
            f"{where}: {KEY_FIELD} must hold {PROVENANCE_KEY_BYTES} base64-encoded bytes; "
            f"delete the Secret, and the ConfigMaps the operator published (it makes them again)"
        )
    try:
        since = parse_time(str(meta.get("creationTimestamp") or ""))
    except ValueError:
        raise ProvenanceError(f"{where}: no creationTimestamp") from None
    return Provenance(key=key, since=since)


def build_key_secret(namespace: str, key: bytes) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": KEY_SECRET,
            "namespace": namespace,
            "labels": {MANAGED_BY_KEY: MANAGED_BY},
        },
        "data": {KEY_FIELD: base64.b64encode(key).decode("ascii")},
    }


class ProvenanceKeys:
    """Loads (or makes) the key once per process; :meth:`get` is then served from memory."""

    def __init__(self, api: Api, namespace: str) -> None:
        self.api = api
        self.namespace = namespace
        self._value: Provenance | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> Provenance:
        if self._value is not None:
            return self._value
        async with self._lock:
            if self._value is None:
                self._value = await self._load()
        return self._value

    async def _load(self) -> Provenance:
        secret = await self.api.get("Secret", self.namespace, KEY_SECRET)
        if secret is None:
            body = build_key_secret(self.namespace, new_provenance_key())
            try:
                secret = await self.api.create("Secret", self.namespace, body)
            except Conflict:
                secret = await self.api.get("Secret", self.namespace, KEY_SECRET)
                if secret is None:
                    raise ProvenanceError(
                        f"Secret {self.namespace}/{KEY_SECRET} was created and deleted at once"
                    ) from None
            else:
                log.info(
                    "created the provenance key",
                    extra={"secret_name": f"{self.namespace}/{KEY_SECRET}"},
                )
        return parse_key_secret(secret)

"""Reading and preparing the cluster's objects for the scenarios."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from bench.env import Env, gather_limited
from bench.manifests import is_ready
from nhi.k8s.client import NotFound
from nhi.models.meta import CREDENTIAL_LABEL

FINGERPRINT = "nhi.dev/fingerprint"


async def ready_count(env: Env, namespace: str | None) -> tuple[int, int]:
    """(Ready, total) MachineIdentities in ``namespace`` (None: every namespace)."""
    items = await env.api.list("MachineIdentity", namespace)
    return sum(1 for i in items if is_ready(i)), len(items)


async def wait_ready(
    env: Env, namespace: str, n: int, limit: float, interval: float = 0.5
) -> float | None:
    """Poll with a list every ``interval`` until ``n`` identities are Ready; the monotonic
    time of the poll that saw it, or None on timeout."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        ready, _ = await ready_count(env, namespace)
        if ready >= n:
            return time.monotonic()
        await asyncio.sleep(interval)
    return None


async def fingerprints(env: Env, namespace: str | None = None) -> dict[str, str]:
    """``{"ns/secret": fingerprint}`` of every credential Secret (metadata only matters)."""
    out = {}
    async for s in env.api.iterate("Secret", namespace, label_selector=CREDENTIAL_LABEL):
        meta = s.get("metadata") or {}
        out[f"{meta.get('namespace')}/{meta.get('name')}"] = (meta.get("annotations") or {}).get(
            FINGERPRINT, ""
        )
    return out


async def apply_all(env: Env, manifests: Sequence[dict[str, Any]], limit: int = 32) -> None:
    await gather_limited(manifests, env.api.apply, limit)


async def purge_namespace(env: Env, namespace: str, limit: float = 600.0) -> float:
    """Remove a namespace with its identities while the operator is stopped: drop the
    finalizers (nobody would run them), delete the namespace, wait until it is gone."""
    assert env.operator is None or not env.operator.alive()
    try:
        items = await env.api.list("MachineIdentity", namespace)
    except NotFound:
        return 0.0

    async def strip(obj: dict[str, Any]) -> None:
        if (obj.get("metadata") or {}).get("finalizers"):
            try:
                await env.api.patch(
                    "MachineIdentity",
                    namespace,
                    obj["metadata"]["name"],
                    {"metadata": {"finalizers": None}},
                )
            except NotFound:
                pass

    await gather_limited(items, strip, 32)
    return await env.delete_namespace(namespace, limit)

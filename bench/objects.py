"""Reading and preparing the cluster's objects for the scenarios."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench.env import Env, gather_limited
from bench.manifests import is_ready
from nhi.k8s.client import NotFound, path_for
from nhi.models.meta import CREDENTIAL_LABEL
from nhi.runtime.informer import METADATA_LIST, METADATA_WATCH

FINGERPRINT = "nhi.dev/fingerprint"


async def ready_count(env: Env, namespace: str | None) -> tuple[int, int]:
    """(Ready, total) MachineIdentities in ``namespace`` (None: every namespace)."""
    items = await env.api.list("MachineIdentity", namespace)
    return sum(1 for i in items if is_ready(i)), len(items)


async def follow_until(
    env: Env,
    kind: str,
    namespace: str | None,
    value: Callable[[dict[str, Any]], Any],
    done: Callable[[dict[str, Any]], bool],
    limit: float,
    *,
    label_selector: str | None = None,
    metadata_only: bool = False,
) -> float | None:
    """Follow ``kind`` (``value`` of each object by name) until ``done(values)``: the
    monotonic time of the list or watch event that made it so, or None after ``limit`` s.

    A list, then a watch from its resourceVersion (listed again if the watch ends): each
    change arrives once, when it happens. Polling with a list every 0.5 s instead served
    every object twice a second during the measured window, load on the API server that
    the floors' runs do not carry, and added up to 0.5 s to each time.
    """
    path = path_for(kind, namespace)
    accept = METADATA_LIST if metadata_only else None
    selector = {"labelSelector": label_selector} if label_selector else {}
    values: dict[str, Any] = {}

    async def follow() -> float:
        while True:
            values.clear()
            params = {**selector, "limit": "500"}
            while True:
                page = await env.api.request("GET", path, params=params, accept=accept)
                for obj in page.get("items") or ():
                    values[f"{obj['metadata'].get('namespace')}/{obj['metadata']['name']}"] = value(
                        obj
                    )
                meta = page.get("metadata") or {}
                if not meta.get("continue"):
                    break
                params["continue"] = str(meta["continue"])
            if done(values):
                return time.monotonic()
            watch = {
                **selector,
                "watch": "true",
                "resourceVersion": str(meta.get("resourceVersion") or ""),
                "timeoutSeconds": "300",
            }
            stream_accept = METADATA_WATCH if metadata_only else None
            async for event in env.api.stream(path, watch, accept=stream_accept):
                obj = event.get("object") or {}
                meta = obj.get("metadata") or {}
                if event.get("type") == "ERROR" or not meta.get("name"):
                    break  # e.g. 410 Gone: list again
                key = f"{meta.get('namespace')}/{meta['name']}"
                if event.get("type") == "DELETED":
                    values.pop(key, None)
                else:
                    values[key] = value(obj)
                if done(values):
                    return time.monotonic()

    try:
        return await asyncio.wait_for(follow(), timeout=limit)
    except TimeoutError:
        return None


async def wait_ready(env: Env, namespace: str, n: int, limit: float) -> float | None:
    """When ``n`` identities of the namespace are Ready (see :func:`follow_until`)."""
    return await follow_until(
        env,
        "MachineIdentity",
        namespace,
        is_ready,
        lambda values: sum(1 for v in values.values() if v) >= n,
        limit,
    )


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

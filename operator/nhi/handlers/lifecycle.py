"""Operator start-up and shut-down: kopf settings and the shared runtime."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from nhi import FINALIZER
from nhi.handlers import runtime, usage
from nhi.settings import current as current_settings


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    ours = current_settings()
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="nhi.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="nhi.dev", key="last-handled-configuration"
    )
    # The operator posts its own audit Events; kopf's per-log-line Events would be noise.
    settings.posting.enabled = False
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    # List MachineIdentities 500 at a time: thousands of them in one response is a memory peak.
    settings.watching.chunk_size = 500
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30
    settings.peering.name = ours.peering_name
    settings.peering.priority = ours.peering_priority
    settings.peering.lifetime = ours.peering_lifetime
    settings.peering.mandatory = ours.peering
    settings.peering.standalone = not ours.peering
    runtime.get().start()
    _tasks.add(asyncio.create_task(usage.start(), name="nhi-usage-start"))


_tasks: set[asyncio.Task[None]] = set()


@kopf.on.cleanup()
async def shutdown(**_: Any) -> None:
    for task in _tasks:
        task.cancel()
    _tasks.clear()
    await usage.stop()  # persists what was counted since the last flush
    await runtime.get().stop()
    runtime.set_runtime(None)

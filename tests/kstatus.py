"""kstatus from the tests: what Flux, Helm 4 and kpt would say about our objects.

``kstatus(cluster, obj_or_objs)`` feeds objects (as the API server returned them, or built by
hand) to the small Go helper in ``hack/kstatus``, which runs
``sigs.k8s.io/cli-utils/pkg/kstatus/status.Compute`` on each and prints one JSON line per
object. ``hack/build-kstatus.sh`` builds the helper once into the control plane's cache
directory; ``NHI_KSTATUS_BIN`` points at a prebuilt one instead.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = ROOT / "hack" / "build-kstatus.sh"


@functools.cache
def kstatus_binary() -> str:
    """Build (or reuse) the kstatus helper and return its path."""
    override = os.environ.get("NHI_KSTATUS_BIN")
    if override:
        return override
    proc = subprocess.run(
        ["bash", str(BUILD_SCRIPT)],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise AssertionError(
            f"hack/build-kstatus.sh failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    return lines[-1]


def kstatus(
    cluster: Any, obj_or_objs: Mapping[str, Any] | Sequence[Mapping[str, Any]]
) -> list[dict[str, str]]:
    """Return kstatus's verdict for one object, a List, or a sequence of objects.

    Each result has ``kind``, ``namespace``, ``name``, ``status`` (``Current``, ``InProgress``,
    ``Failed``, ``Terminating``, ``NotFound`` or ``Unknown``) and ``message``, in input order.
    ``cluster`` (a ``tests.conftest.Cluster`` or None) only provides the environment to run in.
    """
    if isinstance(obj_or_objs, Mapping):
        payload: Any = obj_or_objs
    else:
        payload = {"apiVersion": "v1", "kind": "List", "items": list(obj_or_objs)}
    env = cluster.env() if cluster is not None else None
    proc = subprocess.run(
        [kstatus_binary()],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    if proc.returncode != 0:
        raise AssertionError(f"kstatus failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]

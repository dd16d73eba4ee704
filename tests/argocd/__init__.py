"""Runs the Argo CD health checks in manifests/argocd/health with Debian's lua5.4.

``run_health(kind, obj)`` hands ``obj`` to ``tests/argocd/run_health.lua``, which decodes it with
the tiny JSON decoder beside it and runs ``health.lua`` the way Argo CD does (``obj`` global,
``hs`` returned, no io/os). Missing lua5.4 fails the test and names ``make system-deps``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEALTH_DIR = ROOT / "manifests" / "argocd" / "health"
HARNESS = Path(__file__).resolve().parent / "run_health.lua"
CM_PATCH = ROOT / "manifests" / "argocd" / "argocd-cm-patch.yaml"
GEN_SCRIPT = ROOT / "hack" / "gen-argocd-cm.sh"
GROUP = "nhi.dev"
KINDS = ("MachineIdentity", "IdentityIssuer", "ClusterIdentityIssuer", "IdentityPolicy")


def lua(interpreter: str = "lua5.4") -> str:
    """The Lua interpreter's path, or fail the test saying how to install it."""
    found = shutil.which(interpreter)
    if not found:
        pytest.fail(
            f"{interpreter} is not installed: run `make system-deps` "
            "(hack/system-deps.sh installs Debian's lua5.4) to test the Argo CD health checks",
            pytrace=False,
        )
    return found


def health_script(kind: str) -> Path:
    return HEALTH_DIR / f"{GROUP}_{kind}" / "health.lua"


def run_health(kind: str, obj: dict[str, Any], interpreter: str = "lua5.4") -> tuple[str, str]:
    """Return (hs.status, hs.message) of ``kind``'s health check for ``obj``."""
    proc = subprocess.run(
        [lua(interpreter), str(HARNESS), str(health_script(kind))],
        input=json.dumps(obj),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(f"{kind} health check failed: {proc.stderr.strip()}")
    status, _, message = proc.stdout.partition("\n")
    return status, message.removesuffix("\n")

"""Scenario 7: can cert-manager be built here as a peer to compare with?

Only the Go module proxy is reachable. The bench asks it for cert-manager's versions and tries
to build the controller in a throw-away wrapper module, with a time limit, in the background
(it never blocks the other scenarios), and records exactly what happened.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.result import Check, Result

MODULE = "github.com/cert-manager/cert-manager"
CONTROLLER = f"{MODULE}/cmd/controller"


@functools.cache
def _module_cache() -> str:
    try:
        out = subprocess.run(
            ["go", "env", "GOMODCACHE"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip()


def _anonymise(text: str, work: Path) -> str:
    """The report names no path of the machine it ran on: $WORK, $GOMODCACHE and ~ instead."""
    text = text.replace(str(work), "$WORK")
    cache = _module_cache()
    if cache:
        text = text.replace(cache, "$GOMODCACHE")
    return text.replace(str(Path.home()), "~")


async def _go(args: list[str], cwd: Path, limit: float) -> dict[str, Any]:
    env = dict(os.environ, GOFLAGS="-mod=mod", GOWORK="off")
    t0 = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            "go",
            *args,
            cwd=cwd,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as err:
        return {"cmd": "go " + " ".join(args), "rc": None, "seconds": 0.0, "output": str(err)}
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), limit)
        rc: int | None = proc.returncode
    except TimeoutError:
        proc.kill()  # only the process this scenario started
        out, _ = await proc.communicate()
        rc = None
    text = _anonymise((out or b"").decode(errors="replace").strip(), cwd)
    return {
        "cmd": _anonymise("go " + " ".join(args), cwd),
        "rc": rc,
        "seconds": round(time.monotonic() - t0, 1),
        "output": text[-1500:] if rc != 0 else text[-400:],
        "timed_out": rc is None,
    }


async def probe(build: bool, budget: float = 600.0) -> dict[str, Any]:
    """What the Go toolchain and module proxy let us do with cert-manager."""
    t0 = time.monotonic()
    info = await _probe(build, budget)
    info["seconds"] = round(time.monotonic() - t0, 1)
    return info


async def _probe(build: bool, budget: float) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="nhi-bench-certmanager-"))
    deadline = time.monotonic() + budget

    def left() -> float:
        return max(5.0, deadline - time.monotonic())

    try:
        if shutil.which("go") is None:
            return {"steps": [], "verdict": "go is not installed"}
        steps.append(await _go(["version"], work, 30))
        listing = await _go(["list", "-m", "-versions", MODULE], work, min(120, left()))
        steps.append(listing)
        versions = listing["output"].split()[1:] if listing["rc"] == 0 else []
        latest = versions[-1] if versions else "latest"
        steps.append(await _go(["list", "-m", "-versions", CONTROLLER], work, min(120, left())))
        if not build:
            return {
                "steps": steps,
                "versions": versions,
                "verdict": "build not attempted at --scale small",
            }
        steps.append(await _go(["mod", "init", "nhi.dev/bench/certmanager-peer"], work, 30))
        steps.append(await _go(["get", f"{MODULE}@{latest}"], work, left()))
        build_cmd = ["build", "-o", str(work / "controller"), CONTROLLER]
        steps.append(await _go(build_cmd, work, left()))
        if steps[-1]["rc"] != 0 and not steps[-1].get("timed_out"):
            steps.append(await _go(["get", f"{CONTROLLER}@{latest}"], work, left()))
            if steps[-1]["rc"] == 0:
                steps.append(await _go(build_cmd, work, left()))
        built = (work / "controller").exists()
        return {
            "steps": steps,
            "versions": versions,
            "built": built,
            "verdict": "built" if built else "could not be built here",
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def result(info: dict[str, Any]) -> Result:
    res = Result("7", "cert-manager as a peer")
    res.details.update(info)
    res.checks.append(
        Check(
            "probe time (go list + build attempt)",
            "s",
            [float(info.get("seconds", 0.0))],
            "informational",
        )
    )
    res.notes.append(f"Verdict: {info.get('verdict')}.")
    if not info.get("built"):
        res.notes.append("No cert-manager comparison: see the commands and their output below.")
    return res

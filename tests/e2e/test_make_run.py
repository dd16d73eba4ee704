"""`make run` as a newcomer runs it: control plane, CRDs, operator, samples; Ctrl-C cleans up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, wait_for

pytestmark = pytest.mark.e2e


def children_of(pid: int) -> set[int]:
    """Every live process in the session that ``pid`` leads."""
    out = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == pid and fields[0] != "Z":  # session id, state
            out.add(int(entry.name))
    return out


def test_make_run_reaches_operator_running_with_the_samples_ready(tmp_path: Path) -> None:
    if os.environ.get("NHI_TEST_KUBECONFIG"):
        pytest.skip("make run starts its own control plane")
    kubeconfig = tmp_path / "kubeconfig"
    log = tmp_path / "run.log"
    env = dict(os.environ, NHI_HEALTH_PORT="0")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nhi.testenv", "run", "--kubeconfig", str(kubeconfig)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 180
        while "operator running" not in (text := log.read_text(errors="replace")):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"`operator running` not printed (exit code {proc.poll()}); "
                    f"make run printed:\n{text[-4000:]}"
                )
            time.sleep(0.2)
        assert f"export KUBECONFIG={kubeconfig}" in text
        assert "samples applied" in text
        kubectl = str(Path(text.split("export PATH=")[1].split(":", 1)[0]) / "kubectl")

        def sample_ready() -> bool:
            out = subprocess.run(
                [
                    kubectl,
                    f"--kubeconfig={kubeconfig}",
                    "get",
                    "machineidentities",
                    "-A",
                    "-o",
                    "json",
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if out.returncode != 0:
                return False
            items = json.loads(out.stdout)["items"]
            return bool(items) and all(
                any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in (i.get("status") or {}).get("conditions") or []
                )
                for i in items
            )

        wait_for(sample_ready, timeout=60, message="every sample identity to be Ready")
    finally:
        session = proc.pid
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends
        proc.wait(timeout=60)
    assert "stopped; no process left behind" in log.read_text(errors="replace")
    deadline = time.monotonic() + 10
    while children_of(session) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not children_of(session), "processes left behind after Ctrl-C"

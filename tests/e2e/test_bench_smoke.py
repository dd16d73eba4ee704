"""The benchmark harness keeps working: `python -m bench --scale small` end to end.

Runs the whole harness (its own control plane, the operator as a subprocess, every
scenario) at a tiny scale into a temporary directory, and checks that the report has a
section and numbers for every scenario. bench/RESULTS.md is never touched.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e

SCENARIOS = {"1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11"}


def _snapshot(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


@pytest.mark.timeout(420)
def test_bench_small_scale_writes_every_scenario(tmp_path: Path) -> None:
    committed = ROOT / "bench" / "RESULTS.md"
    committed_json = ROOT / "bench" / "results.json"
    before = (_snapshot(committed), _snapshot(committed_json))
    out = tmp_path / "RESULTS.md"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--scale", "small", "--runs", "1", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert (_snapshot(committed), _snapshot(committed_json)) == before, "RESULTS.md was touched"
    assert out.exists(), f"no report written:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    text = out.read_text()
    data = json.loads((tmp_path / "results.json").read_text())
    for key in ("nproc", "memory_gib", "cpu_model", "python"):
        assert key in data["meta"]["machine"]
    assert data["meta"]["kubernetes"].startswith("v")

    scenarios = {s["id"]: s for s in data["scenarios"]}
    assert set(scenarios) == SCENARIOS
    for sid in sorted(SCENARIOS):
        assert f"## Scenario {sid}:" in text, f"scenario {sid} has no section"
        s = scenarios[sid]
        assert s["status"] != "error", f"scenario {sid} failed: {s['notes']} {s['details']}"
        if s["status"] == "skipped":
            assert s["notes"], f"scenario {sid} skipped without a reason"
            continue
        medians = [c["median"] for c in s["checks"]]
        assert medians, f"scenario {sid} has no measurement"
        assert all(isinstance(v, float) and math.isfinite(v) for v in medians), (sid, medians)
    # Ratios against a floor measured in the same run.
    for sid in ("1", "6"):
        assert any(c.get("ratio") for c in scenarios[sid]["checks"]), sid
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

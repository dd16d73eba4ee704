"""``nhi report --format html`` renders in a real browser: headless Chromium loads the page
(from a file, offline), builds its DOM with the three charts and one table row per finding,
runs no script, fetches nothing, and paints it (a screenshot far from a blank page's)."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from nhi.cli.inventory import compute_all, render_report
from nhi.models.inventory_config import InventoryConfig
from tests.unit.inventory_factories import (
    T0,
    binding,
    deployment,
    observed,
    sa,
    token,
)

pytestmark = pytest.mark.e2e

NAMES = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")


def _chromium() -> str:
    path = os.environ.get("CHROMIUM") or next(filter(None, map(shutil.which, NAMES)), None)
    if not path:
        pytest.fail(
            "no headless Chromium on PATH. Install the Debian 'chromium-headless-shell' "
            "package; `make system-deps` installs it.",
            pytrace=False,
        )
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def test_the_html_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    obs = observed(
        sas=[sa("app", "default"), sa("app", "boss"), sa("app", "<img src=x>")],
        workloads=[deployment("app", "a"), deployment("app", "b"), deployment("app", "c", "boss")],
        bindings=[
            binding(
                "ClusterRoleBinding",
                "",
                "boss",
                "ClusterRole",
                "cluster-admin",
                ("ServiceAccount", "app", "boss"),
            )
        ],
        tokens=[token("app", "old", "boss", created=T0 - dt.timedelta(days=400))],
    )
    result = compute_all(obs, InventoryConfig(), T0)
    assert len(result.findings) >= 4
    page = tmp_path / "report.html"
    page.write_text(render_report(result, result.findings, "html", T0))
    dom = _run("--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert html.count("<svg") == 3 and html.count("<rect") >= 6
    rows = re.findall(r"<tr>", html.split('id="findings"', 1)[1])
    assert len(rows) == len(result.findings) + 1  # the header row
    assert "<script" not in html and "<img" not in html
    assert "cluster-admin-binding" in html and "NHI5 Overprivileged NHI" in html

    shot, blank = tmp_path / "report.png", tmp_path / "blank.png"
    empty = tmp_path / "blank.html"
    empty.write_text("<!DOCTYPE html><html><body></body></html>")
    for target, png in ((page, shot), (empty, blank)):
        proc = _run(f"--screenshot={png}", "--window-size=1200,900", target.as_uri())
        assert proc.returncode == 0 and png.exists(), proc.stderr[-2000:]
    assert shot.stat().st_size > 5 * blank.stat().st_size

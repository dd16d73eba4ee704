"""The repository layout keeps the standard library's `operator` module importable."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.unit


def test_operator_directory_is_not_a_package() -> None:
    assert not (ROOT / "operator" / "__init__.py").exists()
    assert (ROOT / "operator" / "nhi" / "__init__.py").exists()


def test_stdlib_operator_module_still_imports_from_the_repo_root() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "import operator; operator.itemgetter; print(operator.__file__)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "operator/nhi" not in proc.stdout


@pytest.mark.parametrize("script", ["nhi-operator", "nhi"])
def test_console_scripts_answer(script: str) -> None:
    from pathlib import Path

    exe = Path(sys.executable).parent / script
    args = ["--help"] if script == "nhi-operator" else ["version"]
    proc = subprocess.run([str(exe), *args], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert script.split("-")[0] in proc.stdout

"""The repository layout keeps the standard library's `operator` module importable."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

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
    exe = Path(sys.executable).parent / script
    args = ["--help"] if script == "nhi-operator" else ["version"]
    proc = subprocess.run([str(exe), *args], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert script.split("-")[0] in proc.stdout


# The renovation's size bound: a module a reader can hold, a function that fits on a screen.
MODULE_LINE_LIMIT = 500
FUNCTION_LINE_LIMIT = 60


def _long_functions(node: ast.AST, prefix: str = "") -> Iterator[tuple[str, int, int]]:
    """(qualified name, first line, length) of every function under `node`, at any nesting."""
    for child in ast.iter_child_nodes(node):
        name = prefix
        if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            name = f"{prefix}{child.name}."
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
            assert child.end_lineno is not None
            length = child.end_lineno - child.lineno + 1
            if length > FUNCTION_LINE_LIMIT:
                yield name.removesuffix("."), child.lineno, length
        yield from _long_functions(child, name)


def _oversized(package: Path) -> list[str]:
    """Every module of `package` over the module bound, every function over the function bound.

    A module's length is its number of newlines; a function's runs from its `def` line to its
    last line (decorators not counted), at any nesting: methods and inner functions too.
    """
    found: list[str] = []
    for path in sorted(package.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        name = path.relative_to(ROOT).as_posix()
        lines = source.count("\n")
        if lines > MODULE_LINE_LIMIT:
            found.append(f"{name}: module of {lines} lines (limit {MODULE_LINE_LIMIT})")
        for function, lineno, length in _long_functions(ast.parse(source, filename=name)):
            found.append(
                f"{name}:{lineno}: function {function} of {length} lines"
                f" (limit {FUNCTION_LINE_LIMIT})"
            )
    return found


def test_no_module_or_function_outgrows_the_size_bound() -> None:
    found = _oversized(ROOT / "operator" / "nhi")
    assert not found, "split along a seam:\n" + "\n".join(found)

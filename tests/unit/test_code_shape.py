"""The engine's method code stays readable (issue 29): no function in ``coral_core/editing``
over 60 lines or a McCabe complexity of 12, so that the paper's step and each departure can be
read in one screen. Checked on the source text (ast for length, ruff for complexity)."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.source_scan

EDITING = Path(__file__).resolve().parents[2] / "coral_core" / "editing"
MAX_LINES = 60
MAX_COMPLEXITY = 12


def _functions(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [(f"{path.name}:{node.name}", (node.end_lineno or node.lineno) - node.lineno + 1)
            for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_no_function_in_the_method_code_is_over_the_length_limit() -> None:
    long = [(name, n) for path in sorted(EDITING.glob("*.py")) for name, n in _functions(path)
            if n > MAX_LINES]
    assert not long, f"functions over {MAX_LINES} lines in coral_core/editing: {long}"


def test_no_function_in_the_method_code_is_over_the_complexity_limit() -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed")
    done = subprocess.run([ruff, "check", "--no-cache", "--select", "C901", "--config",
                           f"lint.mccabe.max-complexity={MAX_COMPLEXITY}", str(EDITING)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]

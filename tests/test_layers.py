"""The architecture as tests: the import-linter contract (.importlinter), tasks/ holds tasks, short functions."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("workflows", "tasks", "images", "sslflow", "ssl_models", "benchmarks", "tests")
MAX_FUNCTION_LINES = 60


def test_layer_contract_is_kept():
    """workflows -> tasks -> images -> sslflow -> ssl_models, no cycles, Flyte and mlflow only where allowed."""
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "BROKEN" not in result.stdout and "0 broken" in result.stdout


def test_every_module_in_tasks_defines_a_task():
    """Only Flyte task modules live in tasks/ (plus tasks/shared.py, what they all declare)."""
    lacking = []
    for path in sorted((ROOT / "tasks").glob("*.py")):
        if path.name in ("__init__.py", "shared.py"):
            continue
        decorators = {
            getattr(decorator.func if isinstance(decorator, ast.Call) else decorator, "id", "")
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.FunctionDef)
            for decorator in node.decorator_list
        }
        if not decorators & {"task", "dynamic"}:
            lacking.append(path.name)
    assert not lacking, f"modules in tasks/ without a @task or @dynamic: {lacking}"


def test_no_function_is_longer_than_a_screen():
    long_functions = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = node.end_lineno - node.lineno + 1
                    if length > MAX_FUNCTION_LINES:
                        long_functions.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    assert not long_functions, "functions over 60 lines:\n" + "\n".join(long_functions)

"""Benchmark results name the code they ran (benchmarks/common.py), and `make bench-deps` installs what they import."""

import ast
import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path

from benchmarks.common import CODE_FOLDERS, code_sha256, machine, write_result

ROOT = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = {"benchmarks", "images", "ssl_models", "sslflow", "tasks", "workflows"}


def test_results_carry_commit_dirty_flag_and_code_hash():
    info = machine()
    assert info["commit"] and isinstance(info["dirty"], bool) and len(info["code_sha256"]) == 64


def test_a_run_updates_its_own_result_and_never_overwrites_anothers(tmp_path):
    """A benchmark that writes its result again (after each seed) updates its own file; a run on the day of a
    committed result writes beside it (a time-stamped name)."""
    first = write_result("example", {"seeds_done": [0]}, tmp_path)
    assert write_result("example", {"seeds_done": [0, 1]}, tmp_path) == first
    assert json.loads(first.read_text())["seeds_done"] == [0, 1]
    committed = tmp_path / "committed"
    committed.mkdir()
    earlier = committed / first.name
    earlier.write_text('{"run": "committed"}')
    later = write_result("example", {"run": "later"}, committed)
    assert later != earlier and json.loads(earlier.read_text()) == {"run": "committed"}
    assert json.loads(later.read_text())["run"] == "later"


def test_code_hash_follows_every_code_file(tmp_path):
    for folder in CODE_FOLDERS:
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__", "results"))
    before = code_sha256(tmp_path)
    assert code_sha256(tmp_path) == before
    (tmp_path / "benchmarks" / "new_script.py").write_text("print('not committed yet')\n")  # an untracked script counts
    added = code_sha256(tmp_path)
    assert added != before
    (tmp_path / "ssl_models" / "losses.py").write_text((ROOT / "ssl_models" / "losses.py").read_text() + "\n# edited\n")
    assert code_sha256(tmp_path) != added


def _bench_deps() -> set[str]:
    """Top-level module names of the packages `make bench-deps` installs."""
    recipe = (ROOT / "Makefile").read_text().split("bench-deps: install", 1)[1].split("\n\n", 1)[0]
    return {re.sub(r"[-.]", "_", name.split("==")[0]).lower() for name in re.findall(r"([A-Za-z][\w.-]*)==", recipe)}


def test_bench_deps_install_every_module_a_benchmark_imports():
    installed = _bench_deps()
    missing = {}
    for script in sorted((ROOT / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(script.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom) and node.level == 0
                else []
            )
            for top in {name.split(".")[0] for name in names if name}:
                known = (
                    top in sys.stdlib_module_names
                    or top in PROJECT_PACKAGES
                    or top.lower() in installed
                    or top == "__future__"
                )
                if not known and importlib.util.find_spec(top) is None:
                    missing.setdefault(script.name, set()).add(top)
    assert not missing, f"imported by benchmarks but neither in the venv nor in `make bench-deps`: {missing}"
    assert {"kornia", "lightly"} <= installed

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
    """Only Flyte task modules live in tasks/ (plus tasks/shared.py, what they all declare, and
    tasks/training_pods.py, what the training tasks declare)."""
    lacking = []
    for path in sorted((ROOT / "tasks").glob("*.py")):
        if path.name in ("__init__.py", "shared.py", "training_pods.py"):
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


# What a pod runs, given its task's command (pyflyte-execute or pyflyte-map-execute): the entry point loads the task
# through the resolver the command names, which imports the task's module (never the workflow's); then it prints the
# modules that a pod which does not train must not load: torch and any flytekit plugin (the namespace package
# flytekitplugins itself is made by the plugin's .pth file at start-up, in every process).
_POD_IMPORTS = """
import json, sys
from flytekit.bin.entrypoint import load_object_from_module
for command in json.loads(sys.argv[1]):
    resolver = load_object_from_module(command[command.index("--resolver") + 1])
    resolver = resolver() if command[0] == "pyflyte-map-execute" else resolver
    resolver.load_task(loader_args=command[command.index("--") + 1 :])
loaded = [name for name in sys.modules if name.split(".")[0] == "torch" or name.startswith("flytekitplugins.")]
print(json.dumps(sorted(loaded)))
"""


def test_the_ingest_pods_load_neither_torch_nor_the_elastic_plugin():
    """The pods of source_fingerprint, tracking_store, plan_ingest, ingest_chunk (a map task) and join_ingest, started
    from their serialized commands in a fresh process, import neither torch nor flytekitplugins.kfpytorch (training
    pods do: tasks/training_pods.py)."""
    import json

    from flytekit import map_task
    from flytekit.configuration import ImageConfig, SerializationSettings

    from tasks.ingest import ingest_chunk, join_ingest, plan_ingest, source_fingerprint
    from tasks.store import tracking_store

    settings = SerializationSettings(image_config=ImageConfig.auto_default_image())
    pods = [source_fingerprint, tracking_store, plan_ingest, map_task(ingest_chunk), join_ingest]
    commands = [pod.get_command(settings) for pod in pods]
    assert {command[0] for command in commands} == {"pyflyte-execute", "pyflyte-map-execute"}
    loaded = subprocess.run(
        [sys.executable, "-c", _POD_IMPORTS, json.dumps(commands)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert json.loads(loaded.stdout.splitlines()[-1]) == [], "an ingest pod loads torch or a flytekit plugin"

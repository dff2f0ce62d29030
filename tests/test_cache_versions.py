"""Every cached task's code change comes with a Cache version bump (tests/cache_versions.py, tasks/cache_versions.json):
the committed table matches the code, and a changed module under a task with the same version fails, naming it."""

from __future__ import annotations

import json
import shutil
import sys

import cache_versions
import pytest
from cache_versions import (
    PROJECT_PACKAGES,
    PROJECT_ROOT,
    TABLE,
    UPDATE_COMMAND,
    code_sha256,
    current_table,
    out_of_date,
    stale,
)

PRETRAINING = {
    "tasks.pretrain.pretrain_generic",
    "tasks.pretrain.pretrain_case_pairs",
    "tasks.pretrain.pretrain_domain",
}


@pytest.fixture(scope="module")
def current() -> dict[str, dict]:
    return current_table()


def _project_copy(tmp_path):
    for package in PROJECT_PACKAGES:
        shutil.copytree(PROJECT_ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _hashed_under(root, table: dict[str, dict]) -> dict[str, dict]:
    return {name: {**row, "code_sha256": code_sha256(name.rpartition(".")[0], root)[0]} for name, row in table.items()}


def test_the_committed_table_records_every_cached_tasks_code_and_version(current):
    recorded = json.loads(TABLE.read_text())
    assert not stale(recorded, current), "\n".join(stale(recorded, current))
    assert not out_of_date(recorded, current), "\n".join([*out_of_date(recorded, current), f"run `{UPDATE_COMMAND}`"])
    assert PRETRAINING <= set(current) and all(row["version"] for row in current.values())


def test_an_engine_change_without_a_version_bump_fails_naming_the_tasks_that_run_it(tmp_path, current):
    root = _project_copy(tmp_path)
    moco = root / "ssl_models" / "methods" / "moco.py"
    moco.write_text(moco.read_text() + "\nSINGLE_PROCESS_GROUPS = 4\n")
    changed = _hashed_under(root, current)
    problems = stale(current, changed)
    named = {problem.split(":")[0].removeprefix("task ") for problem in problems}
    assert PRETRAINING <= named and "tasks.ingest.plan_ingest" not in named, problems
    assert any(f"bump the version in tasks/pretrain.py and run `{UPDATE_COMMAND}`" in problem for problem in problems)
    bumped = {
        name: {**row, "version": row["version"] + "-bumped"} if name in named else row for name, row in changed.items()
    }
    assert stale(current, bumped) == []


def test_formatting_comments_docstrings_and_version_bumps_change_no_hash(tmp_path, current):
    root = _project_copy(tmp_path)
    pretrain = root / "tasks" / "pretrain.py"
    source = pretrain.read_text()
    source = source.replace('"""The pretraining ladder', '"""Reworded. The pretraining ladder').replace(
        "\n\n\ndef ", "\n\n\n# a comment\ndef "
    )
    source = source.replace('pipeline_cache("5", serialize=True)', 'pipeline_cache(\n    "6",\n    serialize=True,\n)')
    assert source != pretrain.read_text()
    pretrain.write_text(source)
    assert _hashed_under(root, current) == current


def test_update_refuses_while_a_task_changed_without_a_bump(tmp_path, monkeypatch, current):
    table = tmp_path / "cache_versions.json"
    table.write_text(json.dumps(current))
    changed = {name: {**row, "code_sha256": "0" * 64} for name, row in current.items()}
    monkeypatch.setattr(cache_versions, "TABLE", table)
    monkeypatch.setattr(cache_versions, "current_table", lambda: changed)
    monkeypatch.setattr(sys, "argv", ["cache_versions.py", "--update"])
    with pytest.raises(SystemExit, match="refused: bump these Cache versions first"):
        cache_versions.main()
    assert json.loads(table.read_text()) == current


def test_a_refactor_is_recorded_without_a_bump_only_when_said(tmp_path, monkeypatch, current):
    table = tmp_path / "cache_versions.json"
    table.write_text(json.dumps(current))
    changed = {name: {**row, "code_sha256": "0" * 64} for name, row in current.items()}
    monkeypatch.setattr(cache_versions, "TABLE", table)
    monkeypatch.setattr(cache_versions, "PROJECT_ROOT", tmp_path)
    monkeypatch.setattr(cache_versions, "current_table", lambda: changed)
    monkeypatch.setattr(sys, "argv", ["cache_versions.py", "--update", "--same-outputs"])
    cache_versions.main()
    assert json.loads(table.read_text()) == changed  # versions kept, new hashes recorded


def test_bump_raises_a_tasks_version_in_its_decorator_and_changes_no_hash(tmp_path, current):
    root = _project_copy(tmp_path)
    for task in ("tasks.pretrain.pretrain_generic", "tasks.ingest.join_ingest"):
        path, function = root / current[task]["file"], task.rpartition(".")[2]
        # the decorator's literal ("5"; a pretraining task adds "-world1")
        written = cache_versions.version_literal(path, function).value
        assert cache_versions.bump(task, root) == str(int(written) + 1)
        assert cache_versions.version_literal(path, function).value == str(int(written) + 1)
    assert _hashed_under(root, current) == current

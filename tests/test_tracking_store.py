"""The MLflow store a user chose is the one written to: the default, a switch of store, credentials in a URI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from live_mlflow import MlflowServer
from mlflow.tracking import MlflowClient
from PIL import Image

from sslflow.tracking.store import EXPERIMENT_NAME, redacted, store_id

PROJECT_ROOT = Path(__file__).resolve().parents[1]
WHERE_IS_THE_STORE = "from sslflow.tracking.store import tracking_uri; print(tracking_uri())"


def _python(code: str, cwd: Path, env: dict) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=True
    ).stdout.strip()


def test_default_store_is_the_working_directory_and_every_child_process_uses_it(tmp_path):
    """Not the folder the package was imported from; and an Elastic worker started elsewhere inherits it."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    parent_code = WHERE_IS_THE_STORE + (
        "; import subprocess, sys, os; os.makedirs('elsewhere', exist_ok=True)"
        "; print(subprocess.run([sys.executable, '-c', 'import os; print(os.environ[\"MLFLOW_TRACKING_URI\"])'],"
        " cwd='elsewhere', capture_output=True, text=True).stdout.strip())"
    )
    in_project, in_child = _python(parent_code, tmp_path, env).splitlines()
    assert in_project == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert in_child == in_project


def test_credentials_in_the_uri_move_to_mlflows_variables(monkeypatch):
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:s3cr%40t@mlflow.example:5000/path")
    assert store_id() == "http://mlflow.example:5000/path"
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://mlflow.example:5000/path"  # what child processes see
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("alice", "s3cr@t")
    assert redacted("https://bob:pw@[::1]:8080/x") == "https://[::1]:8080/x"


def _image_folder(root: Path) -> Path:
    root.mkdir()
    for i in range(4):
        Image.fromarray(np.random.default_rng(300 + i).integers(0, 256, (20, 20), dtype=np.uint8)).save(
            root / f"scan{i}.png"
        )
    return root


def _validate_data(source: Path, env: dict) -> subprocess.CompletedProcess:
    command = [
        str(Path(sys.executable).parent / "pyflyte"),
        "run",
        "workflows/data.py",
        "validate_data",
        "--source",
        str(source),
    ]
    return subprocess.run(
        command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, env={**env, "COLUMNS": "200"}
    )


def _runs(uri: str) -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    return client.search_runs([experiment.experiment_id]) if experiment else []


def test_a_rerun_against_another_store_records_the_data_run_there_without_reingesting(tmp_path):
    folder = _image_folder(tmp_path / "scans")
    env = {
        **os.environ,
        "FLYTE_SDK_LOCAL_SANDBOX": str(tmp_path / "sandbox"),
        "HOME": str(tmp_path),
    }  # a Flyte cache of its own
    first_store, second_store = f"sqlite:///{tmp_path / 'first.db'}", f"sqlite:///{tmp_path / 'second.db'}"
    first = _validate_data(folder, {**env, "MLFLOW_TRACKING_URI": first_store})
    assert first.returncode == 0, first.stdout + first.stderr
    second = _validate_data(folder, {**env, "MLFLOW_TRACKING_URI": second_store})
    assert second.returncode == 0, second.stdout + second.stderr
    assert "second.db" in second.stdout and "first.db" not in second.stdout
    stages = sorted(run.data.tags.get("sslflow.stage", "PARENT") for run in _runs(second_store))
    assert stages == ["PARENT"], "ingest and validate are cache hits; the new store gets the parent run and its record"
    parent = _runs(second_store)[0]
    assert parent.data.metrics["images"] == 4 and parent.data.tags["dataset.sha256"]
    assert "ingest_summary.json" in {
        item.path for item in MlflowClient(second_store).list_artifacts(parent.info.run_id)
    }
    assert len(_runs(first_store)) == 3  # parent, ingest, validate: the first store is untouched by the rerun


@pytest.fixture
def server(tmp_path):
    with MlflowServer(tmp_path / "server") as running:
        yield running


def test_a_password_in_the_tracking_uri_is_never_printed_or_stored(tmp_path, server):
    folder = _image_folder(tmp_path / "scans")
    secret = "s3cretPassw0rd"
    uri = server.uri.replace("http://", f"http://alice:{secret}@")
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env.update(
        {"FLYTE_SDK_LOCAL_SANDBOX": str(tmp_path / "sandbox"), "HOME": str(tmp_path), "MLFLOW_TRACKING_URI": uri}
    )
    result = _validate_data(folder, env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert secret not in output and "alice" not in output
    assert f"({server.uri})" in result.stdout  # the summary names the server, without credentials
    runs = _runs(server.uri)
    assert len(runs) == 3
    for run in runs:
        assert secret not in repr(run.data.params) + repr(run.data.tags)
    stored = b"".join(
        path.read_bytes()
        for path in (tmp_path / "server").rglob("*")
        if path.is_file() and path.name != "mlflow-server.log"
    )
    stored += b"".join(path.read_bytes() for path in (tmp_path / "sandbox").rglob("*") if path.is_file())
    assert secret.encode() not in stored, "the password reached the store, an artifact or Flyte's cache"

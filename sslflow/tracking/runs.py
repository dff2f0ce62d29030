"""MLflow tracking for the pipeline: one parent run per pipeline configuration, a nested run per stage.

Embedded default: a sqlite store ``mlflow.db`` in the project root with artifacts in ``mlartifacts/``
beside it. ``MLFLOW_TRACKING_URI`` points everything at another store or a tracking server
(required on a cluster, where every pod would otherwise write its own sqlite file).
Nested runs are created with the parent tag through the client, so a stage can attach to its
parent from any process (Flyte task pods, Elastic workers) without the parent being active there.

A tracking server that does not answer: MLflow retries each request with backoff
(MLFLOW_HTTP_REQUEST_MAX_RETRIES, default 7, and MLFLOW_HTTP_REQUEST_TIMEOUT seconds per try,
default 120), then the stage fails with ``TrackingServerUnavailable`` naming the URI.
"""

from __future__ import annotations

import dataclasses
import fcntl
import importlib.metadata
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlparse

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow
import requests
from mlflow.entities import Param
from mlflow.environment_variables import (
    MLFLOW_HTTP_REQUEST_MAX_RETRIES,
    MLFLOW_HTTP_REQUEST_TIMEOUT,
)
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

PROJECT_ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT_NAME = os.environ.get("SSLFLOW_EXPERIMENT", "sslflow")


class TrackingServerUnavailable(RuntimeError):
    """The MLflow tracking server did not answer, after MLflow's bounded retries."""


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    if os.environ.get("FLYTE_INTERNAL_EXECUTION_ID"):  # set in every pod of a Flyte cluster execution
        raise RuntimeError(
            "MLFLOW_TRACKING_URI is not set in this Flyte pod, so each task would log to its own throw-away sqlite file. "
            "Register or run with --env MLFLOW_TRACKING_URI=http://<your mlflow server>:5000 (see README, 'Run on your cluster')."
        )
    return f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


def _is_unreachable(error: BaseException) -> bool:
    """True for a failed HTTP exchange with the server (refused, reset, timed out, retries used up), not for an API error."""
    if isinstance(error, requests.exceptions.RequestException):
        return True
    if isinstance(error, MlflowException) and str(error.message).startswith("API request to"):
        cause = error.__cause__ or error.__context__
        return isinstance(cause, requests.exceptions.RequestException) or "Max retries exceeded" in error.message
    return False


@contextmanager
def explain_unreachable_server() -> Iterator[None]:
    """Turn MLflow's connection errors into one TrackingServerUnavailable that names the URI and what to do."""
    try:
        yield
    except Exception as error:
        if isinstance(error, TrackingServerUnavailable) or not _is_unreachable(error):
            raise
        raise TrackingServerUnavailable(
            f"MLflow tracking server {tracking_uri()} did not answer after {MLFLOW_HTTP_REQUEST_MAX_RETRIES.get()} retries "
            f"(MLFLOW_HTTP_REQUEST_MAX_RETRIES; MLFLOW_HTTP_REQUEST_TIMEOUT={MLFLOW_HTTP_REQUEST_TIMEOUT.get()} s per try). "
            "Check that the server is running and reachable from here, or point MLFLOW_TRACKING_URI at one that is. "
            f"Last error: {error}"
        ) from error


def code_version() -> str:
    """What code produced a model: the git commit (``-dirty`` with uncommitted changes), else the
    Flyte task version (a registered workflow on a cluster), else the installed sslflow version."""
    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=40"],
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
        return f"git:{described.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    if os.environ.get("FLYTE_INTERNAL_TASK_VERSION"):
        return f"flyte:{os.environ['FLYTE_INTERNAL_TASK_VERSION']}"
    try:
        return f"sslflow=={importlib.metadata.version('sslflow')}"
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


_ready_sqlite_stores: set[str] = set()


def _prepare_sqlite_store(uri: str) -> None:
    """Create a sqlite store's tables under an exclusive lock, once per process.

    MLflow builds the schema of a new sqlite store on first use; two pipelines starting at once would
    run the same migrations together and fail. flock on the database file serialises that first use
    (sqlite's own locks are fcntl locks, which flock does not touch on Linux).
    """
    if not uri.startswith("sqlite:///") or uri in _ready_sqlite_stores:
        return
    database = Path(unquote(uri[len("sqlite:///") :]))
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database, "ab") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            first_use = MlflowClient(tracking_uri=uri, registry_uri=uri)
            first_use.search_experiments(max_results=1)
            first_use.search_registered_models(max_results=1)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    _ready_sqlite_stores.add(uri)


@contextmanager
def registry_lock() -> Iterator[None]:
    """Exclusive between processes for a sqlite store (flock on the database file); a no-op for a server,
    whose API has no lock: callers re-check what they read instead."""
    uri = tracking_uri()
    if not uri.startswith("sqlite:///"):
        yield
        return
    _prepare_sqlite_store(uri)
    with open(Path(unquote(uri[len("sqlite:///") :])), "ab") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def client() -> MlflowClient:
    uri = tracking_uri()
    _prepare_sqlite_store(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _artifact_location(uri: str) -> str | None:
    """For a sqlite store, artifacts go to mlartifacts/ beside the database; servers choose their own."""
    if not uri.startswith("sqlite:///"):
        return None
    database = Path(unquote(urlparse(uri).path))
    return (database.parent / "mlartifacts").resolve().as_uri()


def experiment_id() -> str:
    mlflow_client = client()
    experiment = mlflow_client.get_experiment_by_name(EXPERIMENT_NAME)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return mlflow_client.create_experiment(EXPERIMENT_NAME, artifact_location=_artifact_location(tracking_uri()))
    except mlflow.exceptions.MlflowException:  # created meanwhile by a concurrent task
        return mlflow_client.get_experiment_by_name(EXPERIMENT_NAME).experiment_id


def flatten(params: dict, prefix: str = "") -> dict[str, str]:
    """Nested dicts / dataclasses -> {"a.b": "value"} for mlflow.log_params."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)[:6000]
    return flat


def start_parent_run(run_name: str, params: dict) -> str:
    """Create the pipeline's parent run (left RUNNING until ``finish_parent_run``); returns its id."""
    with explain_unreachable_server():
        mlflow_client = client()
        run = mlflow_client.create_run(experiment_id(), run_name=run_name, tags={"sslflow.kind": "pipeline"})
        mlflow_client.log_batch(run.info.run_id, params=[Param(key, value) for key, value in flatten(params).items()])
    return run.info.run_id


def finish_parent_run(parent_run_id: str) -> None:
    with explain_unreachable_server():
        client().set_terminated(parent_run_id, status="FINISHED")


@contextmanager
def stage_run(parent_run_id: str, stage: str, params: dict | None = None) -> Iterator[mlflow.ActiveRun]:
    """A nested run for one stage, active for the fluent API inside the block; FAILED if the block raises.

    A tracking server that stops answering, here or inside the block, raises TrackingServerUnavailable.
    """
    with explain_unreachable_server():
        mlflow_client = client()
        parent = mlflow_client.get_run(parent_run_id)
        run = mlflow_client.create_run(
            parent.info.experiment_id,
            run_name=stage,
            tags={MLFLOW_PARENT_RUN_ID: parent_run_id, "sslflow.stage": stage},
        )
        with mlflow.start_run(run_id=run.info.run_id) as active:
            if params:
                mlflow.log_params(flatten(params))
            yield active

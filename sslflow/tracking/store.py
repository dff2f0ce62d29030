"""Where MLflow tracking and the model registry live, and the client that talks to them.

Embedded default: a sqlite store ``mlflow.db`` in the project root with artifacts in ``mlartifacts/``
beside it. ``MLFLOW_TRACKING_URI`` points everything at another store or a tracking server
(required on a cluster, where every pod would otherwise write its own sqlite file).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT_NAME = os.environ.get("SSLFLOW_EXPERIMENT", "sslflow")


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


def sqlite_database(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI; None for any other store."""
    prefix = "sqlite:///"
    return Path(unquote(uri[len(prefix) :])) if uri.startswith(prefix) else None


_ready_sqlite_stores: set[str] = set()


@contextmanager
def _flock(database: Path) -> Iterator[None]:
    """An exclusive flock on the database file (sqlite's own locks are fcntl locks, which flock does not touch on Linux)."""
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database, "ab") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _prepare_sqlite_store(uri: str) -> None:
    """Create a sqlite store's tables under an exclusive lock, once per process.

    MLflow builds the schema of a new sqlite store on first use; two pipelines starting at once would
    run the same migrations together and fail, so that first use is serialised.
    """
    database = sqlite_database(uri)
    if database is None or uri in _ready_sqlite_stores:
        return
    with _flock(database):
        first_use = MlflowClient(tracking_uri=uri, registry_uri=uri)
        first_use.search_experiments(max_results=1)
        first_use.search_registered_models(max_results=1)
    _ready_sqlite_stores.add(uri)


@contextmanager
def registry_lock() -> Iterator[None]:
    """Exclusive between processes for a sqlite store; a no-op for a server, whose API has no lock:
    callers re-check what they read instead."""
    uri = tracking_uri()
    database = sqlite_database(uri)
    if database is None:
        yield
        return
    _prepare_sqlite_store(uri)
    with _flock(database):
        yield


def client() -> MlflowClient:
    """A client of the current store; the fluent API (mlflow.*) is pointed at the same store."""
    uri = tracking_uri()
    _prepare_sqlite_store(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _artifact_location(uri: str) -> str | None:
    """For a sqlite store, artifacts go to mlartifacts/ beside the database; servers choose their own."""
    database = sqlite_database(uri)
    return (database.parent / "mlartifacts").resolve().as_uri() if database is not None else None


def experiment_id() -> str:
    mlflow_client = client()
    experiment = mlflow_client.get_experiment_by_name(EXPERIMENT_NAME)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return mlflow_client.create_experiment(EXPERIMENT_NAME, artifact_location=_artifact_location(tracking_uri()))
    except mlflow.exceptions.MlflowException:  # created meanwhile by a concurrent task
        return mlflow_client.get_experiment_by_name(EXPERIMENT_NAME).experiment_id

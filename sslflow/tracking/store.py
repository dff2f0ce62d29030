"""Where MLflow tracking and the model registry live, and the client that talks to them.

Embedded default: a sqlite store ``mlflow.db`` in the working directory (`make run` runs from the
project folder) with artifacts in ``mlartifacts/`` beside it. ``MLFLOW_TRACKING_URI`` points
everything at another store or a tracking server (required on a cluster, where every pod would
otherwise write its own sqlite file).

The store is decided once per process tree: ``tracking_uri()`` writes its answer into
``MLFLOW_TRACKING_URI``, so Elastic workers and other child processes log to the same store even
when they start elsewhere. Credentials never travel in the URI: ``http://user:password@host`` is
split into MLflow's own ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` (basic auth,
as MLflow documents) and the URI without them, so nothing printed, logged or cached holds them.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the code's folder (git provenance), not the store's
EXPERIMENT_NAME = os.environ.get("SSLFLOW_EXPERIMENT", "sslflow")
DEFAULT_DATABASE = "mlflow.db"


def _without_userinfo(parts: SplitResult) -> str:
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def redacted(uri: str) -> str:
    """``uri`` without ``user:password@``: what may be printed, logged or stored."""
    parts = urlsplit(uri)
    return _without_userinfo(parts) if parts.username or parts.password else uri


def _move_credentials_to_environment(uri: str) -> str:
    """Put a URI's userinfo into MLFLOW_TRACKING_USERNAME / _PASSWORD (unless set already); the URI without it."""
    parts = urlsplit(uri)
    if not (parts.username or parts.password):
        return uri
    if parts.username:
        os.environ.setdefault("MLFLOW_TRACKING_USERNAME", unquote(parts.username))
    if parts.password:
        os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", unquote(parts.password))
    return _without_userinfo(parts)


def tracking_uri() -> str:
    """The store of this process tree (see the module docstring), never with credentials in it."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        if os.environ.get("FLYTE_INTERNAL_EXECUTION_ID"):  # set in every pod of a Flyte cluster execution
            raise RuntimeError(
                "MLFLOW_TRACKING_URI is not set in this Flyte pod, so each task would log to its own throw-away "
                "sqlite file. Register or run with --env MLFLOW_TRACKING_URI=http://<your mlflow server>:5000 (see "
                "README, 'Run on your cluster')."
            )
        uri = f"sqlite:///{Path.cwd().resolve() / DEFAULT_DATABASE}"
    uri = _move_credentials_to_environment(uri)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    if os.environ.get("MLFLOW_REGISTRY_URI"):
        os.environ["MLFLOW_REGISTRY_URI"] = redacted(os.environ["MLFLOW_REGISTRY_URI"])
    return uri


def store_id() -> str:
    """What names the store for Flyte's cache: its URI without credentials (a sqlite file by absolute path)."""
    uri = tracking_uri()
    database = sqlite_database(uri)
    return f"sqlite:///{database.resolve()}" if database is not None else uri


def sqlite_database(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI; None for any other store."""
    prefix = "sqlite:///"
    return Path(unquote(uri[len(prefix) :])) if uri.startswith(prefix) else None


_ready_sqlite_stores: set[str] = set()


@contextmanager
def _flock(database: Path) -> Iterator[None]:
    """An exclusive flock on the database file (sqlite's own locks are fcntl locks, which flock does not touch on
    Linux)."""
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

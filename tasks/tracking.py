"""MLflow tracking for the pipeline: one parent run per pipeline configuration, a nested run per stage.

Embedded default: a sqlite store ``mlflow.db`` in the project root with artifacts in ``mlartifacts/``
beside it. ``MLFLOW_TRACKING_URI`` points everything at another store or a tracking server.
Nested runs are created with the parent tag through the client, so a stage can attach to its
parent from any process (Flyte task pods, Elastic workers) without the parent being active there.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlparse

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT_NAME = os.environ.get("SSLFLOW_EXPERIMENT", "sslflow")


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


def client() -> MlflowClient:
    uri = tracking_uri()
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
    run = client().create_run(experiment_id(), run_name=run_name, tags={"sslflow.kind": "pipeline"})
    mlflow_client = client()
    for key, value in flatten(params).items():
        mlflow_client.log_param(run.info.run_id, key, value)
    return run.info.run_id


def finish_parent_run(parent_run_id: str) -> None:
    client().set_terminated(parent_run_id, status="FINISHED")


@contextmanager
def stage_run(parent_run_id: str, stage: str, params: dict | None = None) -> Iterator[mlflow.ActiveRun]:
    """A nested run for one stage, active for the fluent API inside the block; FAILED if the block raises."""
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

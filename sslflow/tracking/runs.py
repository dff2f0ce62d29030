"""The pipeline's MLflow runs: one parent run per pipeline configuration and store, a nested run per stage.

Nested runs are created with the parent tag through the client, so a stage can attach to its
parent from any process (Flyte task pods, Elastic workers) without the parent being active there.
A stage that is a Flyte cache hit logs nothing again; what the pipeline concluded (results table,
registration, dataset summaries) is also recorded on the parent run (``record_on_parent``), so a
rerun against a new store records the pipeline there without retraining.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from contextlib import contextmanager

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from sslflow.tracking.server import explain_unreachable_server
from sslflow.tracking.store import client, experiment_id


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


def record_on_parent(
    parent_run_id: str,
    *,
    metrics: dict[str, float] | None = None,
    tags: dict[str, str] | None = None,
    texts: dict[str, str] | None = None,
) -> None:
    """Log metrics, tags and text artifacts (file name -> text) on the parent run, from any process."""
    with explain_unreachable_server():
        mlflow_client = client()
        now = int(time.time() * 1000)
        mlflow_client.log_batch(
            parent_run_id,
            metrics=[Metric(key, float(value), now, 0) for key, value in (metrics or {}).items()],
            tags=[RunTag(key, str(value)) for key, value in (tags or {}).items()],
        )
        for name, text in (texts or {}).items():
            mlflow_client.log_text(parent_run_id, text, name)

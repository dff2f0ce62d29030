"""tracking_store: the MLflow store of this run, read and checked when the run executes (not when it is registered)."""

from __future__ import annotations

from flytekit import Resources, task

from images.specs import cpu_image
from sslflow.services import check_services
from sslflow.tracking.store import store_id
from tasks.shared import MLFLOW_SECRETS


@task(container_image=cpu_image, requests=Resources(cpu="1", mem="1Gi"), secret_requests=MLFLOW_SECRETS)
def tracking_store() -> str:
    """The store's URI without credentials. Not cached: the parent run is cached on it, so after a switch of
    MLFLOW_TRACKING_URI the pipeline opens a parent run in the new store, registers there and records its results there,
    while every training stage stays a cache hit. The first task of a run: where tasks run in pods, the tracking server
    is checked from there in seconds (sslflow/services.py) before a stage waits on MLflow's retries."""
    check_services()
    return store_id()

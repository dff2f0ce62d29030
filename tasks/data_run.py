"""start_data_run opens the MLflow parent run of workflows/data.py; finish_data_run closes it and summarises."""

from __future__ import annotations

import json

from flytekit import Cache, Resources, task

from images.specs import cpu_image
from sslflow.config import IngestConfig, ValidationConfig, check_label_fractions
from sslflow.reporting.dataset_report import dataset_summary
from sslflow.tracking.runs import finish_parent_run, record_on_parent, start_parent_run
from sslflow.tracking.store import tracking_uri
from tasks.shared import MLFLOW_SECRETS, Dataset, ingest_summary, outages_are_recoverable


@task(
    cache=Cache(version="3"),
    container_image=cpu_image,
    requests=Resources(cpu="1", mem="1Gi"),
    retries=2,
    secret_requests=MLFLOW_SECRETS,
)
@outages_are_recoverable
def start_data_run(
    tracking_store: str,
    source: str,
    fingerprint: str,
    config: IngestConfig,
    validation: ValidationConfig,
    label_fractions: list[float],
) -> str:
    """One parent run per (store, source content, settings): its id. A rerun on unchanged data reuses it.
    fingerprint: the source's (tasks/ingest.py: source_fingerprint), for the cache key."""
    check_label_fractions(label_fractions)
    settings = {"source": source, "ingest": config, "validation": validation, "label_fractions": label_fractions}
    return start_parent_run("validate_data", settings)


@task(
    cache=Cache(version="5"),
    container_image=cpu_image,
    requests=Resources(cpu="1", mem="1Gi"),
    retries=2,
    secret_requests=MLFLOW_SECRETS,
)
@outages_are_recoverable
def finish_data_run(dataset: Dataset, parent_run_id: str) -> str:
    """Record the valid dataset on the parent run and close it; the summary `pyflyte run` prints."""
    summary = ingest_summary(dataset)
    record_on_parent(
        parent_run_id,
        metrics={
            "images": dataset.num_images,
            "cases": summary.get("cases", 0),
            "quarantined": len(summary.get("quarantined", [])),
        },
        tags={"dataset.name": dataset.name, "dataset.sha256": dataset.content_sha256},
        texts={"ingest_summary.json": json.dumps(summary, indent=1)},
    )
    finish_parent_run(parent_run_id)
    return dataset_summary(
        dataset.name, dataset.num_images, dataset.content_sha256, summary, parent_run_id, tracking_uri()
    )

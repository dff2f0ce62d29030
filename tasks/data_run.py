"""start_data_run opens the MLflow parent run of workflows/data.py; finish_data_run closes it and summarises."""

from __future__ import annotations

from flytekit import Cache, Resources, task

from images.specs import cpu_image
from tasks.artifacts import Dataset, read_summary
from tasks.config import IngestConfig, ValidationConfig
from tasks.ingest import SourceUri
from tasks.tracking import finish_parent_run, start_parent_run, tracking_uri


@task(cache=Cache(version="1"), container_image=cpu_image, requests=Resources(cpu="1", mem="1Gi"))
def start_data_run(source: SourceUri, config: IngestConfig, validation: ValidationConfig, label_fractions: list[float]) -> str:
    """One parent run per (source content, settings): its id. A rerun on unchanged data reuses it."""
    settings = {"source": source, "ingest": config, "validation": validation, "label_fractions": label_fractions}
    return start_parent_run("validate_data", settings)


@task(cache=Cache(version="1"), container_image=cpu_image, requests=Resources(cpu="1", mem="1Gi"))
def finish_data_run(dataset: Dataset, parent_run_id: str) -> str:
    """Close the parent run; the summary `pyflyte run` prints for a valid dataset."""
    finish_parent_run(parent_run_id)
    summary = read_summary(dataset)
    quarantined = summary.get("quarantined", [])
    lines = [
        f"dataset {dataset.name!r} is valid: {dataset.num_images} images, {summary.get('cases', '?')} cases, "
        f"{summary.get('labelled', '?')} labelled, splits {summary.get('split_counts', {})}",
        f"duplicates dropped: {summary.get('duplicates_dropped', 0)}; quarantined: {len(quarantined)}",
        *[f"  quarantined {item['problem']}" for item in quarantined],
        f"content sha256: {dataset.content_sha256}",
        f"MLflow parent run: {parent_run_id} ({tracking_uri()})",
    ]
    return "\n".join(lines)

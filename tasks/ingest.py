"""ingest: a source (built-in data set, folder, parquet image list or S3 prefix) -> a Dataset folder.

Bad input stops the run here, before any training, with a SourceError naming the file, row or key
(sslflow/data/sources.py lists the sources, sslflow/data/metadata.py the metadata rules). DICOM
identities are pseudonymised with the key of the Flyte Secret sslflow/pseudonym_key when it is mounted
(sslflow/data/pseudonyms.py for the local fallbacks). Raw inputs
are only read; the dataset is written to a temporary folder and renamed into place, so a failed
ingest leaves nothing a later run could mistake for a dataset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import mlflow
from flytekit import HashMethod, Resources, Secret, current_context, task
from flytekit.types.directory import FlyteDirectory

from images.specs import cpu_image
from sslflow.config import IngestConfig
from sslflow.data.dataset import write_dataset
from sslflow.data.manifest import build_manifest
from sslflow.data.sources import read_source, source_name
from sslflow.tracking.runs import stage_run
from tasks.shared import Dataset, SourceUri, content_hash, pipeline_cache


PSEUDONYM_SECRET = Secret(group="sslflow", key="pseudonym_key")  # locally also $SSLFLOW_PSEUDONYM_KEY (flytekit)


def _pseudonym_key() -> str | None:
    """The Flyte Secret sslflow/pseudonym_key, or None (sslflow then uses $SSLFLOW_PSEUDONYM_KEY or its key file)."""
    try:
        return current_context().secrets.get(PSEUDONYM_SECRET.group, PSEUDONYM_SECRET.key) or None
    except ValueError:  # not mounted (a local run without it): never an error
        return None


def _log_summary(summary: dict, sha256: str) -> None:
    mlflow.log_metrics(
        {
            "images": summary["images"], "cases": summary["cases"], "duplicates_dropped": summary["duplicates_dropped"],
            "quarantined": len(summary["quarantined"]), "sites": len(summary["sites"]), "skipped_non_image": sum(summary["skipped_non_image"].values()),
            **{f"read.{key}": value for key, value in summary["read"].items()},
        }
    )  # fmt: skip
    mlflow.log_dict(summary, "ingest_summary.json")
    mlflow.set_tag("dataset.sha256", sha256)
    if summary["case_ids_are_proxy"]:
        mlflow.set_tag("case_ids", "PROXY (pixel-neighbour groups; the source has no real case ids)")


@task(
    cache=pipeline_cache("3"), container_image=cpu_image, requests=Resources(cpu="2", mem="8Gi"), retries=2, secret_requests=[PSEUDONYM_SECRET]
)
def ingest(source: SourceUri, config: IngestConfig, parent_run_id: str) -> Annotated[Dataset, HashMethod(content_hash)]:
    """Read ``source``, normalise every image to config.channels x config.image_size^2, and write a Dataset."""
    name = source_name(source)
    with stage_run(parent_run_id, f"ingest:{name}", {"source": source, "config": config}) as run:
        manifest, pixels, summary = build_manifest(read_source(source, config, pseudonym_key=_pseudonym_key()), config)
        directory = Path(current_context().working_directory) / f"dataset-{name}"
        sha256 = write_dataset(directory, manifest, pixels, summary)
        _log_summary(summary, sha256)
    return Dataset(directory=FlyteDirectory(str(directory)), name=name, num_images=len(manifest), content_sha256=sha256, mlflow_run_id=run.info.run_id)

"""validate: the great-expectations suite (sslflow/data/validation.py) over a Dataset; failure stops the pipeline.

The report is a Flyte Deck and MLflow artifacts (validation.json, validation.html); its ``warnings`` repeat
ingest's leakage guard (images without a case id, cases by study or series: sslflow/data/leakage.py).
Cached on the Dataset's content hash, which covers the whole listing ingest read (sslflow/data/dataset.py).
"""

from __future__ import annotations

from typing import Annotated

import mlflow
from flytekit import Deck, HashMethod, Resources, task

from images.specs import cpu_image
from sslflow.config import ValidationConfig
from sslflow.data.dataset import count_stored_images, read_manifest, read_summary
from sslflow.reporting.dataset_report import validation_html
from sslflow.tracking.runs import stage_run
from tasks.shared import (
    MLFLOW_SECRETS,
    REPORT_DECKS,
    Dataset,
    content_hash,
    dataset_without_shards,
    outages_are_recoverable,
    pipeline_cache,
    stored_shards,
)


@task(
    cache=pipeline_cache("8"),
    container_image=cpu_image,
    requests=Resources(cpu="1", mem="4Gi"),
    **REPORT_DECKS,
    retries=2,
    secret_requests=MLFLOW_SECRETS,
)
@outages_are_recoverable
def validate(
    dataset: Dataset, config: ValidationConfig, label_fractions: list[float], parent_run_id: str
) -> Annotated[Dataset, HashMethod(content_hash)]:
    """Pass ``dataset`` through if it satisfies the suite; otherwise raise DataValidationError.

    label_fractions: the fine-tuning fractions this dataset must support (empty: not fine-tuned on).
    """
    # here, not at the top: great-expectations takes about 2 s of CPU to import, which every `pyflyte run` of the
    # workflows (a refusal of its inputs included) would pay before any task runs
    from sslflow.data.validation import DataValidationError, validate_manifest

    params = {"config": config, "label_fractions": label_fractions, "dataset.sha256": dataset.content_sha256}
    with stage_run(parent_run_id, f"validate:{dataset.name}", params):
        folder, _ = dataset_without_shards(
            dataset
        )  # the suite reads the manifest and ingest's per-image statistics, no pixels
        manifest = read_manifest(folder)
        report = validate_manifest(
            manifest, count_stored_images(manifest, stored_shards(dataset)), config, label_fractions
        )
        report["ingest"] = read_summary(folder)
        report["warnings"] = report["ingest"].get(
            "warnings", []
        )  # the leakage guard (sslflow/data/leakage.py), files left out
        report["unlisted_files"] = report["ingest"].get(
            "unlisted_files", {"count": 0, "keys": []}
        )  # not in metadata.csv: not used
        page = validation_html(dataset.name, report)
        Deck(f"validation {dataset.name}", page)
        mlflow.log_dict(report, "validation.json")
        mlflow.log_text(page, "validation.html")
        mlflow.log_metrics(
            {
                "failing_expectations": len(report["failures"]),
                "warnings": len(report["warnings"]),
                "unlisted_files": report["unlisted_files"]["count"],
            }
        )
        mlflow.log_metrics(
            {f"case_sizes.{key}": value for key, value in report["case_sizes"].items() if key != "cases_by_size"}
        )
        if not report["success"]:
            raise DataValidationError(
                f"dataset {dataset.name!r} failed {len(report['failures'])} expectation(s) (images are named by "
                "their image_key; "
                "`python -m sslflow.data.image_keys <source> <key>...` names their files):\n  "
                + "\n  ".join(report["failures"])
            )
    return dataset

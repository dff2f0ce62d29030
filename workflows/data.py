"""validate_data: ingest + validation alone, to check a data source before any training.

    pyflyte run workflows/data.py validate_data --source ./my_scans
    pyflyte run workflows/data.py validate_data --source s3://bucket/prefix --label_fractions '[0.1, 1.0]'
    pyflyte run workflows/data.py validate_data --source ./cohort.parquet --config '{"max_bad_fraction": 0.01}'

Exits 0 and prints a summary when the source is valid; otherwise exits non-zero, printing the
failing checks with the offending files or rows (SourceError from ingest, DataValidationError from
validate). The MLflow parent run holds the ingest summary and the validation report.
"""

from __future__ import annotations

from flytekit import workflow

import workflows.refusals  # noqa: F401  (refused inputs print as one message: see the module)
from sslflow.config import IngestConfig, ValidationConfig
from tasks.data_run import finish_data_run, start_data_run
from tasks.ingest import source_fingerprint
from tasks.store import tracking_store
from tasks.validate import validate
from workflows.ingest import ingest


@workflow
def validate_data(
    source: str,
    config: IngestConfig = IngestConfig(),
    validation: ValidationConfig = ValidationConfig(),
    label_fractions: list[float] = [],  # noqa: B006 (Flyte defaults are literals, never mutated)
) -> str:
    fingerprint = source_fingerprint(source=source)  # in a pod: services checked, the source fingerprinted
    run_id = start_data_run(
        tracking_store=tracking_store(),
        source=source,
        fingerprint=fingerprint,
        config=config,
        validation=validation,
        label_fractions=label_fractions,
    )
    dataset = ingest(source=source, fingerprint=fingerprint, config=config, parent_run_id=run_id)
    valid = validate(dataset=dataset, config=validation, label_fractions=label_fractions, parent_run_id=run_id)
    return finish_data_run(dataset=valid, parent_run_id=run_id)

"""start_pipeline_run opens the MLflow parent run; report closes it and renders the final table."""

from __future__ import annotations

import pandas as pd
from flytekit import Cache, Resources, task

from images.specs import cpu_image
from ssl_models.train import FinetuneConfig, PretrainConfig
from sslflow.config import RegistryConfig
from sslflow.registry.record import Registration
from sslflow.reporting.summary import pipeline_summary
from sslflow.tracking.runs import finish_parent_run, start_parent_run
from sslflow.tracking.store import tracking_uri
from tasks.shared import SourceUri


@task(cache=Cache(version="1"), container_image=cpu_image, requests=Resources(cpu="1", mem="1Gi"))
def start_pipeline_run(
    generic_source: SourceUri,
    domain_source: SourceUri,
    shift_source: SourceUri,
    encoder_name: str,
    simclr: PretrainConfig,
    micle: PretrainConfig,
    finetune: FinetuneConfig,
    label_fractions: list[float],
    registry: RegistryConfig,
) -> str:
    """One parent run per distinct pipeline configuration (sources by content hash): its id.

    A rerun with identical inputs hits this task's cache and so reuses the run, as it reuses everything else.
    """
    settings = {
        "generic_source": generic_source, "domain_source": domain_source, "shift_source": shift_source,
        "encoder": encoder_name, "simclr": simclr, "micle": micle, "finetune": finetune,
        "label_fractions": label_fractions, "registry": registry,
    }  # fmt: skip
    return start_parent_run("ssl_pipeline", settings)


@task(cache=Cache(version="2"), container_image=cpu_image, requests=Resources(cpu="1", mem="1Gi"))
def report(results: pd.DataFrame, registration: Registration, parent_run_id: str) -> str:
    """The closing summary printed by `pyflyte run`: accuracy table, MLflow run id, registered version."""
    finish_parent_run(parent_run_id)
    return pipeline_summary(results, registration, parent_run_id, tracking_uri())

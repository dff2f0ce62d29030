"""The pipeline's MLflow parent run: start_pipeline_run opens it; report records the results and the registration on
it, closes it and renders the summary `pyflyte run` prints."""

from __future__ import annotations

import dataclasses

import pandas as pd
from flytekit import Cache, Resources, task

from images.specs import cpu_image
from ssl_models.finetuning import FinetuneConfig
from ssl_models.fixmatch import SelfTrainConfig
from ssl_models.pretraining import PretrainConfig
from sslflow.config import RegistryConfig, check_label_fractions, check_seeds
from sslflow.evaluation import accuracy_metric_key
from sslflow.ladder import check_initial_weights, continued_method
from sslflow.registry.record import Registration
from sslflow.reporting.summary import pipeline_summary
from sslflow.reporting.tables import results_markdown
from sslflow.tracking.runs import finish_parent_run, record_on_parent, start_parent_run
from sslflow.tracking.store import tracking_uri
from tasks.shared import MLFLOW_SECRETS, outages_are_recoverable


@task(
    cache=Cache(version="8"),
    container_image=cpu_image,
    requests=Resources(cpu="1", mem="1Gi"),
    retries=2,
    secret_requests=MLFLOW_SECRETS,
)
@outages_are_recoverable
def start_pipeline_run(
    tracking_store: str,
    generic_source: str,
    domain_source: str,
    shift_source: str,
    source_fingerprints: list[str],
    encoder_name: str,
    generic_pretraining: PretrainConfig,
    domain_pretraining: PretrainConfig,
    finetune: FinetuneConfig,
    label_fractions: list[float],
    seeds: list[int],
    self_train: SelfTrainConfig,
    registry: RegistryConfig,
) -> str:
    """One parent run per distinct pipeline configuration (sources by content hash: source_fingerprints, the generic,
    domain and shift sources' from tasks/ingest.py's source_fingerprint, in the cache key) and store: its id.

    A rerun with identical inputs hits this task's cache and so reuses the run, as it reuses everything else;
    a rerun against another store (tracking_store) opens a parent run there.
    """
    check_label_fractions(label_fractions)  # before any work: a bad fraction would fail only after training
    check_seeds(seeds)
    method = continued_method(  # the domain rungs' (tasks/pretrain.py): the generic rung's
        generic_pretraining.method, domain_pretraining.method, default_method=PretrainConfig().method
    )
    check_initial_weights("domain", domain_pretraining.initial_weights)
    settings = {
        "generic_source": generic_source,
        "domain_source": domain_source,
        "shift_source": shift_source,
        "encoder": encoder_name,
        "generic_pretraining": generic_pretraining,
        "domain_pretraining": dataclasses.replace(domain_pretraining, method=method),
        "finetune": finetune,
        "label_fractions": label_fractions,
        "seeds": seeds,
        "self_train": self_train,
        "registry": registry,
    }
    return start_parent_run("ssl_pipeline", settings)


@task(
    cache=Cache(version="9"),
    container_image=cpu_image,
    requests=Resources(cpu="1", mem="1Gi"),
    retries=2,
    secret_requests=MLFLOW_SECRETS,
)
@outages_are_recoverable
def report(results: pd.DataFrame, registration: Registration, parent_run_id: str) -> str:
    """Record the results and the registration on the parent run and close it; the closing summary
    printed by `pyflyte run`: accuracy table, MLflow run id, registered version."""
    headline = results[results["eval_kind"].isin(["in_domain", "shift"])]
    metrics = {accuracy_metric_key(row): row.accuracy for row in headline.itertuples()}
    registry_tags = {
        "registry.model": registration.model_name,
        "registry.version": registration.version,
        "registry.decision": registration.decision,
    }
    record_on_parent(
        parent_run_id,
        metrics=metrics,
        tags=registry_tags,
        texts={"results.csv": results.to_csv(index=False), "results.md": results_markdown(results)},
    )
    finish_parent_run(parent_run_id)
    return pipeline_summary(results, registration, parent_run_id, tracking_uri())

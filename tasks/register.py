"""register: the best fine-tuned model by validation accuracy becomes a version of the registered model
(alias ``challenger``), in MLflow's PyTorch format with an ONNX copy (docs/serving.md); the promotion
gate (sslflow/registry/gate.py) decides whether it also becomes ``champion``. rollback_champion undoes a
promotion. The registry logic is in sslflow/registry/.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from flytekit import Cache, Resources, task

from images.specs import cpu_image
from sslflow.config import RegistryConfig
from sslflow.data.manifest import labelled_rows
from sslflow.evaluation import select_best
from sslflow.registry.aliases import rollback_aliases
from sslflow.registry.names import default_model_name
from sslflow.registry.record import Registration
from sslflow.registry.registration import register_selected
from sslflow.tracking.runs import stage_run
from sslflow.tracking.store import client
from sslflow.training.model_files import load_classifier
from tasks.shared import MLFLOW_SECRETS, Dataset, FinetunedModel, labelled_in, outages_are_recoverable, read_rows


def labelled_gate_split(dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, C, H, W) uint8, label names (N,)) of the dataset's labelled gate rows: the promotion
    gate decides on these; the test split is never read here."""
    images, label_names, _ = labelled_rows(*read_rows(dataset, labelled_in("gate")), "gate")
    if len(label_names) == 0:
        raise ValueError(
            f"dataset {dataset.name} has no labelled gate rows: ingest it with IngestConfig.gate_fraction > 0"
        )
    return images, label_names


# Cached on the parent run too (unlike the training stages): a rerun against another store registers the
# model in that store's registry; the same store and configuration reuse the registration.
@task(
    cache=Cache(version="9"),
    container_image=cpu_image,
    requests=Resources(cpu="1", mem="4Gi"),
    retries=2,
    secret_requests=MLFLOW_SECRETS,
)
@outages_are_recoverable
def register(
    models: list[FinetunedModel],
    in_domain: Dataset,
    shift: Dataset,
    config: RegistryConfig,
    domain_source: str,
    parent_run_id: str,
) -> Registration:
    """Register the best model by validation accuracy as ``challenger``; the promotion gate may make it ``champion``.
    The registered model is ``config.model_name``, or when that is empty the one of ``domain_source``
    (sslflow/registry/names.py)."""
    best = select_best(models)
    config = dataclasses.replace(config, model_name=config.model_name or default_model_name(domain_source))
    with stage_run(parent_run_id, "register", {"config": config}):
        classifier = load_classifier(
            best.checkpoint.download(), best.encoder_name, best.in_channels, best.image_size, len(best.class_names)
        )
        gate_sets = {"in_domain": labelled_gate_split(in_domain), "shift": labelled_gate_split(shift)}
        data_tags = {
            "in_domain_data_sha256": in_domain.content_sha256,
            "shift_data_sha256": shift.content_sha256,
            "in_domain_data": in_domain.name,
            "shift_data": shift.name,
        }
        return register_selected(client(), best, classifier, gate_sets, data_tags, config, parent_run_id)


@task(container_image=cpu_image, requests=Resources(cpu="1", mem="1Gi"), secret_requests=MLFLOW_SECRETS)
def rollback_champion(model_name: str) -> str:
    """Undo the last promotion. Not cached and not retried: each run moves the aliases one step back."""
    return rollback_aliases(model_name)

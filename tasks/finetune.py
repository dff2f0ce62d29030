"""finetune: a classifier on a fraction of the domain labels, from a pretrained encoder or from scratch."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import mlflow
import numpy as np
import pandas as pd
import torch
from flytekit import HashMethod, Resources, current_context, dynamic, task
from flytekit.types.file import FlyteFile

from images.specs import cpu_image
from ssl_models.finetuning import FinetuneConfig, finetune, validation_scores
from sslflow.ladder import PIXELS_ARM, PIXELS_ENCODER, SCRATCH_ARM
from sslflow.tracking.runs import stage_run
from sslflow.training.fit import fit_summary
from sslflow.training.labelled_subset import labelled_subset
from sslflow.training.model_files import initial_encoder, save_state_dict
from sslflow.training.progress import show_progress
from tasks.shared import (
    Dataset,
    EncoderCheckpoint,
    FinetunedModel,
    content_hash,
    labelled_in,
    outages_are_recoverable,
    pipeline_cache,
    read_rows,
)
from tasks.training_pods import FINETUNE_TASK_SETTINGS, gpus_usable


def _labelled_train_and_val(domain: Dataset) -> tuple[pd.DataFrame, np.ndarray]:
    """(manifest, images (N, C, H, W) uint8) of the labelled train and val rows only: the rest is neither fetched nor
    read."""
    return read_rows(domain, labelled_in("train", "val"))


STOPPING_METRICS = (
    "budget_steps",
    "stopped_step",
    "best_step",
    "best_val_accuracy",
    "evaluations",
    "early_stopped",
    "best_at_budget_end",
)


def _log_history(history: list[dict], *, linear_probe: bool) -> None:
    """On the stage run: the training curve per step, where full fine-tuning stopped, and the probe's fit (converged
    or not, and the L2 strength validation chose)."""
    for record in history:
        curve = {
            "train_loss": record["loss"],
            "train_accuracy": record["accuracy"],
            "val_accuracy_at_step": record.get("val_accuracy"),
        }
        mlflow.log_metrics({k: v for k, v in curve.items() if v is not None}, step=record.get("step", record["epoch"]))
    last = history[-1]
    mlflow.log_metrics({k: float(last[k]) for k in STOPPING_METRICS if k in last})
    if linear_probe:
        mlflow.log_metrics({"probe_converged": float(last["converged"]), "probe_inverse_l2": last["inverse_l2"]})
        mlflow.set_tag("probe_stop_reason", last["stop_reason"])


def _finetune(
    domain: Dataset,
    initial: EncoderCheckpoint | None,
    encoder_name: str,
    label_fraction: float,
    config: FinetuneConfig,
    parent_run_id: str,
    *,
    init: str,
    lineage: dict,
) -> FinetunedModel:
    """initial None: a new ``encoder_name`` encoder with random weights; ``init`` names where the weights came from."""
    probe = "linear" if config.linear_probe else "finetune"
    show_progress()
    manifest, images = _labelled_train_and_val(domain)
    in_channels, image_size = int(images.shape[1]), int(images.shape[-1])
    weights = None if initial is None else initial.checkpoint.download()
    encoder = initial_encoder(weights, encoder_name, in_channels, image_size, seed=config.seed)
    subset = labelled_subset(manifest, images, label_fraction, config.seed, domain.name)
    validation = (torch.from_numpy(subset.val_images), subset.val_labels)
    params = {
        "config": config,
        "init": init,
        "probe": probe,
        "label_fraction": label_fraction,
        "num_labels": len(subset.labels),
        "num_val_labels": len(subset.val_labels),
        **lineage,
    }
    with stage_run(parent_run_id, f"finetune:{init}/{probe}@{label_fraction:g}/seed={config.seed}", params) as run:
        images_in, classes = torch.from_numpy(subset.images), len(subset.class_names)
        model, history = finetune(encoder, images_in, subset.labels, classes, config, validation=validation)
        _log_history(history, linear_probe=config.linear_probe)
        val_accuracy, val_loss = validation_scores(model, validation[0], validation[1], config.augment)
        fit = fit_summary(history[-1])
        scores = {"val_accuracy": val_accuracy, "val_loss": val_loss, "final_train_accuracy": fit.final_train_accuracy}
        mlflow.log_metrics(scores)
        mlflow.set_tag("chosen_on_validation", fit.chosen)
        path, sha256 = save_state_dict(model, Path(current_context().working_directory), "finetune", "classifier.pt")
        mlflow.log_artifact(str(path), artifact_path="checkpoint")
    return FinetunedModel(
        checkpoint=FlyteFile(str(path)),
        encoder_name=encoder_name,
        in_channels=in_channels,
        image_size=image_size,
        class_names=subset.class_names,
        init=init,
        probe=probe,
        label_fraction=label_fraction,
        num_labels=len(subset.labels),
        val_accuracy=val_accuracy,
        content_sha256=sha256,
        mlflow_run_id=run.info.run_id,
        seed=config.seed,
        num_val_labels=len(subset.val_labels),
        val_loss=val_loss,
        chosen=fit.chosen,
        best_step=fit.best_step,
        final_train_accuracy=fit.final_train_accuracy,
    )


@task(cache=pipeline_cache("8"), **FINETUNE_TASK_SETTINGS)
@gpus_usable
@outages_are_recoverable
def finetune_pretrained(
    domain: Dataset, encoder: EncoderCheckpoint, label_fraction: float, config: FinetuneConfig, parent_run_id: str
) -> Annotated[FinetunedModel, HashMethod(content_hash)]:
    """A new linear layer on a self-supervised encoder; the model's init is the encoder's arm ("simclr+micle"), its
    lineage the user's initial weights the encoder's ladder started from, if any. A collapsed encoder's model is
    evaluated and reported, never selected."""
    lineage = {"encoder.sha256": encoder.content_sha256, "encoder.mlflow_run_id": encoder.mlflow_run_id}
    if encoder.initial_weights:
        lineage.update(
            {
                "initial_weights.source": encoder.initial_weights,
                "initial_weights.sha256": encoder.initial_weights_sha256,
            }
        )
    model = _finetune(
        domain, encoder, encoder.encoder_name, label_fraction, config, parent_run_id, init=encoder.arm, lineage=lineage
    )
    weights = {"initial_weights": encoder.initial_weights, "initial_weights_sha256": encoder.initial_weights_sha256}
    return dataclasses.replace(model, selectable=not encoder.collapsed, **weights)


@task(cache=pipeline_cache("6"), **FINETUNE_TASK_SETTINGS)
@gpus_usable
@outages_are_recoverable
def finetune_scratch(
    domain: Dataset, encoder_name: str, label_fraction: float, config: FinetuneConfig, parent_run_id: str
) -> Annotated[FinetunedModel, HashMethod(content_hash)]:
    """The baseline: the same architecture, recipe and search from random initialisation."""
    return _finetune(domain, None, encoder_name, label_fraction, config, parent_run_id, init=SCRATCH_ARM, lineage={})


@task(cache=pipeline_cache("6"), **FINETUNE_TASK_SETTINGS)
@gpus_usable
@outages_are_recoverable
def probe_pixels(
    domain: Dataset, label_fraction: float, config: FinetuneConfig, parent_run_id: str
) -> Annotated[FinetunedModel, HashMethod(content_hash)]:
    """The floor: the linear probe on raw pixels (multinomial logistic regression on standardised pixels)."""
    config = dataclasses.replace(config, linear_probe=True)
    return _finetune(domain, None, PIXELS_ENCODER, label_fraction, config, parent_run_id, init=PIXELS_ARM, lineage={})


@dynamic(cache=pipeline_cache("7"), container_image=cpu_image, requests=Resources(cpu="1", mem="2Gi"))
def finetune_all(
    domain: Dataset,
    encoders: list[EncoderCheckpoint],
    label_fractions: list[float],
    seeds: list[int],
    config: FinetuneConfig,
    parent_run_id: str,
) -> list[FinetunedModel]:
    """The ablation at each label fraction: the floors (a linear probe on pixels, a fine-tuned random
    network) and each pretrained encoder (the ladder's rungs, sslflow.ladder) x {linear probe, full fine-tune}.

    No linear probe on a random frozen network: its features measure the initialisation, not a method
    (README, "Baselines"). Each seed (FinetunedModel.seed) repeats the whole ablation with its own label
    subset, head initialisation and batch order; the pretrained encoders are shared by the seeds.
    """
    return [
        model
        for seed in seeds
        for model in _ablation(domain, encoders, label_fractions, dataclasses.replace(config, seed=seed), parent_run_id)
    ]


def _ablation(
    domain: Dataset,
    encoders: list[EncoderCheckpoint],
    label_fractions: list[float],
    config: FinetuneConfig,
    parent_run_id: str,
) -> list:
    """finetune_all's nodes for one seed (config.seed); encoders: the ladder's, bottom rung first."""
    models = []
    for fraction in label_fractions:
        common = dict(domain=domain, label_fraction=fraction, parent_run_id=parent_run_id)
        models.append(probe_pixels(config=config, **common))
        models.append(
            finetune_scratch(
                encoder_name=encoders[-1].encoder_name, config=dataclasses.replace(config, linear_probe=False), **common
            )
        )
        for probe_config in (
            dataclasses.replace(config, linear_probe=True),
            dataclasses.replace(config, linear_probe=False),
        ):
            common = dict(domain=domain, label_fraction=fraction, config=probe_config, parent_run_id=parent_run_id)
            models += [finetune_pretrained(encoder=encoder, **common) for encoder in encoders]
    return models

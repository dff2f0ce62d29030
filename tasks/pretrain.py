"""pretrain_simclr (generic images) and pretrain_micle (domain images, case-aware positives)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Annotated

import mlflow
import torch
from flytekit import Cache, HashMethod, task
from flytekit.types.file import FlyteFile

from ssl_models.encoders import build_encoder
from ssl_models.micle import MiclePairSampler
from ssl_models.train import PretrainConfig, pretrain_contrastive
from tasks.artifacts import Dataset, EncoderCheckpoint, content_hash, file_sha256, read_dataset
from tasks.checkpoints import EpochCheckpoints
from tasks.tracking import stage_run
from tasks.training import TRAINING_TASK, is_main_process, load_encoder, show_progress


def _pretrain(
    stage: str,
    dataset: Dataset,
    initial: EncoderCheckpoint | None,  # None: a new encoder_name encoder with random weights
    encoder_name: str,
    case_aware: bool,
    config: PretrainConfig,
    parent_run_id: str,
    lineage: dict,
) -> EncoderCheckpoint:
    show_progress()
    manifest, images = read_dataset(dataset)
    encoder = build_encoder(encoder_name, int(images.shape[1]), int(images.shape[-1])) if initial is None else load_encoder(initial)
    pool = (manifest["split"] != "test").to_numpy()  # pretraining never sees the test split
    images, manifest = images[pool], manifest[pool].reset_index(drop=True)
    case_ids = manifest["case_id"].tolist() if case_aware else list(range(len(manifest)))
    sampler = MiclePairSampler(case_ids)
    params = {"config": config, "encoder": encoder_name, "dataset": dataset.name, "dataset.sha256": dataset.content_sha256, **lineage}
    tracking = stage_run(parent_run_id, stage, params) if is_main_process() else contextlib.nullcontext()
    with tracking as run:
        if run is not None:
            mlflow.log_metrics({"images": len(manifest), "cases": sampler.num_cases, "single_image_cases": sampler.num_single_image_cases})
            mlflow.log_param("world_size", os.environ.get("WORLD_SIZE", "1"))
            if case_aware and bool(manifest["case_id_is_proxy"].any()):
                mlflow.set_tag("case_ids", "PROXY (pixel-neighbour groups; the data has no real case ids)")

        checkpoints = EpochCheckpoints(f"{stage}|{dataset.content_sha256}|{config}|{encoder_name}|{sorted(lineage.items())}")

        def end_of_epoch(epoch: int, metrics: dict, state_fn) -> None:
            if run is not None:
                mlflow.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch)
            if is_main_process():
                checkpoints.save(state_fn())

        resume_state = checkpoints.load()
        pretrain_contrastive(
            encoder, torch.from_numpy(images), case_ids, config, on_epoch_end=end_of_epoch, resume_state=resume_state
        )
        if run is not None and resume_state is not None:
            mlflow.set_tag("resumed_after_epoch", resume_state["epoch"])
        path = Path(tempfile.mkdtemp(prefix=f"{stage}-")) / "encoder.pt"
        torch.save(encoder.state_dict(), path)
        if run is not None:
            mlflow.log_artifact(str(path), artifact_path="checkpoint")
        if is_main_process():
            checkpoints.clear()
    return EncoderCheckpoint(
        checkpoint=FlyteFile(str(path)),
        encoder_name=encoder_name,
        in_channels=int(images.shape[1]),
        image_size=int(images.shape[-1]),
        content_sha256=file_sha256(path),
        mlflow_run_id=run.info.run_id if run is not None else "",
    )


@task(cache=Cache(version="1", ignored_inputs=("parent_run_id",)), **TRAINING_TASK)
def pretrain_simclr(
    dataset: Dataset, encoder_name: str, config: PretrainConfig, parent_run_id: str
) -> Annotated[EncoderCheckpoint, HashMethod(content_hash)]:
    """SimCLR (arXiv 2002.05709) from random initialisation; labels unused; two augmentations of each image."""
    return _pretrain("pretrain_simclr", dataset, None, encoder_name, False, config, parent_run_id, {})


@task(cache=Cache(version="1", ignored_inputs=("parent_run_id",)), **TRAINING_TASK)
def pretrain_micle(
    dataset: Dataset, initial: EncoderCheckpoint, config: PretrainConfig, parent_run_id: str
) -> Annotated[EncoderCheckpoint, HashMethod(content_hash)]:
    """MICLe (arXiv 2101.05224) from the SimCLR encoder: positives are two images of one case_id."""
    lineage = {"initial_encoder.sha256": initial.content_sha256, "initial_encoder.mlflow_run_id": initial.mlflow_run_id}
    return _pretrain(
        "pretrain_micle", dataset, initial, initial.encoder_name, True, config, parent_run_id, lineage
    )

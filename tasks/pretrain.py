"""The pretraining ladder (sslflow.ladder.LADDER), one task a rung, with the configured method (PretrainConfig.method:
SimCLR, MoCo v2, BYOL, DINO, distillation): pretrain_generic (generic images), then from its encoder on the domain
images: pretrain_domain (views of one image) and pretrain_case_pairs (case pairs: two images of one case), with the
generic encoder's method (sslflow.ladder.continued_method), same epochs and schedule, so the two differ only in the
pairing rule. Each encoder's ``arm`` names what ran ("moco+micle").

Every epoch logs the method's loss and, where the dataset has labelled train and val rows, the kNN
accuracy of the encoder's features (ssl_models.evaluate.KnnMonitor) on the val split."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from pathlib import Path
from typing import Annotated

import mlflow
import numpy as np
import pandas as pd
import torch
from flytekit import HashMethod, current_context, task
from flytekit.types.file import FlyteFile

from ssl_models.data import InMemoryPairs, StreamingPairs, fits_in_memory, memory_budget_bytes
from ssl_models.distributed import leave_process_group, local_world_size
from ssl_models.evaluate import KnnMonitor
from ssl_models.methods import METHODS
from ssl_models.micle import CasePairSampler
from ssl_models.pretraining import PairSource, PretrainConfig, pretrain_contrastive
from sslflow.data.dataset import (
    fetch_shards_once_per_node,
    image_shape,
    images_bytes,
    read_images,
    read_manifest,
    shard_rows,
)
from sslflow.data.labels import class_indices
from sslflow.data.manifest import labelled_rows
from sslflow.ladder import RUNGS, Rung, arm, check_initial_weights, continued_method, method_of
from sslflow.tracking.initial_weights import InitialWeights, encoder_from_weights
from sslflow.tracking.runs import stage_run
from sslflow.training.checkpoints import EpochCheckpoints
from sslflow.training.model_files import initial_encoder, save_state_dict
from sslflow.training.progress import is_main_process, show_progress
from tasks.shared import (
    Dataset,
    EncoderCheckpoint,
    content_hash,
    dataset_without_shards,
    node_shards_folder,
    outages_are_recoverable,
    read_rows,
)
from tasks.training_pods import GPU_TASK_SETTINGS, gpus_usable, pretraining_cache

log = logging.getLogger(__name__)
# ContrastiveRun.state's layout (v2: every rank's generator; v3: MoCo's steps_done): a local checkpoint of another
# layout is not resumed
STATE_FORMAT = "state-v3"

# the kNN monitor's bank (train) and queries (val): at most this many labelled images of each (about 2 s an epoch on
# 2 loaded CPU cores, small_cnn, 28 px)
MONITOR_IMAGES = 1000


def _monitor_rows(manifest: pd.DataFrame) -> pd.Series:
    """The labelled train and val rows the kNN monitor reads: the first MONITOR_IMAGES of each split."""
    labelled = manifest["split"].isin(["train", "val"]) & manifest["label"].notna()
    return labelled & (manifest[labelled].groupby("split").cumcount() < MONITOR_IMAGES).reindex(
        manifest.index, fill_value=False
    )


def _knn_monitor(dataset: Dataset, config: PretrainConfig) -> KnnMonitor | None:
    """The per-epoch kNN monitor on ``dataset``'s labelled val rows (bank: its labelled train rows); None without
    both."""
    manifest, images = read_rows(dataset, _monitor_rows)
    bank_images, bank_names, _ = labelled_rows(manifest, images, "train")
    query_images, query_names, _ = labelled_rows(manifest, images, "val")
    classes = sorted(set(bank_names))
    known = np.isin(query_names, classes)
    if len(classes) < 2 or not known.any():
        log.info("dataset %s: no labelled train and val rows of two classes or more; no kNN monitor", dataset.name)
        return None
    bank_labels = torch.from_numpy(class_indices(bank_names, classes, f"dataset {dataset.name} train split"))
    query_labels = torch.from_numpy(class_indices(query_names[known], classes, f"dataset {dataset.name} val split"))
    return KnnMonitor(
        torch.from_numpy(bank_images), bank_labels, torch.from_numpy(query_images[known]), query_labels, config.augment
    )


def _pretraining_data(
    dataset: Dataset, config: PretrainConfig, *, case_pairs: bool
) -> tuple[pd.DataFrame, PairSource, tuple[int, ...]]:
    """(manifest, pair source, image shape (C, H, W)) of the train and val rows: pretraining never sees the gate or test
    split.

    In memory when the images fit in this rank's share of the pod's memory budget (config.memory_budget_mb, default a
    quarter of the pod's memory, divided by the ranks on the node), else streamed from the dataset's shards; never
    loaded whole above the budget. A Dataset in a blob store is not downloaded whole: streaming fetches each shard
    when this rank reads it (tasks.shared.dataset_without_shards); in memory, the ranks of a node download the
    shards once, into a folder they share (tasks.shared.node_shards_folder).
    """
    folder, fetch = dataset_without_shards(dataset)
    manifest = read_manifest(folder)
    manifest = manifest[manifest["split"].isin(["train", "val"])].reset_index(drop=True)
    case_ids = manifest["case_id"].tolist() if case_pairs else list(range(len(manifest)))
    budget = memory_budget_bytes(config.memory_budget_mb, local_world_size())
    shards_folder = folder if fetch is None else node_shards_folder(dataset)
    if fetch is not None:
        fetch_shards_once_per_node(shards_folder, manifest.head(1), fetch)  # image_shape reads a shard's header
    shape = image_shape(shards_folder, manifest)
    if fits_in_memory(images_bytes(shards_folder, manifest), budget):
        if fetch is not None:
            fetch_shards_once_per_node(shards_folder, manifest, fetch)
        images = read_images(shards_folder, manifest, max_bytes=budget, name=dataset.name)
        data = InMemoryPairs(torch.from_numpy(images), case_ids, seed=config.seed)
    else:
        log.info(
            "dataset %s: %d images over this rank's %d MiB memory budget; streaming from shards",
            dataset.name,
            len(manifest),
            budget // 2**20,
        )
        data = StreamingPairs(
            shard_rows(folder, manifest, case_ids, fetch=fetch), seed=config.seed, buffer_shards=config.buffer_shards
        )
    return manifest, data, shape


def _flyte_checkpoint():
    """This execution's intra-task checkpoint (a retry receives the previous attempt's), if Flyte offers one."""
    try:
        return current_context().checkpoint
    except (NotImplementedError, AttributeError):
        return None


def _log_pool(manifest: pd.DataFrame, sampler: CasePairSampler, *, case_pairs: bool) -> None:
    mlflow.log_metrics(
        {"images": len(manifest), "cases": sampler.num_cases, "single_image_cases": sampler.num_single_image_cases}
    )
    mlflow.log_param("world_size", os.environ.get("WORLD_SIZE", "1"))
    if case_pairs and bool(manifest["case_id_is_proxy"].any()):
        mlflow.set_tag("case_ids", "PROXY (pixel-neighbour groups; the data has no real case ids)")


def _starting_encoder(
    rung: Rung, initial: EncoderCheckpoint | None, encoder_name: str, shape: tuple[int, ...], config: PretrainConfig
) -> tuple[torch.nn.Module, InitialWeights | None]:
    """The encoder a rung starts from and the user's weights under it (None: random ones). The generic rung (initial
    None): config.initial_weights when given, else random weights from config.seed; the others: ``initial``'s."""
    in_channels, image_size = int(shape[0]), int(shape[-1])
    if initial is not None:
        check_initial_weights(rung.name, config.initial_weights)
        weights = (
            InitialWeights(initial.initial_weights, initial.initial_weights_sha256) if initial.initial_weights else None
        )
        return initial_encoder(
            initial.checkpoint.download(), encoder_name, in_channels, image_size, seed=config.seed
        ), weights
    if config.initial_weights:
        return encoder_from_weights(
            config.initial_weights, encoder_name, in_channels, image_size, Path(current_context().working_directory)
        )
    return initial_encoder(None, encoder_name, in_channels, image_size, seed=config.seed), None


def _continued_config(config: PretrainConfig, initial: EncoderCheckpoint) -> PretrainConfig:
    """A domain rung's ``config`` with the method of the encoder it starts from (``initial.arm``'s): LadderError if
    ``config`` names another method."""
    method = continued_method(method_of(initial.arm), config.method, default_method=PretrainConfig().method)
    return dataclasses.replace(config, method=method)


def _teacher(config: PretrainConfig, shape: tuple[int, ...]) -> tuple[torch.nn.Module | None, dict]:
    """The frozen teacher of a distillation method (its settings' teacher with teacher_weights) and its lineage params;
    (None, {}) for the other methods."""
    if not METHODS[config.method].needs_teacher:
        return None, {}
    settings = config.settings
    teacher, weights = encoder_from_weights(
        settings.teacher_weights,
        settings.teacher,
        int(shape[0]),
        int(shape[-1]),
        Path(current_context().working_directory),
    )
    return teacher, {"teacher": settings.teacher, "teacher.source": weights.source, "teacher.sha256": weights.sha256}


def _stage_params(rung: Rung, dataset: Dataset, encoder_name: str, config: PretrainConfig, lineage: dict) -> dict:
    """The params of a rung's MLflow stage run: its config, method, arm, encoder, dataset and lineage."""
    return {
        "config": config,
        "method": config.method,
        "method_settings": config.settings,
        "arm": arm(config.method, rung.name),
        "encoder": encoder_name,
        "dataset": dataset.name,
        "dataset.sha256": dataset.content_sha256,
        **lineage,
    }


def _log_outcome(stage: str, collapsed: str, resume_state: dict | None, encoder_file: Path) -> None:
    """On the stage run: why the representation collapsed (if it did), the epoch a resumed run started after, and
    the encoder file."""
    if collapsed:
        log.warning("%s: %s; its fine-tuned models are not selectable", stage, collapsed)
        mlflow.set_tag("collapsed", collapsed)
    if resume_state is not None:
        mlflow.set_tag("resumed_after_epoch", resume_state["epoch"])
    mlflow.log_artifact(str(encoder_file), artifact_path="checkpoint")


def _pretrain(
    rung: Rung,
    dataset: Dataset,
    initial: EncoderCheckpoint | None,
    encoder_name: str,
    config: PretrainConfig,
    parent_run_id: str,
    *,
    lineage: dict,
) -> EncoderCheckpoint:
    """initial None: a new ``encoder_name`` encoder with random weights. rung.case_pairs: MICLe pairs (else two views of
    one image)."""
    show_progress()
    config = config if initial is None else _continued_config(config, initial)
    stage, case_pairs = rung.stage, rung.case_pairs
    manifest, data, shape = _pretraining_data(dataset, config, case_pairs=case_pairs)
    in_channels, image_size = int(shape[0]), int(shape[-1])
    encoder, weights = _starting_encoder(rung, initial, encoder_name, shape, config)
    teacher, teacher_lineage = _teacher(config, shape)
    lineage = {**lineage, **(weights.params() if weights else {}), **teacher_lineage}
    case_ids = manifest["case_id"].tolist() if case_pairs else list(range(len(manifest)))
    params = _stage_params(rung, dataset, encoder_name, config, lineage)
    with stage_run(parent_run_id, stage, params) if is_main_process() else contextlib.nullcontext() as run:
        if run is not None:
            _log_pool(manifest, CasePairSampler(case_ids), case_pairs=case_pairs)
        key = f"{stage}|{STATE_FORMAT}|{dataset.content_sha256}|{config}|{encoder_name}|{sorted(lineage.items())}"
        checkpoints = EpochCheckpoints(key, remote=_flyte_checkpoint())

        def end_of_epoch(epoch: int, metrics: dict, state_fn) -> None:
            if run is not None:
                mlflow.log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch)
            if is_main_process():
                checkpoints.save(state_fn())

        resume = checkpoints.load() if is_main_process() else None  # reaches every rank (pretrain_contrastive)
        monitor = _knn_monitor(dataset, config)
        history = pretrain_contrastive(
            encoder, data, config, on_epoch_end=end_of_epoch, resume_state=resume, monitor=monitor, teacher=teacher
        )
        collapsed = METHODS[config.method].collapse_reason(history[-1]) if history else ""
        path, sha256 = save_state_dict(encoder, Path(current_context().working_directory), stage, "encoder.pt")
        if run is not None:
            _log_outcome(stage, collapsed, resume, path)
        if is_main_process():
            checkpoints.clear()
    leave_process_group()  # every rank done: the group's destructor must not run at the worker's exit
    return EncoderCheckpoint(
        checkpoint=FlyteFile(str(path)),
        encoder_name=encoder_name,
        in_channels=in_channels,
        image_size=image_size,
        content_sha256=sha256,
        mlflow_run_id=run.info.run_id if run is not None else "",
        arm=arm(config.method, rung.name),
        initial_weights=weights.source if weights else "",
        initial_weights_sha256=weights.sha256 if weights else "",
        collapsed=collapsed,
    )


@task(cache=pretraining_cache("5"), **GPU_TASK_SETTINGS)
@gpus_usable
@outages_are_recoverable
def pretrain_generic(
    dataset: Dataset, encoder_name: str, config: PretrainConfig, parent_run_id: str
) -> Annotated[EncoderCheckpoint, HashMethod(content_hash)]:
    """The generic rung: config.method (SimCLR by default, arXiv 2002.05709) from random initialisation, or from the
    user's weights (config.initial_weights); labels unused (but by the kNN monitor); two augmentations of each image."""
    return _pretrain(RUNGS["generic"], dataset, None, encoder_name, config, parent_run_id, lineage={})


@task(cache=pretraining_cache("5"), **GPU_TASK_SETTINGS)
@gpus_usable
@outages_are_recoverable
def pretrain_case_pairs(
    dataset: Dataset, initial: EncoderCheckpoint, config: PretrainConfig, parent_run_id: str
) -> Annotated[EncoderCheckpoint, HashMethod(content_hash)]:
    """The case-pairs rung, MICLe's pairing (arXiv 2101.05224) with config.method, from the generic encoder:
    the two views are two images of one case_id."""
    lineage = {"initial_encoder.sha256": initial.content_sha256, "initial_encoder.mlflow_run_id": initial.mlflow_run_id}
    return _pretrain(
        RUNGS["case_pairs"], dataset, initial, initial.encoder_name, config, parent_run_id, lineage=lineage
    )


@task(cache=pretraining_cache("4"), **GPU_TASK_SETTINGS)
@gpus_usable
@outages_are_recoverable
def pretrain_domain(
    dataset: Dataset, initial: EncoderCheckpoint, config: PretrainConfig, parent_run_id: str
) -> Annotated[EncoderCheckpoint, HashMethod(content_hash)]:
    """The domain rung: config.method continued on the domain images from the generic encoder, without case
    pairs: the case pairs' control (same images, epochs and schedule; the views are two of one image)."""
    lineage = {"initial_encoder.sha256": initial.content_sha256, "initial_encoder.mlflow_run_id": initial.mlflow_run_id}
    return _pretrain(RUNGS["domain"], dataset, initial, initial.encoder_name, config, parent_run_id, lineage=lineage)

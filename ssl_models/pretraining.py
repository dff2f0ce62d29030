"""Self-supervised pretraining: any method of ``ssl_models.methods`` on (anchor, partner) pairs, two views of one
image or, MICLe, two images of one case.

Data path (ssl_models/data.py): pairs come from a source, the whole image set in memory (on the GPU when it fits)
or streamed from shards in bounded memory. Each step augments its batch on the device, every image with its own
random parameters, so no CPU worker pool is needed.

Read top down: ``PretrainConfig``; the loop ``pretrain_contrastive``; what it calls in order,
``build_contrastive_run`` (model, DDP, sampler, optimiser, schedule), ``ContrastiveRun.restore`` (resume),
``pretrain_one_epoch`` and ``_method_loss``. The method (``PretrainConfig.method``) adds only its loss and its
target-network update; the loop owns optimiser, schedule, steps and state. Step arithmetic and the optimiser step
shared with fine-tuning live in ``ssl_models.loop``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ssl_models.augment import AugmentConfig, augment
from ssl_models.data import InMemoryPairs, StreamingPairs, padded_images
from ssl_models.device import autocast
from ssl_models.distributed import (
    ProcessInfo,
    from_every_rank,
    from_rank_zero,
    init_from_environment,
    mean_across_ranks,
)
from ssl_models.evaluate import KnnMonitor
from ssl_models.loop import EpochTotals, epoch_schedule, optimizer_step, steps_per_epoch
from ssl_models.methods import SSLMethod, build_method, method_settings
from ssl_models.optim import build_optimizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainConfig:
    """Self-supervised pretraining. Defaults run in about a minute on a 2-core CPU at 28 px.

    method: a name in ``ssl_models.methods.METHODS``: "simclr" (arXiv 2002.05709), "moco" (MoCo v2, arXiv
        2003.04297), "byol" (arXiv 2006.07733), "dino" (arXiv 2104.14294) or "distill" (distillation from a frozen
        teacher: ssl_models/methods/distill.py).
    method_settings: the method's own settings by name, e.g. {"queue_size": 512} for "moco"; checked against the
        method's settings dataclass (the tables below: SimCLRSettings, MoCoSettings, ...), which gives the defaults;
        a key the method does not take, or a value of the wrong type, is refused.
    projection_dim: the projection width of the methods with a projection head (SimCLR, MoCo, BYOL).
    initial_weights: where the generic rung's encoder starts: "" random weights; else the user's weights of the
        pipeline's encoder_name backbone, a local file, s3://bucket/key or an MLflow URI (models:/name/version,
        runs:/id/path): a state dict or a timm/torchvision checkpoint, checked key by key, RGB first layers summed
        to 1 channel (sslflow/tracking/initial_weights.py). With epochs 0 the weights themselves are the generic rung.
        Only the generic rung's config takes it: the domain rungs start from the generic rung.
    """

    method: str = "simclr"
    method_settings: dict[str, int | float | str | bool] = field(default_factory=dict)
    epochs: int = 5
    batch_size: int = 256
    learning_rate: float = 2e-3
    weight_decay: float = 1e-6
    optimizer: str = "adamw"
    warmup_epochs: int = 1
    projection_dim: int = 64
    seed: int = 0
    channels_last: bool = True
    compile: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    memory_budget_mb: int = 0  # host memory for the image set; above it, stream from shards (0: a quarter of the pod's)
    buffer_shards: int = 4  # streaming: shards shuffled together (each rank holds these + prefetched ones)
    initial_weights: str = ""

    def __post_init__(self) -> None:
        # an unknown method, or settings it does not take, is refused here rather than when training starts
        method_settings(self.method, self.method_settings)

    @property
    def settings(self):
        """The method's settings dataclass (ssl_models.methods.method_settings): method_settings over its
        defaults."""
        return method_settings(self.method, self.method_settings)


PairSource = InMemoryPairs | StreamingPairs


EpochCallback = Callable[[int, dict, Callable[[], dict]], None]
"""on_epoch_end(epoch, metrics, state_fn): state_fn() returns a resumable state dict."""


def pretrain_contrastive(
    encoder: nn.Module,
    data: PairSource,
    config: PretrainConfig,
    *,
    on_epoch_end: EpochCallback | None = None,
    resume_state: dict | None = None,
    monitor: KnnMonitor | None = None,
    teacher: nn.Module | None = None,
) -> list[dict]:
    """Train ``encoder`` in place with ``config.method`` on (anchor, partner) pairs of one case drawn by ``data``.

    The pairing is the data's: case ids ``range(N)`` (every image its own case) give two augmentations of
    one image, as SimCLR, MoCo and BYOL define their views; real (or proxy) case ids give MICLe's pairs
    (arXiv 2101.05224), two images of one case, for whichever method.

    Args:
        encoder: module with ``feature_dim``; (B, C, H, W) -> (B, feature_dim).
        data: InMemoryPairs (images (N, C, H, W) uint8 + case ids) or StreamingPairs (shards).
        on_epoch_end: called after every epoch with (epoch, metrics, state_fn).
        monitor: measures the encoder after every epoch; its kNN accuracy joins the epoch's metrics as ``knn_accuracy``.
        resume_state: a dict from a previous run's ``state_fn()``; training restarts after its epoch. Under
            torchrun only rank 0's is used (broadcast to every rank), so other nodes need no copy of it.
        teacher: the frozen teacher of method "distill" (module with ``feature_dim``), else None.

    Returns:
        One dict per epoch trained: epoch, loss, images_per_second, learning_rate, padded_images (and knn_accuracy
        with a monitor).
    """
    run = build_contrastive_run(encoder, data.num_images, config, teacher=teacher)
    resume_state = from_rank_zero(resume_state)  # every rank resumes rank 0's state: the same epoch, identical weights
    start_epoch = 0 if resume_state is None else run.restore(resume_state)
    if run.process.is_main and run.process.world_size > 1:
        log.info(
            "%d images over %d ranks: %d pairs per rank per epoch, %d images read twice to even the ranks out",
            data.num_images,
            run.process.world_size,
            -(-data.num_images // run.process.world_size),
            padded_images(data.num_images, run.process.world_size),
        )
    history: list[dict] = []
    for epoch in range(start_epoch, config.epochs):
        metrics = pretrain_one_epoch(run, data, epoch, config)
        if monitor is not None:
            metrics["knn_accuracy"] = monitor(_unwrap(run.model).encoder)
        history.append(metrics)
        generator_states = from_every_rank(run.generator.get_state())  # a collective: every rank, every epoch
        if run.process.is_main:
            log.info(
                "pretrain epoch %d/%d loss %.4f %.0f images/s",
                epoch + 1,
                config.epochs,
                metrics["loss"],
                metrics["images_per_second"],
            )
        if on_epoch_end is not None:
            on_epoch_end(epoch, metrics, lambda epoch=epoch, states=generator_states: run.state(epoch, states))
    return history


def build_contrastive_run(
    encoder: nn.Module, num_images: int, config: PretrainConfig, *, teacher: nn.Module | None = None
) -> ContrastiveRun:
    """Device, process group, seeded model (+ SyncBatchNorm and DDP under torchrun), optimiser, schedule.

    encoder: module with ``feature_dim``; (B, C, H, W) -> (B, feature_dim). num_images: images per epoch.
    teacher: the frozen network of a distillation method (config.method "distill"), else None.
    """
    process = init_from_environment()  # binds this rank's GPU before any CUDA work
    device = process.device
    torch.manual_seed(config.seed + process.rank)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = build_method(config.method, encoder, config, teacher=teacher).to(device, memory_format=memory_format)
    if process.world_size > 1:
        if device.type == "cuda":  # global BatchNorm as in SimCLR (not MoCo's, per rank); SyncBatchNorm is GPU-only
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model) if model.sync_batch_norm else model
            model = DistributedDataParallel(model, device_ids=[device.index], output_device=device.index)
        else:
            model = DistributedDataParallel(model)
    forward = torch.compile(model) if config.compile else model
    steps = steps_per_epoch(num_images, config.batch_size, process.world_size)
    optimizer = build_optimizer(config.optimizer, model, config.learning_rate, config.weight_decay)
    schedule = epoch_schedule(optimizer, steps, config.epochs, warmup_epochs=config.warmup_epochs)
    return ContrastiveRun(
        model=model,
        forward=forward,
        optimizer=optimizer,
        schedule=schedule,
        total_steps=steps * config.epochs,
        generator=torch.Generator(device=device).manual_seed(config.seed * 7919 + process.rank),
        device=device,
        process=process,
        memory_format=memory_format,
        seed=config.seed,
    )


@dataclass
class ContrastiveRun:
    """What one pretraining run builds once and every epoch uses (see build_contrastive_run)."""

    model: nn.Module  # an SSLMethod, wrapped in DistributedDataParallel when world_size > 1
    forward: Callable[
        [torch.Tensor, torch.Tensor], torch.Tensor
    ]  # model or torch.compile(model): views a, b (B, C, S, S) -> loss
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR  # advanced once per optimiser step
    total_steps: int  # optimiser steps of the whole run (the methods' momentum schedules)
    generator: torch.Generator  # augmentation randomness, on ``device``
    device: torch.device
    process: ProcessInfo
    memory_format: torch.memory_format
    seed: int

    def state(self, epoch: int, generator_states: list[torch.Tensor]) -> dict:
        """A resumable state after ``epoch``: model (the method's networks and state: MoCo's queue, BYOL's target),
        optimizer, schedule, epoch, and every rank's augmentation generator (``generator_states``, in rank order,
        gathered by ``pretrain_contrastive``)."""
        return {
            "model": _unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "generators": generator_states,
            "epoch": epoch,
        }

    def restore(self, state: dict) -> int:
        """Load a dict made by ``state``; returns the first epoch still to train.

        Each rank takes its own generator back, so a run resumed with the world size it was saved with draws
        the same views as the run that was never stopped (bitwise equal weights on CPU). With another world size
        the ranks without a saved generator are seeded from (seed, rank, epoch), and the log says so.
        """
        _unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        generators = state["generators"]
        if len(generators) == self.process.world_size:
            self.generator.set_state(generators[self.process.rank])
        else:
            self.generator.manual_seed(self.seed * 7919 + 104729 * (state["epoch"] + 1) + self.process.rank)
            if self.process.is_main:
                log.warning(
                    "resuming with %d ranks from a state saved by %d: augmentations differ from an uninterrupted run",
                    self.process.world_size,
                    len(generators),
                )
        log.info("resuming contrastive pretraining after epoch %d", state["epoch"])
        return state["epoch"] + 1


def pretrain_one_epoch(run: ContrastiveRun, data: PairSource, epoch: int, config: PretrainConfig) -> dict:
    """One pass over this rank's (anchor, partner) pairs of ``epoch`` from ``data``, one optimiser step per batch.

    Returns: epoch, loss (mean over ranks), images_per_second (all ranks), learning_rate, padded_images (the
    <= world_size - 1 images read twice this epoch so that every rank takes the same steps: data.py).
    """
    run.model.train()
    started, totals = time.perf_counter(), EpochTotals()
    for anchor_batch, partner_batch in data.batches(
        epoch, config.batch_size, run.process.rank, run.process.world_size, run.device
    ):
        if len(anchor_batch) < 2:  # a single pair has no negatives (and BatchNorm no statistics)
            continue
        loss = _method_loss(run, anchor_batch, partner_batch, config.augment)
        optimizer_step(loss, run.optimizer, run.schedule)
        _unwrap(run.model).after_step(run.schedule.last_epoch / run.total_steps)
        totals.add(loss, len(anchor_batch))
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    elapsed = time.perf_counter() - started
    method_metrics = {name: mean_across_ranks(value) for name, value in _unwrap(run.model).epoch_metrics().items()}
    return {
        "epoch": epoch,
        "loss": mean_across_ranks(totals.mean_loss),
        "images_per_second": totals.seen * run.process.world_size / elapsed,
        "learning_rate": run.schedule.get_last_lr()[0],
        "padded_images": padded_images(data.num_images, run.process.world_size),
        **method_metrics,
    }


def _method_loss(
    run: ContrastiveRun, anchors: torch.Tensor, partners: torch.Tensor, view: AugmentConfig
) -> torch.Tensor:
    """The method's loss on one batch of pairs, each image with its own random view: anchors, partners (B, C, H, W)
    uint8 -> scalar."""
    views_a = augment(anchors, view, run.generator).contiguous(memory_format=run.memory_format)
    views_b = augment(partners, view, run.generator).contiguous(memory_format=run.memory_format)
    method = _unwrap(run.model)
    local_view = method.local_view(view)
    local_views = [
        augment(partners if i % 2 else anchors, local_view, run.generator).contiguous(memory_format=run.memory_format)
        for i in range(method.local_crops)
    ]
    with autocast(run.device):
        return run.forward(views_a, views_b, *local_views).float()


def _unwrap(model: nn.Module) -> SSLMethod:
    return model.module if isinstance(model, DistributedDataParallel) else model

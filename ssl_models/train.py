"""Training loops: contrastive pretraining (SimCLR / MICLe) and supervised fine-tuning.

Data path (ssl_models/data.py): pretraining reads pairs from a source, the whole image set in memory
(on the GPU when it fits) or streamed from shards in bounded memory; fine-tuning holds its few labelled
images in memory. Each step augments its batch on the device, every image with its own random
parameters, so no CPU worker pool is needed.

Pretraining reads as torchvision's reference script does: ``build_contrastive_run`` (model, DDP,
sampler, optimiser, schedule), ``ContrastiveRun.restore`` (resume), ``pretrain_one_epoch``, and the
loop ``pretrain_contrastive``. Step arithmetic and the optimiser step shared with fine-tuning live
in ``ssl_models.loop``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ssl_models.augment import FINETUNE_AUGMENT, AugmentConfig, augment
from ssl_models.data import InMemoryPairs, StreamingPairs, gather, padded_images, place_images
from ssl_models.device import apply_in_batches, autocast, pick_device
from ssl_models.distributed import ProcessInfo, from_every_rank, from_rank_zero, init_from_environment, mean_across_ranks
from ssl_models.heads import Classifier, ProjectionHead
from ssl_models.loop import EpochTotals, epoch_count, epoch_schedule, optimizer_step, steps_per_epoch
from ssl_models.losses import NTXentLoss
from ssl_models.optim import build_optimizer
from ssl_models.probe import DEFAULT_INVERSE_L2, fit_linear_probe

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainConfig:
    """Contrastive pretraining. Defaults run in about a minute on a 2-core CPU at 28 px."""

    epochs: int = 5
    batch_size: int = 256
    learning_rate: float = 2e-3
    weight_decay: float = 1e-6
    optimizer: str = "adamw"
    warmup_epochs: int = 1
    temperature: float = 0.2
    projection_dim: int = 64
    seed: int = 0
    channels_last: bool = True
    compile: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    memory_budget_mb: int = 0  # host memory for the image set; above it, stream from shards (0: a quarter of the pod's)
    buffer_shards: int = 4  # streaming: shards shuffled together (each rank holds these + prefetched ones)


@dataclass(frozen=True)
class FinetuneConfig:
    """Supervised fine-tuning of encoder + linear classifier.

    linear_probe: freeze the encoder and fit only the linear layer on standardised features of the
    un-augmented images, a converged multinomial logistic regression whose inverse L2 strength is
    chosen from ``probe_inverse_l2`` on the validation images (ssl_models/probe.py).

    head_warmup_steps: first train the new linear layer alone on frozen features, then everything
    (LP-FT, Kumar et al., 2022, arXiv 2202.10054): a random head's large early gradients would
    otherwise distort pretrained features. Applied identically to every initialisation.

    min_steps: at least this many optimiser steps: ``epochs`` is raised (and the log says so) until the
    run has them, for label fractions so small that 10 epochs are a handful of steps. 0 (the default):
    ``epochs`` is exactly what runs. The pipeline's default sets 60 (workflows/pipeline.py); a
    ``--finetune`` given on the command line replaces the whole config, so it runs what it says.

    seed: the label subset, head initialisation, batch order and augmentations (the pipeline sets it
    to each of its ``seeds`` in turn).
    """

    epochs: int = 10
    head_warmup_steps: int = 200
    min_steps: int = 0
    batch_size: int = 64
    learning_rate: float = 1e-3
    probe_inverse_l2: list[float] = field(default_factory=lambda: list(DEFAULT_INVERSE_L2))
    weight_decay: float = 1e-4
    linear_probe: bool = False
    seed: int = 0
    augment: AugmentConfig = field(default_factory=lambda: FINETUNE_AUGMENT)


PairSource = InMemoryPairs | StreamingPairs
EpochCallback = Callable[[int, dict, Callable[[], dict]], None]
"""on_epoch_end(epoch, metrics, state_fn): state_fn() returns a resumable state dict."""


class ContrastiveModel(nn.Module):
    """Encoder + projection head. (B, C, H, W) -> (B, projection_dim)."""

    def __init__(self, encoder: nn.Module, projection_dim: int):
        super().__init__()
        self.encoder = encoder
        self.projection = ProjectionHead(encoder.feature_dim, out_dim=projection_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.projection(self.encoder(images))


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


@dataclass
class ContrastiveRun:
    """What one contrastive pretraining run builds once and every epoch uses (see build_contrastive_run)."""

    model: nn.Module  # ContrastiveModel, wrapped in DistributedDataParallel when world_size > 1
    forward: Callable[[torch.Tensor], torch.Tensor]  # model or torch.compile(model): (2B, C, S, S) -> (2B, projection_dim)
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR  # advanced once per optimiser step
    loss_fn: NTXentLoss
    generator: torch.Generator  # augmentation randomness, on ``device``
    device: torch.device
    process: ProcessInfo
    memory_format: torch.memory_format
    seed: int

    def state(self, epoch: int, generator_states: list[torch.Tensor]) -> dict:
        """A resumable state after ``epoch``: model, optimizer, schedule, epoch, and every rank's augmentation
        generator (``generator_states``, in rank order, gathered by ``pretrain_contrastive``)."""
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
                log.warning("resuming with %d ranks from a state saved by %d: augmentations differ from an uninterrupted run",
                            self.process.world_size, len(generators))  # fmt: skip
        log.info("resuming contrastive pretraining after epoch %d", state["epoch"])
        return state["epoch"] + 1


def build_contrastive_run(encoder: nn.Module, num_images: int, config: PretrainConfig) -> ContrastiveRun:
    """Device, process group, seeded model (+ SyncBatchNorm and DDP under torchrun), optimiser, schedule.

    encoder: module with ``feature_dim``; (B, C, H, W) -> (B, feature_dim). num_images: images per epoch.
    """
    process = init_from_environment()  # binds this rank's GPU before any CUDA work
    device = process.device
    torch.manual_seed(config.seed + process.rank)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = ContrastiveModel(encoder, config.projection_dim).to(device, memory_format=memory_format)
    if process.world_size > 1:
        if device.type == "cuda":  # global BatchNorm as in SimCLR; PyTorch's SyncBatchNorm is GPU-only
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
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
        loss_fn=NTXentLoss(config.temperature),
        generator=torch.Generator(device=device).manual_seed(config.seed * 7919 + process.rank),
        device=device,
        process=process,
        memory_format=memory_format,
        seed=config.seed,
    )


def _contrastive_loss(run: ContrastiveRun, anchors: torch.Tensor, partners: torch.Tensor, view: AugmentConfig) -> torch.Tensor:
    """NT-Xent of one batch of pairs, each image with its own random view: anchors, partners (B, C, H, W) uint8 -> scalar."""
    views = torch.cat(
        [augment(anchors, view, run.generator), augment(partners, view, run.generator)]
    ).contiguous(memory_format=run.memory_format)
    with autocast(run.device):
        projections = run.forward(views)
    z_a, z_b = projections.float().chunk(2)
    return run.loss_fn(z_a, z_b)


def pretrain_one_epoch(run: ContrastiveRun, data: PairSource, epoch: int, config: PretrainConfig) -> dict:
    """One pass over this rank's (anchor, partner) pairs of ``epoch`` from ``data``, one optimiser step per batch.

    Returns: epoch, loss (mean over ranks), images_per_second (all ranks), learning_rate, padded_images (the
    <= world_size - 1 images read twice this epoch so that every rank takes the same steps: data.py).
    """
    run.model.train()
    started, totals = time.perf_counter(), EpochTotals()
    for anchor_batch, partner_batch in data.batches(epoch, config.batch_size, run.process.rank, run.process.world_size, run.device):
        if len(anchor_batch) < 2:  # a single pair has no negatives
            continue
        loss = _contrastive_loss(run, anchor_batch, partner_batch, config.augment)
        optimizer_step(loss, run.optimizer, run.schedule)
        totals.add(loss, len(anchor_batch))
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    elapsed = time.perf_counter() - started
    return {
        "epoch": epoch,
        "loss": mean_across_ranks(totals.mean_loss),
        "images_per_second": totals.seen * run.process.world_size / elapsed,
        "learning_rate": run.schedule.get_last_lr()[0],
        "padded_images": padded_images(data.num_images, run.process.world_size),
    }


def pretrain_contrastive(
    encoder: nn.Module,
    data: PairSource,
    config: PretrainConfig,
    *,
    on_epoch_end: EpochCallback | None = None,
    resume_state: dict | None = None,
) -> list[dict]:
    """Train ``encoder`` in place with NT-Xent on (anchor, partner) pairs of one case drawn by ``data``.

    Give ``data`` case ids ``range(N)`` for SimCLR (every image its own case: two augmentations of one
    image); real (or proxy) case ids for MICLe.

    Args:
        encoder: module with ``feature_dim``; (B, C, H, W) -> (B, feature_dim).
        data: InMemoryPairs (images (N, C, H, W) uint8 + case ids) or StreamingPairs (shards).
        on_epoch_end: called after every epoch with (epoch, metrics, state_fn).
        resume_state: a dict from a previous run's ``state_fn()``; training restarts after its epoch. Under
            torchrun only rank 0's is used (broadcast to every rank), so other nodes need no copy of it.

    Returns:
        One dict per epoch trained: epoch, loss, images_per_second, learning_rate, padded_images.
    """
    run = build_contrastive_run(encoder, data.num_images, config)
    resume_state = from_rank_zero(resume_state)  # every rank resumes rank 0's state: the same epoch, identical weights
    start_epoch = 0 if resume_state is None else run.restore(resume_state)
    if run.process.is_main and run.process.world_size > 1:
        log.info("%d images over %d ranks: %d pairs per rank per epoch, %d images read twice to even the ranks out",
                 data.num_images, run.process.world_size, -(-data.num_images // run.process.world_size),
                 padded_images(data.num_images, run.process.world_size))  # fmt: skip
    history: list[dict] = []
    for epoch in range(start_epoch, config.epochs):
        metrics = pretrain_one_epoch(run, data, epoch, config)
        history.append(metrics)
        generator_states = from_every_rank(run.generator.get_state())  # a collective: every rank, every epoch
        if run.process.is_main:
            log.info("pretrain epoch %d/%d loss %.4f %.0f images/s", epoch + 1, config.epochs, metrics["loss"], metrics["images_per_second"])
        if on_epoch_end is not None:
            on_epoch_end(epoch, metrics, lambda: run.state(epoch, generator_states))
    return history


def finetune(
    encoder: nn.Module,
    images: torch.Tensor,
    labels: np.ndarray,
    num_classes: int,
    config: FinetuneConfig,
    *,
    validation: tuple[torch.Tensor, np.ndarray] | None = None,
) -> tuple[Classifier, list[dict]]:
    """Train a linear classifier on ``encoder`` (and the encoder too unless ``linear_probe``).

    Args:
        images: (N, C, H, W) uint8 labelled training images.
        labels: (N,) int class indices in [0, num_classes).
        validation: (images (M, C, H, W) uint8, labels (M,)); the linear probe chooses its L2 strength on it.

    Returns:
        The trained Classifier (on the host, eval mode) and one dict per epoch: epoch, loss, accuracy
        (the linear probe: one dict, also converged, iterations, inverse_l2).
    """
    if len(labels) != images.shape[0] or len(labels) == 0:
        raise ValueError(f"need one label per image and at least one image; got {len(labels)} labels, {images.shape[0]} images")
    device = pick_device()
    torch.manual_seed(config.seed)
    model = Classifier(encoder, num_classes).to(device)
    if config.linear_probe:
        if validation is None:
            raise ValueError("the linear probe chooses its regularisation on validation data: pass validation=(images, labels)")
        return _linear_probe(model, images, labels, validation, config)
    steps = steps_per_epoch(len(labels), config.batch_size)
    epochs = _epochs(config, steps)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = epoch_schedule(optimizer, steps, epochs)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    stored = place_images(images, device)
    targets = torch.as_tensor(labels, dtype=torch.long, device=device)
    if config.head_warmup_steps:
        _train_head_only(model, stored, targets, config, generator, rng, device)
    history = []
    for epoch in range(epochs):
        model.train()
        order = rng.permutation(len(labels))
        totals = EpochTotals()
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            views = augment(gather(stored, batch, device), config.augment, generator)
            batch_targets = targets[torch.from_numpy(batch).to(device)]
            with autocast(device):
                logits = model(views)
            loss = F.cross_entropy(logits.float(), batch_targets)
            optimizer_step(loss, optimizer, schedule)
            totals.add(loss, len(batch), logits, batch_targets)
        history.append({"epoch": epoch, "loss": totals.mean_loss, "accuracy": totals.accuracy})
        if (epoch + 1) % max(1, epochs // 10) == 0 or epoch + 1 == epochs:  # about ten lines per run
            log.info("finetune epoch %d/%d loss %.4f train accuracy %.3f", epoch + 1, epochs, history[-1]["loss"], history[-1]["accuracy"])
    model.eval()
    return model.cpu(), history


def _epochs(config: FinetuneConfig, steps: int) -> int:
    """config.epochs, raised to reach config.min_steps optimiser steps; never silently."""
    epochs = epoch_count(config.epochs, config.min_steps, steps)
    if epochs != config.epochs:
        log.info("finetune: min_steps=%d raises epochs from %d to %d (%d steps per epoch)", config.min_steps, config.epochs, epochs, steps)
    return epochs


def _linear_probe(model: Classifier, images: torch.Tensor, labels: np.ndarray, validation, config: FinetuneConfig):
    """The linear evaluation protocol: frozen encoder, features computed once, a converged logistic regression."""
    for parameter in model.encoder.parameters():
        parameter.requires_grad_(False)

    def features(pixels: torch.Tensor) -> np.ndarray:
        return apply_in_batches(model.encoder, pixels, config.augment).cpu().double().numpy()

    fit = fit_linear_probe(
        features(images), np.asarray(labels), features(validation[0]), np.asarray(validation[1]), model.linear.out_features,
        inverse_l2_grid=config.probe_inverse_l2,
    )  # fmt: skip
    with torch.no_grad():
        model.linear.weight.copy_(fit.weight)
        model.linear.bias.copy_(fit.bias)
    record = {"epoch": 0, "loss": fit.train_loss, "accuracy": fit.train_accuracy, "converged": fit.converged, "iterations": fit.iterations, "inverse_l2": fit.inverse_l2}
    log.info("linear probe: C=%g chosen on validation, %s after %d L-BFGS iterations, train loss %.4f accuracy %.3f",
             fit.inverse_l2, "converged" if fit.converged else "NOT converged", fit.iterations, fit.train_loss, fit.train_accuracy)  # fmt: skip
    model.eval()
    return model.cpu(), [record]


def _train_head_only(model: Classifier, stored, targets, config: FinetuneConfig, generator, rng, device) -> None:
    """LP phase of LP-FT: ``head_warmup_steps`` AdamW steps on the linear layer, encoder frozen in eval mode."""
    optimizer = torch.optim.AdamW(model.linear.parameters(), lr=10 * config.learning_rate)
    model.encoder.eval()
    for _ in range(config.head_warmup_steps):
        batch = rng.choice(len(targets), size=min(config.batch_size, len(targets)), replace=False)
        views = augment(gather(stored, batch, device), config.augment, generator)
        with torch.no_grad(), autocast(device):
            features = model.encoder(views)
        loss = F.cross_entropy(model.linear(features.float()), targets[torch.from_numpy(batch).to(device)])
        optimizer_step(loss, optimizer)

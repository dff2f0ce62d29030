"""Training loops: self-supervised pretraining (any method of ``ssl_models.methods``, on views of one image
or, MICLe, of two images of one case) and supervised fine-tuning.

Data path (ssl_models/data.py): pretraining reads pairs from a source, the whole image set in memory
(on the GPU when it fits) or streamed from shards in bounded memory; fine-tuning holds its few labelled
images in memory. Each step augments its batch on the device, every image with its own random
parameters, so no CPU worker pool is needed.

Pretraining reads as torchvision's reference script does: ``build_contrastive_run`` (model, DDP, sampler, optimiser,
schedule), ``ContrastiveRun.restore`` (resume), ``pretrain_one_epoch``, and the loop ``pretrain_contrastive``. The
method (SimCLR, MoCo v2, BYOL: ``PretrainConfig.method``) adds only its loss and its target-network update; the loop
owns optimiser, schedule, steps and state. Step arithmetic and the optimiser step shared with fine-tuning live in
``ssl_models.loop``."""

from __future__ import annotations

import copy
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
from ssl_models.distributed import (
    ProcessInfo,
    from_every_rank,
    from_rank_zero,
    init_from_environment,
    mean_across_ranks,
)
from ssl_models.evaluate import KnnMonitor
from ssl_models.heads import Classifier
from ssl_models.loop import BestOnValidation, EpochTotals, epoch_count, epoch_schedule, optimizer_step, steps_per_epoch
from ssl_models.methods import METHODS, SSLMethod, build_method
from ssl_models.optim import build_optimizer, warmup_constant
from ssl_models.probe import DEFAULT_INVERSE_L2, fit_linear_probe

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainConfig:
    """Self-supervised pretraining. Defaults run in about a minute on a 2-core CPU at 28 px.

    method: a name in ``ssl_models.methods.METHODS``: "simclr" (arXiv 2002.05709), "moco" (MoCo v2, arXiv
        2003.04297), "byol" (arXiv 2006.07733), "dino" (arXiv 2104.14294) or "distill" (distillation from the frozen
        ``teacher``: ssl_models/methods/distill.py).
    temperature: SimCLR's and MoCo's tau. projection_dim: every method's projection width.
    queue_size: MoCo's queue of negatives; keep it well under the number of images: a queue longer than an
        epoch holds the anchor's own earlier key as a "negative" (1024 for the default's 4,000-6,000 images). momentum:
        MoCo's key-encoder EMA; BYOL's and DINO's starting target (teacher) EMA.
    prototypes: DINO's K, the width of its output distribution (65,536 in the paper; 1024 for small encoders).
    teacher_temperature, teacher_warmup_temperature: DINO's teacher temperature after and at the start of its
        linear warm-up over the first 30% of the run (0.07 and 0.04 as the paper). local_crops: DINO's local views
        per pair (multi-crop; 0: the two global views only).
    teacher, teacher_weights: method "distill"'s frozen teacher, a backbone name as encoder_name takes
        ("timm:vit_small_patch14_dinov2") and its weights (a local file, s3:// or MLflow URI, as initial_weights).
    initial_weights: where the generic rung's encoder starts: "" random weights; else the user's weights of the
        pipeline's encoder_name backbone, a local file, s3://bucket/key or an MLflow URI (models:/name/version,
        runs:/id/path): a state dict or a timm/torchvision checkpoint, checked key by key, RGB first layers summed
        to 1 channel (sslflow/tracking/initial_weights.py). With epochs 0 the weights themselves are the generic rung.
        Only the generic rung's config takes it: the domain rungs start from the generic rung.
    """

    method: str = "simclr"
    epochs: int = 5
    batch_size: int = 256
    learning_rate: float = 2e-3
    weight_decay: float = 1e-6
    optimizer: str = "adamw"
    warmup_epochs: int = 1
    temperature: float = 0.2
    projection_dim: int = 64
    queue_size: int = 1024
    momentum: float = 0.99
    prototypes: int = 1024
    teacher_temperature: float = 0.07
    teacher_warmup_temperature: float = 0.04
    local_crops: int = 2
    teacher: str = ""
    teacher_weights: str = ""
    seed: int = 0
    channels_last: bool = True
    compile: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    memory_budget_mb: int = 0  # host memory for the image set; above it, stream from shards (0: a quarter of the pod's)
    buffer_shards: int = 4  # streaming: shards shuffled together (each rank holds these + prefetched ones)
    initial_weights: str = ""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"PretrainConfig.method must be one of {sorted(METHODS)}, got {self.method!r}")
        if METHODS[self.method].needs_teacher and not (self.teacher and self.teacher_weights):
            raise ValueError(
                f"PretrainConfig.method={self.method!r} distils a teacher: set teacher (a backbone name) and teacher_weights (where its weights are)"
            )


@dataclass(frozen=True)
class FinetuneConfig:
    """Supervised fine-tuning of encoder + linear classifier, with the same small search for every initialisation.

    linear_probe: freeze the encoder and fit only the linear layer on standardised features of the
    un-augmented images, a converged multinomial logistic regression whose inverse L2 strength is
    chosen from ``probe_inverse_l2`` on the validation images (ssl_models/probe.py).

    learning_rates x weight_decays: the search. Full fine-tuning trains once per pair (same seed: same head, batch
    order and augmentations) and keeps the pair whose best validation score (accuracy, then cross-entropy) is
    highest. Every arm, scratch and each pretrained encoder, gets the same grid on its own validation fold.

    epochs, min_steps: the step budget is ``epochs`` epochs of the labelled images, raised (and the log says so) to
    at least ``min_steps`` optimiser steps, for label fractions so small that an epoch is one step. It depends only
    on the number of labels, so every arm at a label fraction has the same budget. The learning rate warms up over
    the first tenth of the budget (at most one epoch) and then stays constant, so that the run stops where
    validation stops improving (``patience``), not where a decay ends; a run whose best step is the last
    evaluation of its budget says so (``best_at_budget_end``: the budget was too short for it).

    eval_every, patience: the validation score every this many steps and at the last; this many evaluations in a
    row without a better one stop the run, and the weights of the best evaluation are returned (0: train the whole
    budget, still return the best).

    head_warmup_steps: first train the new linear layer alone on frozen features, then everything (LP-FT, Kumar et
    al., 2022, arXiv 2202.10054), for every initialisation alike; 0 (the default): no warm-up for any arm.

    seed: the label subset, head initialisation, batch order and augmentations (the pipeline sets it
    to each of its ``seeds`` in turn).
    """

    epochs: int = 10
    min_steps: int = 0
    eval_every: int = 20
    patience: int = 3
    batch_size: int = 64
    learning_rates: list[float] = field(default_factory=lambda: [1e-3])
    weight_decays: list[float] = field(default_factory=lambda: [1e-4])
    head_warmup_steps: int = 0
    probe_inverse_l2: list[float] = field(default_factory=lambda: list(DEFAULT_INVERSE_L2))
    linear_probe: bool = False
    seed: int = 0
    augment: AugmentConfig = field(default_factory=lambda: FINETUNE_AUGMENT)

    def __post_init__(self) -> None:
        if self.eval_every < 1 or self.patience < 0:
            raise ValueError(
                f"FinetuneConfig needs eval_every >= 1 step and patience >= 0 evaluations, got {self.eval_every} and {self.patience}"
            )
        if not self.learning_rates or not self.weight_decays:
            raise ValueError(
                "FinetuneConfig's search needs at least one learning rate and one weight decay (learning_rates, weight_decays)"
            )


PairSource = InMemoryPairs | StreamingPairs
EpochCallback = Callable[[int, dict, Callable[[], dict]], None]
"""on_epoch_end(epoch, metrics, state_fn): state_fn() returns a resumable state dict."""


def _unwrap(model: nn.Module) -> SSLMethod:
    return model.module if isinstance(model, DistributedDataParallel) else model


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
        validation: (images (M, C, H, W) uint8, labels (M,)); the linear probe chooses its L2 strength on it,
            full fine-tuning chooses among its search (learning_rates x weight_decays), stops early on it and returns
            its best weights (FinetuneConfig).

    Returns:
        The trained Classifier (on the host, eval mode) and its records (_train_within_budget): one per
        ``eval_every`` steps with step, loss, accuracy (and val_accuracy, val_loss), the last with the stopping step,
        the best val accuracy, the chosen learning_rate and weight_decay, final_train_accuracy (the returned model on
        its un-augmented training images) and ``search`` (each pair's best_val_accuracy, best_val_loss, best_step);
        the linear probe: one dict, also converged, iterations, inverse_l2.
    """
    if len(labels) != images.shape[0] or len(labels) == 0:
        raise ValueError(
            f"need one label per image and at least one image; got {len(labels)} labels, {images.shape[0]} images"
        )
    if config.linear_probe:
        if validation is None:
            raise ValueError(
                "the linear probe chooses its regularisation on validation data: pass validation=(images, labels)"
            )
        torch.manual_seed(config.seed)
        return _linear_probe(Classifier(encoder, num_classes).to(pick_device()), images, labels, validation, config)
    grid = [(rate, decay) for rate in config.learning_rates for decay in config.weight_decays]
    if validation is None and len(grid) > 1:
        raise ValueError(
            f"the fine-tuning search ({len(grid)} settings) chooses on validation data: pass validation=(images, labels)"
        )
    runs = [
        _finetune_one_setting(encoder, images, labels, num_classes, config, rate, decay, validation)
        for rate, decay in grid
    ]
    model, history = max(
        runs, key=lambda run: (run[1][-1].get("best_val_accuracy", 0.0), -run[1][-1].get("best_val_loss", 0.0))
    )
    search = [
        {
            key: run[1][-1][key]
            for key in ("learning_rate", "weight_decay", "best_val_accuracy", "best_val_loss", "best_step")
            if key in run[1][-1]
        }
        for run in runs
    ]
    history[-1]["search"] = search
    if len(grid) > 1:
        log.info(
            "finetune: chose learning_rate %g, weight_decay %g on validation among %d settings",
            history[-1]["learning_rate"],
            history[-1]["weight_decay"],
            len(grid),
        )
    model.eval()
    return model.cpu(), history


def _finetune_one_setting(
    encoder, images, labels, num_classes, config: FinetuneConfig, learning_rate: float, weight_decay: float, validation
):
    """One point of the search: a copy of ``encoder`` with a new head, trained within the budget at these settings,
    from the same seed as every other point. (model on its device, records)."""
    device = pick_device()
    torch.manual_seed(config.seed)
    model = Classifier(copy.deepcopy(encoder), num_classes).to(device)
    steps = steps_per_epoch(len(labels), config.batch_size)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    stored = place_images(images, device)
    targets = torch.as_tensor(labels, dtype=torch.long, device=device)
    if config.head_warmup_steps:
        _train_head_only(model, stored, targets, config, learning_rate, generator, rng, device)
    run = _FinetuneRun(model, stored, targets, generator, rng, device, validation, learning_rate, weight_decay)
    history = _train_within_budget(run, config, steps, _epochs(config, steps))
    history[-1].update(learning_rate=learning_rate, weight_decay=weight_decay)
    history[-1]["final_train_accuracy"] = validation_scores(model, images, labels, config.augment)[0]
    return model, history


@dataclass
class _FinetuneRun:
    """What the full fine-tuning phase works on: the model, the labelled images (N, C, H, W) uint8 and their class
    indices (N,) on ``device``, the augmentation generator, the batch-order rng, the (images, labels) validation set
    and the search point's learning rate and weight decay."""

    model: Classifier
    stored: torch.Tensor
    targets: torch.Tensor
    generator: torch.Generator
    rng: np.random.Generator
    device: torch.device
    validation: tuple[torch.Tensor, np.ndarray] | None
    learning_rate: float
    weight_decay: float


def _train_within_budget(run: _FinetuneRun, config: FinetuneConfig, steps: int, epochs: int) -> list[dict]:
    """The budget, ``epochs`` x ``steps`` AdamW steps on encoder + linear layer (warm-up, then constant), with the
    validation score every ``config.eval_every`` steps and at the last; ``config.patience`` evaluations without a better
    one stop the run and the best weights are restored (ssl_models.loop.BestOnValidation). Without validation: the
    whole budget.

    Returns one record per ``eval_every`` steps (and the last): epoch, step, loss and accuracy of the training batches
    since the previous record, val_accuracy and val_loss (with validation); the last also has budget_steps,
    stopped_step, and with validation best_step, best_val_accuracy, best_val_loss, evaluations, early_stopped and
    best_at_budget_end.
    """
    model, budget = run.model, steps * epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=run.learning_rate, weight_decay=run.weight_decay)
    schedule = warmup_constant(optimizer, min(steps, max(1, budget // 10)))
    stopping, history, step, stop = BestOnValidation(config.patience), [], 0, False
    totals = EpochTotals()
    for epoch in range(epochs):
        model.train()
        order = run.rng.permutation(len(run.targets))
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            views = augment(gather(run.stored, batch, run.device), config.augment, run.generator)
            batch_targets = run.targets[torch.from_numpy(batch).to(run.device)]
            with autocast(run.device):
                logits = model(views)
            loss = F.cross_entropy(logits.float(), batch_targets)
            optimizer_step(loss, optimizer, schedule)
            totals.add(loss, len(batch), logits, batch_targets)
            step += 1
            if step % config.eval_every == 0 or step == budget:
                history.append({"epoch": epoch, "step": step, "loss": totals.mean_loss, "accuracy": totals.accuracy})
                totals = EpochTotals()
                if run.validation is not None:
                    history[-1]["val_accuracy"], history[-1]["val_loss"] = validation_scores(
                        model, *run.validation, config.augment
                    )
                    stop = stopping.update(step, history[-1]["val_accuracy"], model, history[-1]["val_loss"])
                    model.train()
                if stop:
                    break
        if stop:
            break
    return _close_budget(run, history, stopping, budget, step)


def _close_budget(
    run: _FinetuneRun, history: list[dict], stopping: BestOnValidation, budget: int, step: int
) -> list[dict]:
    """Restore the best weights on validation (if any) and write the run's summary into its last record."""
    history[-1].update(budget_steps=budget, stopped_step=step)
    if run.validation is not None:
        stopping.restore(run.model)
        at_end = stopping.best_step == budget
        history[-1].update(stopping.record(), early_stopped=step < budget, best_at_budget_end=at_end)
        log.info(
            "finetune (lr %g, wd %g): best val accuracy %.4f at step %d of %d (stopped at step %d)%s",
            run.learning_rate,
            run.weight_decay,
            stopping.best_accuracy,
            stopping.best_step,
            budget,
            step,
            ": still improving at the end of its budget" if at_end else "",
        )
    else:
        log.info(
            "finetune: %d steps, train loss %.4f accuracy %.3f (no validation: no early stopping)",
            step,
            history[-1]["loss"],
            history[-1]["accuracy"],
        )
    return history


def validation_scores(
    model: nn.Module, images: torch.Tensor, labels: np.ndarray, view: AugmentConfig
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` (left in eval mode) on un-augmented images (M, C, H, W) uint8 with
    class indices (M,)."""
    logits = apply_in_batches(model, images, view).float()
    targets = torch.as_tensor(np.asarray(labels), dtype=torch.long, device=logits.device)
    return float((logits.argmax(1) == targets).float().mean()), float(F.cross_entropy(logits, targets))


def _epochs(config: FinetuneConfig, steps: int) -> int:
    """config.epochs, raised to reach config.min_steps optimiser steps; never silently."""
    epochs = epoch_count(config.epochs, config.min_steps, steps)
    if epochs != config.epochs:
        log.info(
            "finetune: min_steps=%d raises epochs from %d to %d (%d steps per epoch)",
            config.min_steps,
            config.epochs,
            epochs,
            steps,
        )
    return epochs


def _linear_probe(model: Classifier, images: torch.Tensor, labels: np.ndarray, validation, config: FinetuneConfig):
    """The linear evaluation protocol: frozen encoder, features computed once, a converged logistic regression."""
    for parameter in model.encoder.parameters():
        parameter.requires_grad_(False)

    def features(pixels: torch.Tensor) -> np.ndarray:
        return apply_in_batches(model.encoder, pixels, config.augment).cpu().double().numpy()

    fit = fit_linear_probe(
        features(images),
        np.asarray(labels),
        features(validation[0]),
        np.asarray(validation[1]),
        model.linear.out_features,
        inverse_l2_grid=config.probe_inverse_l2,
    )
    with torch.no_grad():
        model.linear.weight.copy_(fit.weight)
        model.linear.bias.copy_(fit.bias)
    record = {
        "epoch": 0,
        "loss": fit.train_loss,
        "accuracy": fit.train_accuracy,
        "converged": fit.converged,
        "iterations": fit.iterations,
        "stop_reason": fit.stop_reason,
        "inverse_l2": fit.inverse_l2,
        "final_train_accuracy": fit.train_accuracy,
    }
    log.info(
        "linear probe: C=%g chosen on validation, %s (%s) after %d L-BFGS iterations, train loss %.4f accuracy %.3f",
        fit.inverse_l2,
        "converged" if fit.converged else "NOT converged",
        fit.stop_reason,
        fit.iterations,
        fit.train_loss,
        fit.train_accuracy,
    )
    model.eval()
    return model.cpu(), [record]


def _train_head_only(
    model: Classifier, stored, targets, config: FinetuneConfig, learning_rate: float, generator, rng, device
) -> None:
    """LP phase of LP-FT: ``config.head_warmup_steps`` AdamW steps (at 10 x ``learning_rate``) on the linear layer,
    encoder frozen in eval mode, on batches of ``config.batch_size`` labelled images in ``config.augment``'s view.
    stored (N, C, H, W) uint8 and targets (N,) int64 on ``device``."""
    optimizer = torch.optim.AdamW(model.linear.parameters(), lr=10 * learning_rate)
    model.encoder.eval()
    for _ in range(config.head_warmup_steps):
        batch = rng.choice(len(targets), size=min(config.batch_size, len(targets)), replace=False)
        views = augment(gather(stored, batch, device), config.augment, generator)
        with torch.no_grad(), autocast(device):
            features = model.encoder(views)
        loss = F.cross_entropy(model.linear(features.float()), targets[torch.from_numpy(batch).to(device)])
        optimizer_step(loss, optimizer)

"""The self-training student: FixMatch (Sohn et al., 2020, "FixMatch: Simplifying Semi-Supervised Learning with
Consistency and Confidence", arXiv 2001.07685) on the unlabelled pool, continuing a fine-tuned classifier (in the
pipeline: the top rung's encoder fine-tuned on the same labels, as SimCLR v2 self-trains from its fine-tuned network).

Each optimiser step sees a batch of B labelled images (cross-entropy on their labels, weak view) and mu x B pool
images, each in a weak view (FINETUNE_AUGMENT: a small crop and rotation) and a strong one (STRONG_AUGMENT: large
crop and rotation, brightness/contrast, blur, Cutout). The model's own prediction on the weak view is the
pseudo-label where its top probability reaches ``confidence_threshold``; the strong view learns it by
cross-entropy (``fixmatch_loss``), weighted ``unlabelled_weight`` (the paper's lambda_u). The three batches go
through the model together, so BatchNorm sees them as one (as the paper's implementation does).

The run follows fine-tuning's rule (ssl_models.finetuning.finetune): ``steps`` steps with the validation accuracy every
``eval_every`` steps; ``patience`` evaluations without a better one stop it, and the best weights on validation are
returned (ssl_models.loop.BestOnValidation). As in the paper, the model evaluated and returned is an exponential moving
average of the trained weights (BatchNorm statistics included; ``ema_decay``), torch.optim.swa_utils.AveragedModel.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ssl_models.augment import FINETUNE_AUGMENT, STRONG_AUGMENT, AugmentConfig, augment
from ssl_models.data import gather, place_images
from ssl_models.device import autocast, pick_device
from ssl_models.finetuning import validation_scores
from ssl_models.heads import Classifier
from ssl_models.loop import BestOnValidation, optimizer_step
from ssl_models.optim import warmup_cosine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SelfTrainConfig:
    """The self-training stage (FixMatch).

    steps: FixMatch optimiser steps, each on ``batch_size`` labelled + ``unlabelled_ratio`` x ``batch_size`` pool
        images (the pool ones in two views).
    unlabelled_ratio: the paper's mu (7 there; 3 here, less than half the compute per step on 2 CPU cores).
    confidence_threshold: a pool image's weak-view top probability must reach it to be pseudo-labelled: the paper's
        0.95, not a value chosen on this project's data (docs/self-training.md, "Threshold").
    unlabelled_weight: the paper's lambda_u (1).
    eval_every: the validation accuracy every this many steps (fine-tuning's rule, FinetuneConfig).
    patience: evaluations without a better one that stop the run; the best weights on validation are kept.
    max_label_fraction: self-train only at label fractions up to this; at 100% the pool is all labelled.
    max_pool_images: the pool held in host memory: at most this many train-split images, sampled by seed
        (sslflow.training.student.self_training_data says when it samples).
    ema_decay: the weights validated and returned are an exponential moving average of the trained ones, updated
        after every step with this decay (the paper: 0.999 over a million steps; 0.99, a horizon of about 100 steps,
        fits a few hundred); 0: the trained weights themselves.
    augment: the weak view, also the labelled images' view.
    strong_augment: the strong view (STRONG_AUGMENT: crop, rotation, brightness/contrast, blur, Cutout).
    """

    steps: int = 400
    batch_size: int = 32
    unlabelled_ratio: int = 3
    confidence_threshold: float = 0.95
    unlabelled_weight: float = 1.0
    eval_every: int = 20
    patience: int = 5
    max_label_fraction: float = 0.5
    max_pool_images: int = 10000
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    ema_decay: float = 0.99
    seed: int = 0  # the pipeline and quality.py pass the teacher's fine-tuning seed
    augment: AugmentConfig = field(default_factory=lambda: FINETUNE_AUGMENT)
    strong_augment: AugmentConfig = field(default_factory=lambda: STRONG_AUGMENT)

    def __post_init__(self) -> None:
        if not 0.0 <= self.confidence_threshold <= 1.0:
            raise ValueError(f"SelfTrainConfig.confidence_threshold must be in [0, 1], got {self.confidence_threshold}")
        if self.steps < 1 or self.unlabelled_ratio < 1:
            raise ValueError(
                f"SelfTrainConfig needs steps >= 1 and unlabelled_ratio >= 1; got {self.steps} and "
                f"{self.unlabelled_ratio}"
            )
        if not 0.0 <= self.ema_decay <= 1.0:
            raise ValueError(f"SelfTrainConfig.ema_decay must be in [0, 1], got {self.ema_decay}")
        if self.eval_every < 1 or self.patience < 0 or self.max_pool_images < 1:
            raise ValueError(
                "SelfTrainConfig needs eval_every >= 1, patience >= 0 and max_pool_images >= 1; "
                f"got {self.eval_every}, {self.patience}, {self.max_pool_images}"
            )


def fixmatch_loss(
    weak_logits: torch.Tensor, strong_logits: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """FixMatch's unlabelled loss (arXiv 2001.07685, eq. 4): (1 / U) sum_u 1[max q_u >= threshold] H(argmax q_u, p_u).

    weak_logits (U, K): the model on the weak views; q_u = softmax of them, no gradient flows through it.
    strong_logits (U, K): the model on the strong views of the same U images. Returns (loss scalar, mask (U,) bool:
    the images whose pseudo-label passed). The mean is over all U images, as in the paper: no image passing gives 0.
    """
    if weak_logits.shape != strong_logits.shape or weak_logits.dim() != 2:
        raise ValueError(
            f"weak and strong logits must both be (U, K); got {tuple(weak_logits.shape)} and "
            f"{tuple(strong_logits.shape)}"
        )
    confidence, pseudo_labels = torch.softmax(weak_logits.detach().float(), dim=1).max(dim=1)
    mask = confidence >= threshold
    per_image = F.cross_entropy(strong_logits.float(), pseudo_labels, reduction="none")
    return (per_image * mask).mean(), mask


@dataclass
class _Batches:
    """The labelled images (L, C, H, W) uint8, their class indices (L,), the pool (P, C, H, W) uint8 on ``device``, and
    the randomness (batch choice, augmentations) of one run."""

    labelled: torch.Tensor
    targets: torch.Tensor
    pool: torch.Tensor
    rng: np.random.Generator
    generator: torch.Generator
    device: torch.device

    def step_inputs(self, config: SelfTrainConfig) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(views (B + 2U, C, S, S): labelled weak, pool weak, pool strong; labelled targets (B,); U)."""
        labelled = self.rng.choice(len(self.targets), size=min(config.batch_size, len(self.targets)), replace=False)
        unlabelled = self.rng.choice(
            len(self.pool), size=min(config.unlabelled_ratio * config.batch_size, len(self.pool)), replace=False
        )
        pool = gather(self.pool, unlabelled, self.device)
        views = torch.cat(
            [
                augment(gather(self.labelled, labelled, self.device), config.augment, self.generator),
                augment(pool, config.augment, self.generator),
                augment(pool, config.strong_augment, self.generator),
            ]
        )
        return views, self.targets[torch.from_numpy(labelled).to(self.device)], len(unlabelled)


def _fixmatch_step(model: Classifier, batches: _Batches, config: SelfTrainConfig) -> tuple[torch.Tensor, dict]:
    """The loss of one step: labelled cross-entropy + unlabelled_weight x fixmatch_loss; and its parts."""
    views, targets, unlabelled = batches.step_inputs(config)
    with autocast(batches.device):
        logits = model(views).float()
    labelled_logits, weak, strong = (
        logits[: len(targets)],
        logits[len(targets) : len(targets) + unlabelled],
        logits[len(targets) + unlabelled :],
    )
    labelled_loss = F.cross_entropy(labelled_logits, targets)
    unlabelled_loss, mask = fixmatch_loss(weak, strong, config.confidence_threshold)
    loss = labelled_loss + config.unlabelled_weight * unlabelled_loss
    return loss, {
        "labelled_loss": labelled_loss.item(),
        "unlabelled_loss": unlabelled_loss.item(),
        "mask_rate": mask.float().mean().item(),
    }


def train_fixmatch(
    model: Classifier,
    labelled_images: torch.Tensor,
    labels: np.ndarray,
    pool_images: torch.Tensor,
    config: SelfTrainConfig,
    *,
    validation: tuple[torch.Tensor, np.ndarray] | None = None,
) -> tuple[Classifier, list[dict]]:
    """Continue ``model`` (trained in place: encoder + linear layer, (B, C, H, W) -> (B, K)) as a FixMatch student.

    Args:
        model: the classifier to start from (the pipeline: the top rung's fine-tuned model at this fraction and seed).
        labelled_images: (L, C, H, W) uint8; labels: (L,) int class indices in [0, K).
        pool_images: (P, C, H, W) uint8 unlabelled images (labelled ones among them are used without their labels).
        validation: (images (M, C, H, W) uint8, labels (M,)): early stopping and the best weights; None: all ``steps``.

    Returns:
        The student (on the host, eval mode) and one record per ``eval_every`` steps (and the last): step, loss,
        labelled_loss, unlabelled_loss, mask_rate (means over those steps), val_accuracy (with validation); the last
        also stopped_step, and with validation best_step, best_val_accuracy, evaluations.
    """
    if len(labels) != labelled_images.shape[0] or len(labels) == 0 or pool_images.shape[0] == 0:
        raise ValueError(
            f"need labelled images with one label each and a non-empty pool; got {len(labels)} labels, "
            f"{labelled_images.shape[0]} labelled images, {pool_images.shape[0]} pool images"
        )
    device = pick_device()
    model = model.to(device)
    batches = _Batches(
        place_images(labelled_images, device),
        torch.as_tensor(labels, dtype=torch.long, device=device),
        place_images(pool_images, device),
        np.random.default_rng(config.seed),
        torch.Generator(device=device).manual_seed(config.seed),
        device,
    )
    history = _train_steps(model, batches, config, validation)
    model.eval()
    return model.cpu(), history


def _train_steps(model: Classifier, batches: _Batches, config: SelfTrainConfig, validation) -> list[dict]:
    """``config.steps`` FixMatch steps (AdamW, warm-up + cosine) under fine-tuning's early-stopping rule, validating
    the moving average of the weights (``config.ema_decay``), which ``model`` holds at the end; the records."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = warmup_cosine(optimizer, max(1, config.steps // 10), config.steps)
    average = (
        AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
        if config.ema_decay
        else None
    )
    evaluated = average.module if average is not None else model
    stopping, history, parts, stop = BestOnValidation(config.patience), [], [], False
    model.train()
    for step in range(1, config.steps + 1):
        loss, record = _fixmatch_step(model, batches, config)
        optimizer_step(loss, optimizer, schedule)
        if average is not None:
            average.update_parameters(model)
        parts.append({"loss": loss.item(), **record})
        if step % config.eval_every and step != config.steps:
            continue
        history.append({"step": step, **{key: float(np.mean([part[key] for part in parts])) for key in parts[0]}})
        parts = []
        if validation is not None:
            history[-1]["val_accuracy"], history[-1]["val_loss"] = validation_scores(
                evaluated, *validation, config.augment
            )
            model.train()
            stop = stopping.update(step, history[-1]["val_accuracy"], evaluated, history[-1]["val_loss"])
        log.info(
            "self-training step %d/%d: loss %.4f, mask rate %.3f%s",
            step,
            config.steps,
            history[-1]["loss"],
            history[-1]["mask_rate"],
            f", val accuracy {history[-1]['val_accuracy']:.4f}" if validation is not None else "",
        )
        if validation is not None and stop:
            break
    history[-1]["stopped_step"] = history[-1]["step"]
    if evaluated is not model:
        model.load_state_dict(evaluated.state_dict())
    if validation is not None:
        stopping.restore(model)
        history[-1].update(stopping.record())
    return history

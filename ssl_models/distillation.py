"""The student of self-training, the third step of SimCLR v2 (Chen et al., 2020, "Big Self-Supervised Models are Strong
Semi-Supervised Learners", arXiv 2006.10029, §2 eq. 2): a fine-tuned teacher labels the unlabelled pool
and a student learns from those labels by distillation.

Here the student starts from the self-supervised encoder (a new linear layer), and each optimiser step
sees a batch of pseudo-labelled pool images (distillation loss against the teacher's soft targets at
``temperature``) and a batch of the labelled images (cross-entropy on the true labels, weighted by
``labelled_weight``; SimCLR v2 adds these when labels are not too few). Pool images are kept only
where the teacher is confident (``confidence_threshold``), and no predicted class may keep more than
``max_class_ratio`` times its share of the labelled images (class balance).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ssl_models.augment import FINETUNE_AUGMENT, AugmentConfig, augment
from ssl_models.device import apply_in_batches, autocast, pick_device
from ssl_models.heads import Classifier
from ssl_models.loop import EpochTotals, optimizer_step
from ssl_models.optim import warmup_cosine
from ssl_models.data import gather, place_images


@dataclass(frozen=True)
class SelfTrainConfig:
    """The self-training stage. Defaults: about 20 to 40 s per label fraction on a 2-core CPU at 28 px (small_cnn).

    steps: optimiser steps of the student (each: ``batch_size`` pool + ``batch_size`` labelled images).
    head_warmup_steps: of those, the first ones train only the new linear layer (LP-FT, as fine-tuning).
    temperature: of the teacher's soft targets and the student's distilled logits (SimCLR v2 uses 1).
    confidence_threshold: a pool image is pseudo-labelled only if the teacher's top probability
        (at temperature 1) is at least this.
    max_class_ratio: class balance: a predicted class keeps at most ratio x its share of the labelled
        images x the confident pool images, its most confident ones (select_pseudo_labels).
    max_label_fraction: self-train only at label fractions up to this. At 100% every pool image already
        has its true label, and the default run's time budget is better spent elsewhere.
    """

    steps: int = 300
    head_warmup_steps: int = 50
    batch_size: int = 32
    temperature: float = 1.0
    confidence_threshold: float = 0.5
    max_class_ratio: float = 1.5
    labelled_weight: float = 1.0
    max_label_fraction: float = 0.5
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0  # the pipeline and quality.py pass the teacher's fine-tuning seed
    augment: AugmentConfig = field(default_factory=lambda: FINETUNE_AUGMENT)

    def __post_init__(self) -> None:
        if self.temperature <= 1e-6:
            raise ValueError(f"SelfTrainConfig.temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.confidence_threshold < 1.0:
            raise ValueError(f"SelfTrainConfig.confidence_threshold must be in [0, 1), got {self.confidence_threshold}")
        if self.max_class_ratio < 1.0:
            raise ValueError(f"SelfTrainConfig.max_class_ratio must be >= 1, got {self.max_class_ratio}")
        if not 0 <= self.head_warmup_steps < self.steps:
            raise ValueError(f"SelfTrainConfig needs 0 <= head_warmup_steps < steps, got {self.head_warmup_steps} and {self.steps}")


def soft_targets(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Teacher logits (N, K) -> soft targets softmax(logits / temperature) (N, K), rows summing to 1."""
    if temperature <= 1e-6:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return torch.softmax(logits.float() / temperature, dim=1)


def select_pseudo_labels(probabilities: np.ndarray, threshold: float, max_class_ratio: float, class_prior: np.ndarray) -> np.ndarray:
    """Sorted indices of the pool images to pseudo-label: confident, then class-balanced.

    probabilities: (N, K) teacher probabilities at temperature 1; class_prior: (K,) class shares of the
    labelled images. An image is kept when its top probability is >= ``threshold`` (n of them); then
    each predicted class c keeps at most its ceil(max_class_ratio x class_prior[c] x n) most confident
    images, so no class the teacher over-predicts floods the student's training set.
    """
    if probabilities.ndim != 2 or class_prior.shape != (probabilities.shape[1],):
        raise ValueError(f"probabilities must be (N, K) and class_prior (K,); got {probabilities.shape} and {class_prior.shape}")
    confidence, predicted = probabilities.max(axis=1), probabilities.argmax(axis=1)
    confident = np.flatnonzero(confidence >= threshold)
    kept = [confident[:0]]
    for label in np.unique(predicted[confident]):
        members = confident[predicted[confident] == label]
        cap = math.ceil(max_class_ratio * class_prior[label] * len(confident) - 1e-9)
        kept.append(members[np.argsort(-confidence[members], kind="stable")[:cap]])
    return np.sort(np.concatenate(kept))


def distillation_loss(student_logits: torch.Tensor, teacher_probabilities: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR v2 eq. 2: -sum_y P_T(y|x; tau) log P_S(y|x; tau), mean over the batch.

    student_logits (B, K); teacher_probabilities (B, K) from ``soft_targets`` at the same temperature. -> scalar.
    """
    log_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    return -(teacher_probabilities * log_student).sum(dim=1).mean()


def teacher_logits(teacher: nn.Module, images: torch.Tensor, view: AugmentConfig) -> torch.Tensor:
    """The teacher (eval mode) on un-augmented images: (N, C, H, W) uint8 -> (N, K) float32 logits, on the host."""
    return apply_in_batches(teacher, images, view).cpu()


def _student_step_loss(model: Classifier, views: torch.Tensor, *, frozen_encoder: bool) -> torch.Tensor:
    """Logits (B, K) of augmented views (B, C, H, W); the encoder without gradients while the head warms up."""
    if not frozen_encoder:
        return model(views)
    with torch.no_grad():
        features = model.encoder(views)
    return model.linear(features.float())


def train_student(
    encoder: nn.Module,
    labelled_images: torch.Tensor,
    labels: np.ndarray,
    pool_images: torch.Tensor,
    pool_targets: torch.Tensor,
    config: SelfTrainConfig,
) -> tuple[Classifier, list[dict]]:
    """Distil soft targets into a student (``encoder`` + a new linear layer), with the labelled images beside them.

    Args:
        encoder: the self-supervised encoder to start from (trained in place); module with ``feature_dim``.
        labelled_images: (L, C, H, W) uint8; labels: (L,) int class indices.
        pool_images: (P, C, H, W) uint8 pseudo-labelled images; pool_targets: (P, K) soft targets.

    Returns:
        The student Classifier (on the host, eval mode) and one dict per 20 steps: step, loss, pool_accuracy
        (agreement with the teacher's arg-max on augmented pool views).
    """
    if len(labels) != labelled_images.shape[0] or len(labels) == 0 or pool_images.shape[0] != pool_targets.shape[0] or len(pool_targets) == 0:
        raise ValueError(f"need labelled images with one label each and a non-empty pool with one target row each; got {len(labels)} labels, {labelled_images.shape[0]} labelled images, {pool_images.shape[0]} pool images, {pool_targets.shape[0]} targets")  # fmt: skip
    device = pick_device()
    torch.manual_seed(config.seed)  # the new linear layer: same seed, same student
    model = Classifier(encoder, pool_targets.shape[1]).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = warmup_cosine(optimizer, max(1, config.steps // 10), config.steps)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    stored_labelled, stored_pool = place_images(labelled_images, device), place_images(pool_images, device)
    targets, soft = torch.as_tensor(labels, dtype=torch.long, device=device), pool_targets.to(device)
    history, totals = [], EpochTotals()
    for step in range(config.steps):
        model.train()
        frozen = step < config.head_warmup_steps
        if frozen:
            model.encoder.eval()
        pool_batch = rng.choice(len(soft), size=min(config.batch_size, len(soft)), replace=False)
        labelled_batch = rng.choice(len(targets), size=min(config.batch_size, len(targets)), replace=False)
        views = augment(gather(stored_pool, pool_batch, device), config.augment, generator)
        labelled_views = augment(gather(stored_labelled, labelled_batch, device), config.augment, generator)
        with autocast(device):
            logits = _student_step_loss(model, torch.cat([views, labelled_views]), frozen_encoder=frozen).float()
        pool_logits, labelled_logits = logits[: len(pool_batch)], logits[len(pool_batch) :]
        batch_soft = soft[torch.from_numpy(pool_batch).to(device)]
        loss = distillation_loss(pool_logits, batch_soft, config.temperature)
        loss = loss + config.labelled_weight * F.cross_entropy(labelled_logits, targets[torch.from_numpy(labelled_batch).to(device)])
        optimizer_step(loss, optimizer, schedule)
        totals.add(loss, len(pool_batch), pool_logits, batch_soft.argmax(1))
        if (step + 1) % 20 == 0 or step + 1 == config.steps:
            history.append({"step": step + 1, "loss": totals.mean_loss, "pool_accuracy": totals.accuracy})
            totals = EpochTotals()
    model.eval()
    return model.cpu(), history

"""Self-training on a dataset (the third step of SimCLR v2, arXiv 2006.10029, with a FixMatch student, arXiv
2001.07685): which images play which part, the student, and the pseudo-label quality report.

Parts: the labelled images are the same stratified subset of the train split that fine-tuning used
(same fraction, same seed); the unlabelled pool is the train split's images, at most
``SelfTrainConfig.max_pool_images`` of them (a sample drawn by seed when the split is larger: host memory
stays bounded whatever the dataset's size); the held-out images that judge the pseudo-labels and decide
whether the student beats its teacher are the labelled val split. The test split is never read here: it
stays for reporting (tasks/evaluate.py).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from ssl_models.evaluate import predict_probabilities
from ssl_models.finetuning import validation_scores
from ssl_models.fixmatch import SelfTrainConfig, train_fixmatch
from ssl_models.heads import Classifier
from ssl_models.metrics import expected_calibration_error
from sslflow.ladder import FLOORS, SCRATCH_ARM
from sslflow.training.labelled_subset import labelled_subset_rows
from sslflow.training.selection import select_best

log = logging.getLogger(__name__)


@dataclass
class SelfTrainingData:
    """Images (N, C, H, W) uint8 and class indices (N,) int of each part; class_names index the classes."""

    class_names: list[str]
    labelled_images: np.ndarray
    labels: np.ndarray
    pool_images: np.ndarray  # train-split images, labelled or not: all of them, or a sample of max_pool_images
    val_images: np.ndarray
    val_labels: np.ndarray
    train_images: int  # in the train split: more than len(pool_images) when the pool is a sample


@dataclass
class SelfTrainingResult:
    student: Classifier
    history: list[dict]  # train_fixmatch's: step, loss, labelled_loss, unlabelled_loss, mask_rate, val_accuracy
    report: dict  # see pseudo_label_quality and run_self_training


def pool_rows(manifest: pd.DataFrame, max_pool_images: int, seed: int) -> np.ndarray:
    """Positions (ascending) of the pool's rows: every train-split row, or ``max_pool_images`` of them drawn
    without replacement by ``seed`` (the same rows for the same seed)."""
    train = np.flatnonzero((manifest["split"] == "train").to_numpy())
    if len(train) <= max_pool_images:
        return train
    return np.sort(np.random.default_rng(seed).choice(train, size=max_pool_images, replace=False))


def self_training_data(
    manifest: pd.DataFrame,
    read_images: Callable[[np.ndarray], np.ndarray],
    label_fraction: float,
    seed: int,
    name: str,
    *,
    max_pool_images: int,
) -> SelfTrainingData:
    """The parts of dataset ``name`` at ``label_fraction``: the labelled subset fine-tuning used
    (sslflow.training.labelled_subset), the pool (``pool_rows``), the labelled val images.

    manifest: the dataset's rows (at least its train and val ones), no pixels. read_images(rows) -> the images
    (len(rows), C, H, W) uint8 of the manifest rows at positions ``rows`` (ascending): called once, for the rows
    the parts need and no others, so at most max_pool_images + labelled + val images are held.
    """
    subset = labelled_subset_rows(manifest, label_fraction, seed, name)
    pool = pool_rows(manifest, max_pool_images, seed)
    train_images = int((manifest["split"] == "train").sum())
    if len(pool) < train_images:
        log.info(
            "self-training on %s: the pool is %d of the %d train images (max_pool_images), sampled with seed %d",
            name,
            len(pool),
            train_images,
            seed,
        )
    needed = np.union1d(np.union1d(subset.rows, subset.val_rows), pool)
    images = read_images(needed)

    def part(rows: np.ndarray) -> np.ndarray:
        return images[np.searchsorted(needed, rows)]

    return SelfTrainingData(
        class_names=subset.class_names,
        labelled_images=part(subset.rows),
        labels=subset.labels,
        pool_images=part(pool),
        val_images=part(subset.val_rows),
        val_labels=subset.val_labels,
        train_images=train_images,
    )


def student_starts(models: list, top_rung_arm: str) -> list[tuple]:
    """(start, teacher) of each student at one label fraction and seed: the model fine-tuned from the top rung's encoder
    (``top_rung_arm``), judged against the best of every model there; and the control, the model fine-tuned from
    scratch, judged against the best model without self-supervision (the floors), so that the table can say what
    pretraining adds with a student and without one. models: those of one label fraction and seed, no students."""
    floors = [model for model in models if model.init in FLOORS]
    return [
        (student_start(models, top_rung_arm), select_best(models)),
        (student_start(models, SCRATCH_ARM), select_best(floors)),
    ]


def student_start(models: list, arm: str):
    """The model the student continues: the one fine-tuned (probe "finetune") from ``arm``'s encoder among ``models``
    (those of one label fraction and seed; anything with ``init`` and ``probe``)."""
    starts = [model for model in models if (model.init, model.probe) == (arm, "finetune")]
    if len(starts) != 1:
        raise ValueError(
            f"self-training continues the model fine-tuned from the {arm} encoder; found {len(starts)} among "
            f"{sorted((m.init, m.probe) for m in models)}"
        )
    return starts[0]


def pseudo_label_quality(
    probabilities: np.ndarray, labels: np.ndarray, threshold: float, class_names: list[str]
) -> dict:
    """What a model's pseudo-labels are worth, measured on held-out labelled images.

    probabilities (N, K) the model's probabilities; labels (N,) true class indices. coverage: share of images
    whose top probability reaches ``threshold`` (they would be pseudo-labelled); pseudo_label_accuracy:
    accuracy of the arg-max among those (NaN when none); ece: calibration over all N. per_class:
    the same two by true class.
    """
    if len(labels) == 0:
        raise ValueError("pseudo-label quality needs at least one held-out labelled image")
    predicted, passed = probabilities.argmax(axis=1), probabilities.max(axis=1) >= threshold
    correct = predicted == labels

    def share(mask: np.ndarray) -> float:
        return float(mask.mean()) if mask.size else math.nan

    per_class = [
        {
            "class": name,
            "images": int((labels == c).sum()),
            "coverage": share(passed[labels == c]),
            "accuracy": share(correct[(labels == c) & passed]),
        }
        for c, name in enumerate(class_names)
    ]
    return {
        "threshold": threshold,
        "held_out_images": len(labels),
        "coverage": share(passed),
        "pseudo_label_accuracy": share(correct[passed]),
        "ece": expected_calibration_error(probabilities, labels),
        "per_class": per_class,
    }


def run_self_training(
    teacher: nn.Module, start: Classifier, data: SelfTrainingData, config: SelfTrainConfig
) -> SelfTrainingResult:
    """Train a FixMatch student from a copy of ``start`` (a fine-tuned classifier, left as it is) on the labelled images
    and the pool; judge it and ``teacher`` on val.

    The report: pseudo_label_quality of the student's own pseudo-labels (FixMatch labels with the model being
    trained) at the threshold on val (coverage, pseudo_label_accuracy, ece, per_class), mask_rate (the share of pool
    images whose weak view passed the threshold, over the training steps), pool_images, train_images,
    pseudo_labelled and per class pool_pseudo_labels (pool images the final student labels at the threshold),
    labelled_images, val_images, best_step, stopped_step, final_train_accuracy, teacher_val_accuracy and _loss,
    student_val_accuracy and _loss, student_gain and student_beats_teacher (a better validation score: higher accuracy,
    ties broken by lower cross-entropy, the rule of every choice).
    """
    val = torch.from_numpy(data.val_images)
    student, history = train_fixmatch(
        copy.deepcopy(start),
        torch.from_numpy(data.labelled_images),
        data.labels,
        torch.from_numpy(data.pool_images),
        config,
        validation=(val, data.val_labels),
    )
    student_probabilities = predict_probabilities(student, val, config.augment)
    report = pseudo_label_quality(student_probabilities, data.val_labels, config.confidence_threshold, data.class_names)
    pool_probabilities = predict_probabilities(student, torch.from_numpy(data.pool_images), config.augment)
    passed = pool_probabilities.max(1) >= config.confidence_threshold
    pool_counts = np.bincount(pool_probabilities.argmax(1)[passed], minlength=len(data.class_names))
    for row, count in zip(report["per_class"], pool_counts):
        row["pool_pseudo_labels"] = int(count)
    student_accuracy, student_loss = validation_scores(student, val, data.val_labels, config.augment)
    teacher_accuracy, teacher_loss = validation_scores(teacher, val, data.val_labels, config.augment)
    report.update(
        mask_rate=float(np.mean([record["mask_rate"] for record in history])),
        pool_images=len(data.pool_images),
        train_images=data.train_images,
        pseudo_labelled=int(passed.sum()),
        labelled_images=len(data.labels),
        val_images=len(data.val_labels),
        best_step=history[-1].get("best_step", history[-1]["step"]),
        stopped_step=history[-1]["stopped_step"],
        final_train_accuracy=validation_scores(
            student, torch.from_numpy(data.labelled_images), data.labels, config.augment
        )[0],
        teacher_val_accuracy=teacher_accuracy,
        teacher_val_loss=teacher_loss,
        student_val_accuracy=student_accuracy,
        student_val_loss=student_loss,
        student_gain=student_accuracy - teacher_accuracy,
        student_beats_teacher=(student_accuracy, -student_loss) > (teacher_accuracy, -teacher_loss),
    )
    return SelfTrainingResult(student=student, history=history, report=report)

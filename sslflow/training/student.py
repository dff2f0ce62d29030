"""Self-training on a dataset (SimCLR v2 step 3, arXiv 2006.10029): which images play which part, the
student, and the pseudo-label quality report.

Parts: the labelled images are the same stratified subset of the train split that fine-tuning used
(same fraction, same seed); the unlabelled pool is every train-split image; the held-out images that
judge the pseudo-labels and decide whether the student beats its teacher are the labelled val split.
The test split is never read here: it stays for reporting (tasks/evaluate.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from ssl_models.evaluate import predict_probabilities
from ssl_models.heads import Classifier
from ssl_models.metrics import expected_calibration_error
from ssl_models.distillation import SelfTrainConfig, select_pseudo_labels, soft_targets, teacher_logits, train_student
from sslflow.training.labelled_subset import labelled_subset



@dataclass
class SelfTrainingData:
    """Images (N, C, H, W) uint8 and class indices (N,) int of each part; class_names index the classes."""

    class_names: list[str]
    labelled_images: np.ndarray
    labels: np.ndarray
    pool_images: np.ndarray  # every train-split image, labelled or not
    val_images: np.ndarray
    val_labels: np.ndarray


@dataclass
class SelfTrainingResult:
    student: Classifier | None  # None when the teacher is confident about no pool image: nothing to learn from
    history: list[dict]  # train_student's: step, loss, pool_accuracy
    report: dict  # see pseudo_label_quality and run_self_training


def self_training_data(manifest: pd.DataFrame, images: np.ndarray, label_fraction: float, seed: int, name: str) -> SelfTrainingData:
    """The parts of dataset ``name`` (its train and val rows and their images) at ``label_fraction``: the labelled
    subset fine-tuning used (sslflow.training.labelled_subset), the pool, the labelled val images."""
    subset = labelled_subset(manifest, images, label_fraction, seed, name)
    return SelfTrainingData(
        class_names=subset.class_names,
        labelled_images=subset.images,
        labels=subset.labels,
        pool_images=images[(manifest["split"] == "train").to_numpy()],
        val_images=subset.val_images,
        val_labels=subset.val_labels,
    )


def pseudo_label_quality(probabilities: np.ndarray, labels: np.ndarray, threshold: float, class_names: list[str]) -> dict:
    """What the teacher's pseudo-labels are worth, measured on held-out labelled images.

    probabilities (N, K) teacher probabilities; labels (N,) true class indices. coverage: share of images
    whose top probability reaches ``threshold`` (they would be pseudo-labelled); pseudo_label_accuracy:
    accuracy of the arg-max among those (NaN when none); teacher_ece: calibration over all N. per_class:
    the same two by true class.
    """
    if len(labels) == 0:
        raise ValueError("pseudo-label quality needs at least one held-out labelled image")
    predicted, passed = probabilities.argmax(axis=1), probabilities.max(axis=1) >= threshold
    correct = predicted == labels

    def share(mask: np.ndarray) -> float:
        return float(mask.mean()) if mask.size else math.nan

    per_class = [
        {"class": name, "images": int((labels == c).sum()), "coverage": share(passed[labels == c]), "accuracy": share(correct[(labels == c) & passed])}
        for c, name in enumerate(class_names)
    ]  # fmt: skip
    return {
        "threshold": threshold,
        "held_out_images": len(labels),
        "coverage": share(passed),
        "pseudo_label_accuracy": share(correct[passed]),
        "teacher_ece": expected_calibration_error(probabilities, labels),
        "per_class": per_class,
    }


def run_self_training(teacher: nn.Module, encoder: nn.Module, data: SelfTrainingData, config: SelfTrainConfig) -> SelfTrainingResult:
    """Pseudo-label the pool with ``teacher``, train a student from ``encoder``, judge both on the val split.

    The report: pseudo_label_quality on val, plus pool_images, pseudo_labelled (after threshold and class
    balance), per class pool_pseudo_labels, teacher_val_accuracy, student_val_accuracy, student_gain and
    student_beats_teacher (strictly higher val accuracy). With no pseudo-label at the threshold no student
    is trained: its accuracy and gain are NaN and it does not beat its teacher.
    """
    pool = torch.from_numpy(data.pool_images)
    logits = teacher_logits(teacher, pool, config.augment)
    prior = np.bincount(data.labels, minlength=len(data.class_names)) / len(data.labels)
    kept = select_pseudo_labels(soft_targets(logits, 1.0).numpy(), config.confidence_threshold, config.max_class_ratio, prior)
    student, history, student_accuracy = None, [], math.nan
    val = torch.from_numpy(data.val_images)
    if len(kept):
        student, history = train_student(
            encoder, torch.from_numpy(data.labelled_images), data.labels, pool[kept], soft_targets(logits[kept], config.temperature), config
        )  # fmt: skip
        student_accuracy = float((predict_probabilities(student, val, config.augment).argmax(1) == data.val_labels).mean())
    teacher_probabilities = predict_probabilities(teacher, val, config.augment)
    report = pseudo_label_quality(teacher_probabilities, data.val_labels, config.confidence_threshold, data.class_names)
    pool_counts = np.bincount(logits[kept].argmax(1).numpy(), minlength=len(data.class_names))
    for row, count in zip(report["per_class"], pool_counts):
        row["pool_pseudo_labels"] = int(count)
    teacher_accuracy = float((teacher_probabilities.argmax(1) == data.val_labels).mean())
    report.update(
        pool_images=len(pool), pseudo_labelled=len(kept), labelled_images=len(data.labels),
        teacher_val_accuracy=teacher_accuracy, student_val_accuracy=student_accuracy,
        student_gain=student_accuracy - teacher_accuracy, student_beats_teacher=student_accuracy > teacher_accuracy,
    )  # fmt: skip
    return SelfTrainingResult(student=student, history=history, report=report)

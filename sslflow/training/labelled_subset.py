"""The labelled images a run at one label fraction and seed may use: the one rule fine-tuning, self-training and
the kNN probe share.

The classes are the labels of the train split (sorted); the labelled images are ``stratified_subset`` of the
train split's labelled images at (fraction, seed) (ssl_models/label_fractions.py: nested across fractions); the
validation images are the labelled val images of those classes (a class with no training label cannot be
predicted). Everything else (the unlabelled pool, the test split) is the caller's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ssl_models.label_fractions import stratified_subset
from sslflow.data.labels import class_indices
from sslflow.data.manifest import labelled_rows


@dataclass(frozen=True)
class LabelledSubset:
    """Images (N, C, H, W) uint8 with class indices (N,) int64 of the subset, and the val images (M, ...) with theirs."""

    class_names: list[str]
    images: np.ndarray
    labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray


def labelled_subset(manifest: pd.DataFrame, images: np.ndarray, label_fraction: float, seed: int, name: str) -> LabelledSubset:
    """The subset of dataset ``name`` at ``label_fraction`` and ``seed``, from its manifest rows and their images
    (any rows that include the labelled train and val ones; others are ignored)."""
    train_images, train_label_names, _ = labelled_rows(manifest, images, "train")
    class_names = sorted(set(train_label_names))
    chosen = stratified_subset(train_label_names, label_fraction, seed=seed)
    val_images, val_label_names, _ = labelled_rows(manifest, images, "val")
    known = np.isin(val_label_names, class_names)
    return LabelledSubset(
        class_names=class_names,
        images=train_images[chosen],
        labels=class_indices(train_label_names[chosen], class_names, f"dataset {name} train split"),
        val_images=val_images[known],
        val_labels=class_indices(val_label_names[known], class_names, f"dataset {name} val split"),
    )

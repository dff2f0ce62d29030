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


@dataclass(frozen=True)
class LabelledSubset:
    """Images (N, C, H, W) uint8 with class indices (N,) int64 of the subset, and the val images (M, ...) with theirs."""

    class_names: list[str]
    images: np.ndarray
    labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray


@dataclass(frozen=True)
class SubsetRows:
    """Where a labelled subset is in a manifest: positions (row numbers, ascending within each part) of its train
    images with their class indices, and of the val images with theirs."""

    class_names: list[str]
    rows: np.ndarray
    labels: np.ndarray
    val_rows: np.ndarray
    val_labels: np.ndarray


def labelled_subset_rows(manifest: pd.DataFrame, label_fraction: float, seed: int, name: str) -> SubsetRows:
    """The subset of dataset ``name`` at ``label_fraction`` and ``seed`` from its manifest alone (no pixels): which rows
    to read (any rows that include the labelled train and val ones; others are ignored)."""
    train = np.flatnonzero(((manifest["split"] == "train") & manifest["label"].notna()).to_numpy())
    train_label_names = manifest["label"].to_numpy()[train].astype(str)
    class_names = sorted(set(train_label_names))
    chosen = stratified_subset(train_label_names, label_fraction, seed=seed)
    val = np.flatnonzero(((manifest["split"] == "val") & manifest["label"].notna()).to_numpy())
    val_label_names = manifest["label"].to_numpy()[val].astype(str)
    known = np.isin(val_label_names, class_names)
    return SubsetRows(
        class_names=class_names,
        rows=train[chosen],
        labels=class_indices(train_label_names[chosen], class_names, f"dataset {name} train split"),
        val_rows=val[known],
        val_labels=class_indices(val_label_names[known], class_names, f"dataset {name} val split"),
    )


def labelled_subset(manifest: pd.DataFrame, images: np.ndarray, label_fraction: float, seed: int, name: str) -> LabelledSubset:
    """The subset of dataset ``name`` at ``label_fraction`` and ``seed``, from its manifest rows and their images
    (any rows that include the labelled train and val ones; others are ignored)."""
    subset = labelled_subset_rows(manifest, label_fraction, seed, name)
    return LabelledSubset(
        class_names=subset.class_names,
        images=images[subset.rows],
        labels=subset.labels,
        val_images=images[subset.val_rows],
        val_labels=subset.val_labels,
    )

"""The label budget: the labelled images a run at one label fraction and seed may use, for training and for every
choice it makes. The one rule fine-tuning, self-training, the kNN probe and the choice among arms share.

At fraction f the budget is f of the labels available for development, in two folds that the dataset's case-level
split already keeps apart: the training fold is ``stratified_subset`` of the train split's labelled images at (f,
seed), the validation fold ``stratified_subset`` of the val split's labelled images (of the classes the training
fold has) at the same (f, seed) (ssl_models/label_fractions.py: at least one image per class, nested across
fractions). Early stopping, the fine-tuning search, the probe's regularisation, the student's checkpoint and the
choice among arms all decide on the validation fold, so a run at 1% uses 1% of the training labels and 1% of the
validation labels, never the whole val split (Oliver et al., "Realistic Evaluation of Deep Semi-Supervised
Learning Algorithms", NeurIPS 2018: a validation set larger than the training set makes a comparison unrealistic).
Both folds count as labels used. The gate and test splits are never part of a budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ssl_models.label_fractions import stratified_subset
from sslflow.data.labels import class_indices


@dataclass(frozen=True)
class LabelledSubset:
    """Images (N, C, H, W) uint8 with class indices (N,) int64 of the training fold, and the validation fold's images
    (M, C, H, W) with theirs (M,): N + M labels used."""

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
    val = val[np.isin(manifest["label"].to_numpy()[val].astype(str), class_names)]
    val_label_names = manifest["label"].to_numpy()[val].astype(str)
    val_chosen = stratified_subset(val_label_names, label_fraction, seed=seed) if len(val) else np.zeros(0, dtype=int)
    return SubsetRows(
        class_names=class_names,
        rows=train[chosen],
        labels=class_indices(train_label_names[chosen], class_names, f"dataset {name} train split"),
        val_rows=val[val_chosen],
        val_labels=class_indices(val_label_names[val_chosen], class_names, f"dataset {name} val split"),
    )


def labelled_subset(
    manifest: pd.DataFrame, images: np.ndarray, label_fraction: float, seed: int, name: str
) -> LabelledSubset:
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

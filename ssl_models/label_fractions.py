"""Which labelled images a fine-tuning run at a given label fraction may use."""

from __future__ import annotations

import math

import numpy as np


def stratified_subset(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Indices of floor(fraction * n_c) images of every class c (at least one each), sorted.

    Subsets are nested: for the same seed, the images chosen at 1% are among those chosen at 10%,
    so differences between fractions are due to the added labels, not to a different draw.

    Args:
        labels: (N,) class labels of the labelled pool.
        fraction: in (0, 1].
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    chosen = []
    for offset, label in enumerate(np.unique(labels)):
        members = np.flatnonzero(labels == label)
        order = np.random.default_rng(seed + offset).permutation(len(members))
        take = max(1, math.floor(fraction * len(members) + 1e-9))
        chosen.append(members[order[:take]])
    return np.sort(np.concatenate(chosen))

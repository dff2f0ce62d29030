"""PROXY case ids for data sets that have no patients (MNIST, Fashion-MNIST, optdigits).

MICLe (arXiv 2101.05224) takes positives from two different images of the same patient. Public
digit sets have no patients, so we invent a stand-in: pairs of mutual-ish nearest neighbours in
a PCA projection of the pixels, computed without labels. These are PROXY cases, not real ones:
two images of a proxy case are similar-looking images, which is what two images of one patient
usually are, but nothing more. Every id made here starts with ``proxy-nn-``.
"""

from __future__ import annotations

import numpy as np

PROXY_PREFIX = "proxy-nn-"


NEIGHBOURS = 8  # each anchor tries its 8 nearest images, nearest first, for a partner not yet taken


def _nearest_neighbours(projected: np.ndarray, count: int, block: int) -> np.ndarray:
    """(N, K) indices of the K = min(NEIGHBOURS, N - 1) nearest other rows of projected (N, D), nearest first."""
    neighbours = min(NEIGHBOURS, count - 1)
    nearest_first = np.empty((count, neighbours), dtype=np.int64)
    if neighbours == 0:  # a single image has no neighbour
        return nearest_first
    squared_norms = (projected**2).sum(axis=1)
    for start in range(0, count, block):
        rows = projected[start : start + block]
        distances = squared_norms[start : start + block, None] - 2 * rows @ projected.T + squared_norms[None, :]
        distances[np.arange(len(rows)), np.arange(start, start + len(rows))] = np.inf
        nearest = np.argpartition(distances, neighbours - 1, axis=1)[:, :neighbours]
        order = np.take_along_axis(distances, nearest, axis=1).argsort(axis=1)
        nearest_first[start : start + block] = np.take_along_axis(nearest, order, axis=1)
    return nearest_first


def pixel_neighbour_proxy_cases(
    pixels: np.ndarray, seed: int = 0, components: int = 32, block: int = 1024
) -> list[str]:
    """Group images into proxy cases of two (leftovers stay single) by nearest neighbour in PCA space.

    Args:
        pixels: (N, ...) array of images; flattened per row. Any N >= 0: with 8 or fewer images each
            looks among all the others.
        seed: order in which anchors pick their partner.

    Returns:
        N case ids ``proxy-nn-<k>``; about N/2 cases, a few with one image (the MICLe fall-back).
    """
    count = pixels.shape[0]
    if count == 0:
        return []
    flat = pixels.reshape(count, -1).astype(np.float32) / 255.0
    centred = flat - flat.mean(axis=0, keepdims=True)
    _, _, components_matrix = np.linalg.svd(centred[: min(count, 5000)], full_matrices=False)
    neighbours = _nearest_neighbours(
        centred @ components_matrix[:components].T, count, block
    )  # PCA space (N, components)

    case_of = np.full(count, -1, dtype=np.int64)
    next_case = 0
    for anchor in np.random.default_rng(seed).permutation(count):
        if case_of[anchor] >= 0:
            continue
        case_of[anchor] = next_case
        for candidate in neighbours[anchor]:
            if case_of[candidate] < 0:
                case_of[candidate] = next_case
                break
        next_case += 1
    width = len(str(next_case))
    return [f"{PROXY_PREFIX}{case:0{width}d}" for case in case_of]

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


def pixel_neighbour_proxy_cases(pixels: np.ndarray, seed: int = 0, components: int = 32, block: int = 1024) -> list[str]:
    """Group images into proxy cases of two (leftovers stay single) by nearest neighbour in PCA space.

    Args:
        pixels: (N, ...) array of images; flattened per row.
        seed: order in which anchors pick their partner.

    Returns:
        N case ids ``proxy-nn-<k>``; about N/2 cases, a few with one image (the MICLe fall-back).
    """
    count = pixels.shape[0]
    flat = pixels.reshape(count, -1).astype(np.float32) / 255.0
    centred = flat - flat.mean(axis=0, keepdims=True)
    _, _, components_matrix = np.linalg.svd(centred[: min(count, 5000)], full_matrices=False)
    projected = centred @ components_matrix[:components].T  # (N, components)
    squared_norms = (projected**2).sum(axis=1)

    neighbours = np.empty((count, 8), dtype=np.int64)  # the 8 nearest other images of each image
    for start in range(0, count, block):
        rows = projected[start : start + block]
        distances = squared_norms[start : start + block, None] - 2 * rows @ projected.T + squared_norms[None, :]
        distances[np.arange(len(rows)), np.arange(start, start + len(rows))] = np.inf
        nearest = np.argpartition(distances, 8, axis=1)[:, :8]
        order = np.take_along_axis(distances, nearest, axis=1).argsort(axis=1)
        neighbours[start : start + block] = np.take_along_axis(nearest, order, axis=1)

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

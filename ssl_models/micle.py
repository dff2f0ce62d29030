"""Positive pairs by case, for MICLe and SimCLR alike.

MICLe (Azizi et al., 2021, arXiv 2101.05224, §3.2) pairs two different images of the same case. A
case is a patient (or, for data without patients, a proxy grouping named as such). Each image is an
anchor once per epoch; its partner is another image of the same case drawn at random. Cases with a
single image fall back to SimCLR (Chen et al., 2020, arXiv 2002.05709): the partner is the anchor
itself and the two views differ only by augmentation. SimCLR is therefore the special case where
every image is its own case (``case_ids = range(N)``), and one sampler drives both methods.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class CasePairSampler:
    """Per-epoch (anchor, partner) index pairs of one case, shuffled, sharded across DDP ranks like DistributedSampler.

    MICLe (arXiv 2101.05224): partner = another image of the anchor's case. SimCLR (arXiv 2002.05709):
    every image its own case, so partner = anchor and the two views differ only by augmentation.

    Args:
        case_ids: length-N sequence; images with equal case_id are of one case.
        seed: base seed; epoch e uses seed + e, identically on every rank.
        rank, world_size: this process's shard; each rank gets ceil(N / world_size) pairs
            (the shuffled list is padded by wrapping around, as DistributedSampler does).
    """

    def __init__(self, case_ids: Sequence, seed: int = 0, rank: int = 0, world_size: int = 1):
        if len(case_ids) == 0:
            raise ValueError("CasePairSampler needs at least one image")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        _, case_index = np.unique(np.asarray(case_ids, dtype=object).astype(str), return_inverse=True)
        order = np.argsort(case_index, kind="stable")
        starts = np.searchsorted(case_index[order], np.arange(case_index.max() + 1))
        counts = np.bincount(case_index)
        self._members = order  # image indices grouped by case
        self._start = starts[case_index]  # for each image: where its case's members begin in _members
        self._count = counts[case_index]  # for each image: how many images its case has
        self.num_images = len(case_ids)
        self._position_in_case = np.empty(self.num_images, dtype=np.int64)  # rank of each image within its case
        self._position_in_case[order] = np.arange(self.num_images) - self._start[order]
        self.num_cases = len(counts)
        self.num_single_image_cases = int((counts == 1).sum())
        self.seed, self.rank, self.world_size = seed, rank, world_size

    def pairs(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(anchors, partners), each (ceil(N / world_size),) int64; partner != anchor unless its case has one image."""
        rng = np.random.default_rng(self.seed + epoch)
        anchors = rng.permutation(self.num_images)
        count = self._count[anchors]
        # Draw another member: an offset in [1, count) from the anchor's own position within its case.
        own_position = self._position_in_case[anchors]
        offset = np.where(count > 1, rng.integers(1, np.maximum(count, 2)), 0)
        partners = self._members[self._start[anchors] + (own_position + offset) % count]
        per_rank = -(-self.num_images // self.world_size)
        padded = np.resize(np.arange(self.num_images), per_rank * self.world_size)
        shard = padded[self.rank :: self.world_size]
        return anchors[shard].astype(np.int64), partners[shard].astype(np.int64)

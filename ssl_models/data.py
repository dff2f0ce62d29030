"""Where pretraining reads its images: in memory (the fast path) or streamed from shards (bounded memory).

Both sources yield, per epoch and rank, batches of (anchor, partner) pairs of one case as uint8 tensors
(B, C, H, W) on the training device; train.py augments every image on the device with its own random
parameters. Each rank gets exactly ceil(N / world_size) pairs per epoch from either source, so every
rank takes the same number of optimiser steps (DistributedDataParallel needs that).

- ``InMemoryPairs``: the image set is one tensor, on the GPU when it takes under a quarter of free
  memory (else pinned); pairs come from CasePairSampler over all images.
- ``StreamingPairs``: shards (ssl_models/shards.py) are shuffled per epoch and dealt to the ranks, so
  ranks read disjoint shards; each rank keeps a shuffle buffer of ``buffer_shards`` shards, draws pairs
  of one case inside it (ingest puts the images of one case in one shard: MICLe pairs stay possible) and
  loads the next shards in a background thread while it trains. Host memory is about
  (buffer_shards + prefetch_shards) shards, whatever the dataset size.

``memory_budget_bytes`` is the knob that chooses between them (``fits_in_memory``).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ssl_models.micle import CasePairSampler
from ssl_models.shards import ShardRows

Batch = tuple[torch.Tensor, torch.Tensor]  # (anchors, partners), each (B, C, H, W) uint8 on the device
MEMORY_BUDGET_FRACTION = 0.25  # of the pod's (cgroup's) memory, for the image set when nothing is set


def memory_budget_bytes(budget_megabytes: int = 0) -> int:
    """Host memory the image set may take: ``budget_megabytes`` MiB, or 0 for a quarter of the pod's memory
    (the cgroup limit when there is one, else the machine's physical memory)."""
    if budget_megabytes > 0:
        return budget_megabytes * 2**20
    limit = None
    try:
        text = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        limit = int(text) if text != "max" else None
    except (OSError, ValueError):
        pass
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(MEMORY_BUDGET_FRACTION * min(limit or physical, physical))


def place_images(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Put the uint8 image set on the GPU if it takes under a quarter of free memory, else pin it on the host."""
    if device.type == "cuda":
        free_bytes, _ = torch.cuda.mem_get_info(device)
        if images.numel() * images.element_size() < free_bytes // 4:
            return images.to(device)
        return images.pin_memory()
    return images


def gather(stored: torch.Tensor, indices: np.ndarray, device: torch.device) -> torch.Tensor:
    """stored[indices] on ``device``: stored (N, C, H, W), indices (B,) -> (B, C, H, W)."""
    index = torch.from_numpy(np.ascontiguousarray(indices)).to(stored.device)
    return stored.index_select(0, index).to(device, non_blocking=True)


def _pair_batches(stored: torch.Tensor, anchors: np.ndarray, partners: np.ndarray, batch_size: int, device: torch.device) -> Iterator[Batch]:
    for start in range(0, len(anchors), batch_size):
        yield gather(stored, anchors[start : start + batch_size], device), gather(stored, partners[start : start + batch_size], device)


class InMemoryPairs:
    """The whole image set in memory. images: (N, C, H, W) uint8 on the host; case_ids: length N."""

    def __init__(self, images: torch.Tensor, case_ids: Sequence, *, seed: int = 0):
        if len(case_ids) != images.shape[0]:
            raise ValueError(f"case_ids has {len(case_ids)} entries but there are {images.shape[0]} images")
        self.images, self.case_ids, self.seed = images, list(case_ids), seed
        self.num_images = len(self.case_ids)
        self._stored: torch.Tensor | None = None

    def batches(self, epoch: int, batch_size: int, rank: int, world_size: int, device: torch.device) -> Iterator[Batch]:
        """This rank's pairs of ``epoch`` (CasePairSampler, ceil(N / world_size) of them) in batches of batch_size."""
        if self._stored is None or self._stored.device.type != device.type:
            self._stored = place_images(self.images, device)
        anchors, partners = CasePairSampler(self.case_ids, seed=self.seed, rank=rank, world_size=world_size).pairs(epoch)
        return _pair_batches(self._stored, anchors, partners, batch_size, device)


class StreamingPairs:
    """Pairs streamed from shards in bounded memory.

    shards: every shard's rows (images of one case in one shard). buffer_shards: shards shuffled together;
    prefetch_shards: shards loaded ahead in a background thread. The epoch's shard order is a permutation
    by (seed, epoch), identical on every rank; rank r reads order[r::world_size] (every shard, rows
    r::world_size, when there are fewer shards than ranks).
    """

    def __init__(self, shards: Sequence[ShardRows], *, seed: int = 0, buffer_shards: int = 4, prefetch_shards: int = 2):
        if not shards:
            raise ValueError("StreamingPairs needs at least one shard")
        if buffer_shards < 1 or prefetch_shards < 0:
            raise ValueError(f"buffer_shards must be >= 1 and prefetch_shards >= 0, got {buffer_shards}, {prefetch_shards}")
        self.shards, self.seed = list(shards), seed
        self.buffer_shards, self.prefetch_shards = buffer_shards, prefetch_shards
        self.num_images = sum(len(shard.rows) for shard in self.shards)

    def _rank_shards(self, epoch: int, rank: int, world_size: int) -> list[ShardRows]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))
        if len(self.shards) >= world_size:
            return [self.shards[i] for i in order[rank::world_size]]
        picked = [self.shards[i] for i in order]
        return [replace(s, rows=s.rows[rank::world_size], case_ids=s.case_ids[rank::world_size]) for s in picked if len(s.rows[rank::world_size])]

    def _loaded(self, shards: list[ShardRows]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every shard of ``shards`` loaded, cycling; up to prefetch_shards + 1 loads run ahead in a thread."""
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-prefetch") as pool:
            pending: list[Future] = []
            position = 0
            while True:
                while len(pending) <= self.prefetch_shards:
                    pending.append(pool.submit(shards[position % len(shards)].load))
                    position += 1
                yield pending.pop(0).result()

    def batches(self, epoch: int, batch_size: int, rank: int, world_size: int, device: torch.device) -> Iterator[Batch]:
        """This rank's ceil(N / world_size) pairs of ``epoch`` in batches of batch_size (the last may be smaller)."""
        wanted = -(-self.num_images // world_size)
        shards = self._rank_shards(epoch, rank, world_size)
        groups = [min(self.buffer_shards, len(shards) - start) for start in range(0, len(shards), self.buffer_shards)]  # one pass
        loaded = self._loaded(shards)
        rng = np.random.default_rng([self.seed, epoch, rank])
        carried: list[Segment] = []
        try:
            for size in itertools.cycle(groups):  # a rank with fewer images than ``wanted`` reads its shards again
                group = [next(loaded) for _ in range(size)]
                buffer = torch.from_numpy(np.concatenate([pixels for pixels, _ in group]))
                anchors, partners = CasePairSampler(np.concatenate([cases for _, cases in group]), seed=int(rng.integers(2**31))).pairs(0)
                anchors, partners = anchors[:wanted], partners[:wanted]
                wanted -= len(anchors)
                carried.append((buffer, anchors, partners))
                yield from _rebatch(carried, batch_size, device, final=wanted == 0)
                if wanted == 0:
                    return
        finally:
            loaded.close()


Segment = tuple[torch.Tensor, np.ndarray, np.ndarray]  # a shuffle buffer (n, C, H, W) uint8 and the (anchor, partner) rows of its pairs


def _rebatch(carried: list[Segment], batch_size: int, device: torch.device, *, final: bool) -> Iterator[Batch]:
    """Full batches of batch_size pairs from the segments in ``carried``, in order; the pairs left over stay in
    ``carried`` unless ``final``, when they are yielded too. Each image is copied once, into its batch (a batch
    that spans two segments joins two small pieces)."""
    available = sum(len(anchors) for _, anchors, _ in carried)
    while available >= batch_size or (final and available):
        take, pieces = min(batch_size, available), []
        available -= take
        while take:
            buffer, anchors, partners = carried[0]
            count = min(take, len(anchors))
            pieces.append((buffer, anchors[:count], partners[:count]))
            carried[0] = (buffer, anchors[count:], partners[count:])
            if count == len(anchors):
                carried.pop(0)
            take -= count
        yield _joined([gather(buffer, rows, device) for buffer, rows, _ in pieces]), _joined([gather(buffer, rows, device) for buffer, _, rows in pieces])


def _joined(pieces: list[torch.Tensor]) -> torch.Tensor:
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def fits_in_memory(image_bytes: int, budget_bytes: int) -> bool:
    """Whether an image set of ``image_bytes`` is read whole (InMemoryPairs) under ``budget_bytes``."""
    return image_bytes <= budget_bytes

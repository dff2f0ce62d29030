"""Where pretraining reads its images: in memory (the fast path) or streamed from shards (bounded memory).

Both sources yield, per epoch and rank, batches of (anchor, partner) pairs of one case as uint8 tensors
(B, C, H, W) on the training device; pretraining.py augments every image on the device with its own random
parameters.

Exact epochs with W ranks, from either source: every rank gets exactly ceil(N / W) anchors per epoch, so
every rank takes the same number of optimiser steps (DistributedDataParallel needs that), and the ranks'
anchors together are the N images once, plus ceil(N / W) * W - N <= W - 1 images repeated to even the
ranks out (``padded_images``; DistributedSampler's rule). The order is shuffled anew each epoch and is a
function of (seed, epoch) alone: a resumed run reads what an uninterrupted one reads.

- ``InMemoryPairs``: the image set is one tensor, on the GPU when it takes under a quarter of free
  memory (else pinned); pairs come from CasePairSampler over all images.
- ``StreamingPairs``: the shards (ssl_models/shards.py), in an order shuffled per epoch, are laid end to
  end and cut into W equal contiguous parts (``rank_pieces``): a rank reads whole shards and at most a
  part of one shard at each end of its run, never another rank's rows, and fetches only those shards.
  Each rank keeps a shuffle buffer of ``buffer_shards`` pieces, draws pairs of one case inside it (ingest
  puts the images of one case in one shard: MICLe pairs stay possible, except for a case cut at a rank's
  boundary) and loads the next pieces in a background thread while it trains. Host memory is about
  (buffer_shards + prefetch_shards) shards, whatever the dataset size.

``memory_budget_bytes`` is the knob that chooses between them (``fits_in_memory``): the pod's budget,
shared by the ranks on the node.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ssl_models.cpu_threads import CGROUP_ROOT
from ssl_models.micle import CasePairSampler
from ssl_models.shards import ShardRows

Batch = tuple[torch.Tensor, torch.Tensor]  # (anchors, partners), each (B, C, H, W) uint8 on the device
MEMORY_BUDGET_FRACTION = 0.25  # of the pod's (cgroup's) memory, for the image set when nothing is set


def memory_budget_bytes(budget_megabytes: int = 0, local_world_size: int = 1) -> int:
    """Host memory the image set of one rank may take: the pod's budget shared by the ``local_world_size``
    ranks on it (each in-memory rank holds its own copy of the image set).

    The pod's budget is ``budget_megabytes`` MiB, or for 0 a quarter of the pod's memory (the cgroup limit when
    there is one, else the machine's physical memory).
    """
    if local_world_size < 1:
        raise ValueError(f"local_world_size must be >= 1, got {local_world_size}")
    if budget_megabytes > 0:
        return budget_megabytes * 2**20 // local_world_size
    limit = cgroup_memory_limit()
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(MEMORY_BUDGET_FRACTION * min(limit or physical, physical)) // local_world_size


CGROUP_MEMORY_FILES = ("memory.max", "memory/memory.limit_in_bytes")  # cgroup v2, then v1 (a pod's own cgroup)


def cgroup_memory_limit(root: Path = CGROUP_ROOT) -> int | None:
    """This container's memory limit in bytes from its cgroup under ``root``: v2's memory.max ("max": none), else v1's
    memory/memory.limit_in_bytes (no limit reads as a huge number, which the physical memory caps); None without one."""
    for name in CGROUP_MEMORY_FILES:
        try:
            text = (root / name).read_text().strip()
        except OSError:
            continue
        return int(text) if text.isdigit() else None
    return None


def padded_images(num_images: int, world_size: int) -> int:
    """Images repeated per epoch so that ``world_size`` ranks get ceil(N / W) anchors each: at most W - 1."""
    return -(-num_images // world_size) * world_size - num_images


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


def _pair_batches(
    stored: torch.Tensor, anchors: np.ndarray, partners: np.ndarray, batch_size: int, device: torch.device
) -> Iterator[Batch]:
    for start in range(0, len(anchors), batch_size):
        yield (
            gather(stored, anchors[start : start + batch_size], device),
            gather(stored, partners[start : start + batch_size], device),
        )


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
        anchors, partners = CasePairSampler(self.case_ids, seed=self.seed, rank=rank, world_size=world_size).pairs(
            epoch
        )
        return _pair_batches(self._stored, anchors, partners, batch_size, device)


class StreamingPairs:
    """Pairs streamed from shards in bounded memory.

    shards: every shard's rows (images of one case in one shard). buffer_shards: pieces shuffled together;
    prefetch_shards: pieces loaded ahead in a background thread. The epoch's shard order is a permutation
    by (seed, epoch), identical on every rank; rank r reads its contiguous part of that order
    (``rank_pieces``): ceil(N / W) images, the last rank's part wrapping to the first rows when N is not a
    multiple of W (``padded_images``, at most W - 1).
    """

    def __init__(self, shards: Sequence[ShardRows], *, seed: int = 0, buffer_shards: int = 4, prefetch_shards: int = 2):
        if not shards:
            raise ValueError("StreamingPairs needs at least one shard")
        if buffer_shards < 1 or prefetch_shards < 0:
            raise ValueError(
                f"buffer_shards must be >= 1 and prefetch_shards >= 0, got {buffer_shards}, {prefetch_shards}"
            )
        self.shards, self.seed = list(shards), seed
        self.buffer_shards, self.prefetch_shards = buffer_shards, prefetch_shards
        self.num_images = sum(len(shard.rows) for shard in self.shards)

    def rank_pieces(self, epoch: int, rank: int, world_size: int) -> list[ShardRows]:
        """The rows ``rank`` reads in ``epoch``, as pieces of shards in reading order: the shards in the epoch's
        order laid end to end (position p is row p mod N), positions [rank * q, (rank + 1) * q) with q = ceil(N / W)."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))
        sizes = np.array([len(self.shards[i].rows) for i in order])
        ends = np.cumsum(sizes)
        per_rank = -(-self.num_images // world_size)
        position, stop, pieces = rank * per_rank, (rank + 1) * per_rank, []
        while position < stop:
            wrapped = position % self.num_images
            k = int(np.searchsorted(ends, wrapped, side="right"))  # the shard holding position ``wrapped``
            shard, first = self.shards[order[k]], wrapped - (ends[k] - sizes[k])
            count = min(len(shard.rows) - first, stop - position)
            pieces.append(
                replace(shard, rows=shard.rows[first : first + count], case_ids=shard.case_ids[first : first + count])
            )
            position += count
        return pieces

    def _loaded(self, pieces: list[ShardRows]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every piece of ``pieces`` loaded, in order; up to prefetch_shards + 1 loads run ahead in a thread."""
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-prefetch") as pool:
            pending: list[Future] = []
            for position in range(len(pieces)):
                while len(pending) <= self.prefetch_shards and position + len(pending) < len(pieces):
                    pending.append(pool.submit(pieces[position + len(pending)].load))
                yield pending.pop(0).result()

    def batches(self, epoch: int, batch_size: int, rank: int, world_size: int, device: torch.device) -> Iterator[Batch]:
        """This rank's ceil(N / world_size) pairs of ``epoch`` in batches of batch_size (the last may be smaller)."""
        pieces = self.rank_pieces(epoch, rank, world_size)
        groups = [pieces[start : start + self.buffer_shards] for start in range(0, len(pieces), self.buffer_shards)]
        loaded = self._loaded(pieces)
        rng = np.random.default_rng([self.seed, epoch, rank])
        carried: list[Segment] = []
        try:
            for index, group in enumerate(groups):
                arrays = [next(loaded) for _ in group]
                buffer = torch.from_numpy(np.concatenate([pixels for pixels, _ in arrays]))
                anchors, partners = CasePairSampler(
                    np.concatenate([cases for _, cases in arrays]), seed=int(rng.integers(2**31))
                ).pairs(0)
                carried.append((buffer, anchors, partners))
                yield from _rebatch(carried, batch_size, device, final=index == len(groups) - 1)
        finally:
            loaded.close()


Segment = tuple[
    torch.Tensor, np.ndarray, np.ndarray
]  # a shuffle buffer (n, C, H, W) uint8 and the (anchor, partner) rows of its pairs


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
        yield (
            _joined([gather(buffer, rows, device) for buffer, rows, _ in pieces]),
            _joined([gather(buffer, rows, device) for buffer, _, rows in pieces]),
        )


def _joined(pieces: list[torch.Tensor]) -> torch.Tensor:
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def fits_in_memory(image_bytes: int, budget_bytes: int) -> bool:
    """Whether an image set of ``image_bytes`` is read whole (InMemoryPairs) under ``budget_bytes``."""
    return image_bytes <= budget_bytes

"""MoCo v2 (He et al., 2020, "Momentum Contrast for Unsupervised Visual Representation Learning",
arXiv 1911.05722; Chen et al., 2020, "Improved Baselines with Momentum Contrastive Learning", arXiv
2003.04297): a query encoder trained by InfoNCE against the key of the other view from a momentum
(EMA) copy of itself and a queue of K earlier keys as negatives. The negatives come from the queue, not
the batch, so small batches work: what a hospital with a few GPUs has.

As MoCo v2: MLP head, temperature 0.2, queue of keys from a slowly moving encoder. As lightly's and
solo-learn's small-data recipes: the loss is symmetrised (each view is a query once) and the momentum is
0.99 by default (0.999 in the paper, for runs of hundreds of thousands of steps).

Shuffling BN (arXiv 1911.05722, §3.3), on every backend: BatchNorm computes its statistics over a group of
the batch, never over the whole; the queries are encoded in their groups as they come and the keys after a
shuffle, so a query and its positive key are normalised with statistics of different subsets and the
network cannot tell the positive from the queue's negatives by the batch they were encoded in. The groups
are the ranks under torchrun (the paper's per-GPU BatchNorm: the keys' views are gathered from every rank,
shuffled, encoded by their new rank and sent back; gloo and NCCL alike), and ``SINGLE_PROCESS_GROUPS``
halves of the batch in one process (the paper's single-GPU equivalent, the split BatchNorm of its CIFAR
demo). SyncBatchNorm, which the loop gives the other methods on GPUs, would undo the groups: MoCo opts out
(``sync_batch_norm``). The shuffle is a permutation drawn from (seed, step), the same on every rank, so a
resumed run shuffles as the uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ssl_models.distributed import gather_with_grad, rank_and_world_size
from ssl_models.heads import MLPHead
from ssl_models.losses import info_nce_with_queue
from ssl_models.methods.base import SSLMethod, ema_update, frozen_copy, full_precision

SINGLE_PROCESS_GROUPS = 2  # BatchNorm groups of one process's batch (one group per rank under torchrun)


def encode_in_groups(encoder: nn.Module, projection: nn.Module, views: torch.Tensor, groups: int) -> torch.Tensor:
    """``projection(encoder(chunk))`` for each of ``groups`` consecutive equal chunks of ``views``: the BatchNorm
    layers of both (the projection head has them too) take their statistics per chunk.

    Shapes: views (N, C, H, W), N divisible by ``groups`` -> (N, D)."""
    return torch.cat([projection(encoder(chunk)) for chunk in views.chunk(groups)])


def shuffle_permutation(size: int, seed: int, step: int) -> torch.Tensor:
    """The shuffle of ``step``: a permutation of range(size), the same on every rank (a CPU generator seeded by
    (seed, step); the global RNG and the augmentations' generator are left alone)."""
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed * 1_000_003 + step))


@dataclass(frozen=True)
class MoCoSettings:
    """MoCo v2's settings: ``PretrainConfig.method_settings`` when ``method`` is "moco".

    temperature: tau of InfoNCE (> 1e-6).
    queue_size: the queue of negatives; keep it well under the number of images: a queue longer than an epoch holds
        the anchor's own earlier key as a "negative" (1024 for the default's 4,000-6,000 images).
    momentum: the key encoder's EMA, in [0, 1) (0.999 in the paper; 0.99 for short runs).
    """

    temperature: float = 0.2
    queue_size: int = 1024
    momentum: float = 0.99


class MoCoV2(SSLMethod):
    """Query network (encoder + MLP head), its momentum copy for the keys, and a queue of keys.

    Args:
        encoder: module with ``feature_dim``; (B, C, H, W) -> (B, feature_dim).
        projection_dim: D. temperature: tau of InfoNCE (> 1e-6). queue_size: K negatives (>= 1).
        momentum: m of the key encoder's EMA, in [0, 1).

        seed: the keys' shuffle (PretrainConfig.seed).

    State (in ``state_dict()``, so in every resume state): ``key_encoder``, ``key_projection``, ``queue``
    (K, D) of L2-normalised keys, ``queue_pointer`` (1,) the next row to overwrite, ``steps_done`` (1,) the
    optimiser steps taken (the shuffle of the next one).

    Shapes: views_a, views_b (B, C, H, W) -> scalar: the mean of the two directions' InfoNCE.
    """

    label = "MoCo v2"
    sync_batch_norm = False  # shuffling BN needs BatchNorm per group (rank): SyncBatchNorm would pool them

    settings_type = MoCoSettings

    @classmethod
    def from_config(cls, encoder: nn.Module, settings: MoCoSettings, config) -> MoCoV2:
        return cls(
            encoder,
            projection_dim=config.projection_dim,
            temperature=settings.temperature,
            queue_size=settings.queue_size,
            momentum=settings.momentum,
            seed=config.seed,
        )

    def __init__(
        self,
        encoder: nn.Module,
        *,
        projection_dim: int = 64,
        temperature: float = 0.2,
        queue_size: int = 1024,
        momentum: float = 0.99,
        seed: int = 0,
    ):
        super().__init__()
        if temperature <= 1e-6:
            raise ValueError(
                f"MoCo's temperature must be positive and not ~0 (got {temperature}); it divides the logits"
            )
        if queue_size < 1:
            raise ValueError(f"MoCo's queue_size must be at least 1 (got {queue_size}): the queue holds the negatives")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(
                f"MoCo's momentum must be in [0, 1) (got {momentum}); 1 would never update the key encoder"
            )
        self.encoder = encoder
        self.projection = MLPHead(encoder.feature_dim, out_dim=projection_dim)
        self.key_encoder, self.key_projection = frozen_copy(encoder), frozen_copy(self.projection)
        self.temperature, self.momentum, self.seed = temperature, momentum, seed
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, projection_dim), dim=1))
        self.register_buffer("queue_pointer", torch.zeros(1, dtype=torch.long))
        self.register_buffer("steps_done", torch.zeros(1, dtype=torch.long))
        self._new_keys: torch.Tensor | None = None

    def forward(self, views_a: torch.Tensor, views_b: torch.Tensor) -> torch.Tensor:
        views = torch.cat([views_a, views_b])
        _, world_size = rank_and_world_size()
        groups = SINGLE_PROCESS_GROUPS if world_size == 1 else 1  # per rank; the ranks are groups of their own
        queries = encode_in_groups(self.encoder, self.projection, views, groups)  # (2B, D)
        keys = self._shuffled_keys(views, groups)  # (2B, D)
        with full_precision(queries):
            queries, keys = F.normalize(queries.float(), dim=1), F.normalize(keys.float(), dim=1)
            (q_a, q_b), (k_a, k_b), queue = queries.chunk(2), keys.chunk(2), self.queue.clone()
            loss = 0.5 * (
                info_nce_with_queue(q_a, k_b, queue, self.temperature)
                + info_nce_with_queue(q_b, k_a, queue, self.temperature)
            )
        self._new_keys = keys
        return loss

    @torch.no_grad()
    def _shuffled_keys(self, views: torch.Tensor, groups: int) -> torch.Tensor:
        """The key network's outputs for this rank's ``views`` (N, C, H, W) -> (N, D), each encoded in the BatchNorm
        group (rank, then chunk of ``groups``) a shuffle of every rank's views sent it to: shuffling BN."""
        rank, world_size = rank_and_world_size()
        every_view = gather_with_grad(views)  # (W N, C, H, W) in rank order; no gradient flows to keys
        order = shuffle_permutation(every_view.shape[0], self.seed, int(self.steps_done)).to(views.device)
        mine = every_view[order].chunk(world_size)[rank]
        keys = gather_with_grad(
            encode_in_groups(self.key_encoder, self.key_projection, mine, groups)
        )  # (W N, D), shuffled
        unshuffled = torch.empty_like(keys)
        unshuffled[order] = keys
        return unshuffled.chunk(world_size)[rank]

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """Move the key network towards the query network, then enqueue this step's keys (from every rank)."""
        ema_update(self.key_encoder, self.encoder, self.momentum)
        ema_update(self.key_projection, self.projection, self.momentum)
        self.steps_done += 1
        if self._new_keys is not None:
            self._enqueue(gather_with_grad(self._new_keys))
            self._new_keys = None

    def _enqueue(self, keys: torch.Tensor) -> None:
        """Overwrite the oldest rows of the queue with ``keys`` (N, D), wrapping around; keeps the newest K if N > K."""
        size = self.queue.shape[0]
        keys = keys[-size:]
        rows = (int(self.queue_pointer) + torch.arange(keys.shape[0], device=keys.device)) % size
        self.queue[rows] = keys.to(self.queue.dtype)
        self.queue_pointer[0] = (int(self.queue_pointer) + keys.shape[0]) % size

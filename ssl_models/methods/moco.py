"""MoCo v2 (He et al., 2020, "Momentum Contrast for Unsupervised Visual Representation Learning",
arXiv 1911.05722; Chen et al., 2020, "Improved Baselines with Momentum Contrastive Learning", arXiv
2003.04297): a query encoder trained by InfoNCE against the key of the other view from a momentum
(EMA) copy of itself and a queue of K earlier keys as negatives. The negatives come from the queue, not
the batch, so small batches work: what a hospital with a few GPUs has.

As MoCo v2: MLP head, temperature 0.2, queue of keys from a slowly moving encoder. As lightly's and
solo-learn's small-data recipes: the loss is symmetrised (each view is a query once) and the momentum is
0.99 by default (0.999 in the paper, for runs of hundreds of thousands of steps). Not done: shuffling
BatchNorm across GPUs (the paper's guard against batch-statistics leaks between query and key); under
torchrun the loop converts BatchNorm to SyncBatchNorm instead, which computes the statistics over the
global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_models.distributed import gather_with_grad
from ssl_models.heads import SimCLRProjectionHead
from ssl_models.methods.base import SSLMethod, ema_update, frozen_copy, full_precision


def info_nce_with_queue(queries: torch.Tensor, keys: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo's InfoNCE (arXiv 1911.05722, eq. 1): row i of ``keys`` is the positive of row i of ``queries``,
    every row of ``queue`` a negative.

    Shapes: queries (B, D), keys (B, D), queue (K, D), all L2-normalised; returns the scalar mean over B.
    """
    positives = (queries * keys).sum(dim=1, keepdim=True)  # (B, 1)
    negatives = queries @ queue.T  # (B, K)
    logits = torch.cat([positives, negatives], dim=1) / temperature  # (B, 1 + K); the positive is class 0
    return F.cross_entropy(logits, torch.zeros(queries.shape[0], dtype=torch.long, device=queries.device))


class MoCoV2(SSLMethod):
    """Query network (encoder + MLP head), its momentum copy for the keys, and a queue of keys.

    Args:
        encoder: module with ``feature_dim``; (B, C, H, W) -> (B, feature_dim).
        projection_dim: D. temperature: tau of InfoNCE (> 1e-6). queue_size: K negatives (>= 1).
        momentum: m of the key encoder's EMA, in [0, 1).

    State (in ``state_dict()``, so in every resume state): ``key_encoder``, ``key_projection``, ``queue``
    (K, D) of L2-normalised keys, ``queue_pointer`` (1,) the next row to overwrite.

    Shapes: views_a, views_b (B, C, H, W) -> scalar: the mean of the two directions' InfoNCE.
    """

    label = "MoCo v2"

    @classmethod
    def from_config(cls, encoder: nn.Module, settings) -> MoCoV2:
        return cls(encoder, projection_dim=settings.projection_dim, temperature=settings.temperature, queue_size=settings.queue_size, momentum=settings.momentum)

    def __init__(self, encoder: nn.Module, *, projection_dim: int = 64, temperature: float = 0.2, queue_size: int = 1024, momentum: float = 0.99):
        super().__init__()
        if temperature <= 1e-6:
            raise ValueError(f"MoCo's temperature must be positive and not ~0 (got {temperature}); it divides the logits")
        if queue_size < 1:
            raise ValueError(f"MoCo's queue_size must be at least 1 (got {queue_size}): the queue holds the negatives")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"MoCo's momentum must be in [0, 1) (got {momentum}); 1 would never update the key encoder")
        self.encoder = encoder
        self.projection = SimCLRProjectionHead(encoder.feature_dim, out_dim=projection_dim)
        self.key_encoder, self.key_projection = frozen_copy(encoder), frozen_copy(self.projection)
        self.temperature, self.momentum = temperature, momentum
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, projection_dim), dim=1))
        self.register_buffer("queue_pointer", torch.zeros(1, dtype=torch.long))
        self._new_keys: torch.Tensor | None = None

    def forward(self, views_a: torch.Tensor, views_b: torch.Tensor) -> torch.Tensor:
        views = torch.cat([views_a, views_b])
        queries = self.projection(self.encoder(views))  # (2B, D)
        with torch.no_grad():
            keys = self.key_projection(self.key_encoder(views))  # (2B, D)
        with full_precision(queries):
            queries, keys = F.normalize(queries.float(), dim=1), F.normalize(keys.float(), dim=1)
            (q_a, q_b), (k_a, k_b), queue = queries.chunk(2), keys.chunk(2), self.queue.clone()
            loss = 0.5 * (info_nce_with_queue(q_a, k_b, queue, self.temperature) + info_nce_with_queue(q_b, k_a, queue, self.temperature))
        self._new_keys = keys
        return loss

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """Move the key network towards the query network, then enqueue this step's keys (from every rank)."""
        ema_update(self.key_encoder, self.encoder, self.momentum)
        ema_update(self.key_projection, self.projection, self.momentum)
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

"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al., 2020, arXiv 2002.05709)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssl_models.distributed import gather_with_grad, is_distributed


class NTXentLoss(nn.Module):
    """Contrastive loss over two views of a batch.

    Row i of ``z_a`` and row i of ``z_b`` are a positive pair; every other view in the global batch
    (2 * world_size * B - 2 of them) is a negative. Under DDP the projections of all ranks are
    gathered (with gradients), so the loss averaged over ranks equals the single-process loss on
    the same global batch.

    Args:
        temperature: tau in exp(sim / tau); must be > 1e-6.

    Shapes:
        z_a, z_b: (B, D) projections, not necessarily normalised.
        returns: scalar, the mean over this rank's 2B anchors.
    """

    def __init__(self, temperature: float = 0.5):
        super().__init__()
        if temperature <= 1e-6:
            raise ValueError(f"temperature must be positive and not ~0 (got {temperature}); it divides the logits")
        self.temperature = temperature

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        if z_a.shape != z_b.shape or z_a.dim() != 2:
            raise ValueError(f"z_a and z_b must both be (batch, dim), got {tuple(z_a.shape)} and {tuple(z_b.shape)}")
        batch = z_a.shape[0]
        z_a = F.normalize(z_a.float(), dim=1)
        z_b = F.normalize(z_b.float(), dim=1)
        all_a, all_b = gather_with_grad(z_a), gather_with_grad(z_b)
        global_batch = all_a.shape[0]
        rank = torch.distributed.get_rank() if is_distributed() else 0
        keys = torch.cat([all_a, all_b], dim=0)  # (2N, D): all a-views, then all b-views
        queries = torch.cat([z_a, z_b], dim=0)  # (2B, D)
        logits = queries @ keys.T / self.temperature  # (2B, 2N)

        local = torch.arange(batch, device=z_a.device) + rank * batch  # global index of each local sample
        self_index = torch.cat([local, local + global_batch])
        positive_index = torch.cat([local + global_batch, local])
        logits[torch.arange(2 * batch, device=z_a.device), self_index] = float("-inf")
        return F.cross_entropy(logits, positive_index)

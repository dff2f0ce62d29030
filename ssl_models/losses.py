"""The self-supervised losses, each with its paper, arguments and shapes: NT-Xent (SimCLR), InfoNCE against a queue
(MoCo), the normalised MSE (BYOL, and distillation), DINO's cross-entropy between teacher and student distributions.

The rule: every loss lives here, as a function or an ``nn.Module`` of tensors only; a method module
(``ssl_models.methods``) holds its heads, its step, its state and its settings, and calls its loss from here."""

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


def info_nce_with_queue(
    queries: torch.Tensor, keys: torch.Tensor, queue: torch.Tensor, temperature: float
) -> torch.Tensor:
    """MoCo's InfoNCE (arXiv 1911.05722, eq. 1): row i of ``keys`` is the positive of row i of ``queries``,
    every row of ``queue`` a negative.

    Shapes: queries (B, D), keys (B, D), queue (K, D), all L2-normalised; returns the scalar mean over B.
    """
    positives = (queries * keys).sum(dim=1, keepdim=True)  # (B, 1)
    negatives = queries @ queue.T  # (B, K)
    logits = torch.cat([positives, negatives], dim=1) / temperature  # (B, 1 + K); the positive is class 0
    return F.cross_entropy(logits, torch.zeros(queries.shape[0], dtype=torch.long, device=queries.device))


def normalized_mse(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BYOL's loss (arXiv 2006.07733, eq. 2): ||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z), the mean over rows.

    Shapes: predictions (B, D), targets (B, D) (the target is not back-propagated through); returns a scalar in [0, 4].
    """
    return (2.0 - 2.0 * F.cosine_similarity(predictions.float(), targets.float().detach(), dim=1)).mean()


def dino_loss(
    student: list[torch.Tensor],
    teacher: list[torch.Tensor],
    center: torch.Tensor,
    teacher_temperature: float,
    student_temperature: float = 0.1,
) -> torch.Tensor:
    """DINO's loss (arXiv 2104.14294, eq. 3 and Algorithm 1): the mean over pairs (teacher view i, student view v != i)
    of the cross-entropy H(Pt_i, Ps_v), Pt = softmax((t - center) / teacher_temperature),
    Ps = softmax(s / student_temperature) (0.1 in the paper).

    Shapes: student: one (B, K) tensor per view (the global views first); teacher: one (B, K) per global view,
    in the same order; center (1, K). Returns a scalar >= 0.
    """
    targets = [F.softmax((t - center) / teacher_temperature, dim=1) for t in teacher]
    log_predictions = [F.log_softmax(s / student_temperature, dim=1) for s in student]
    terms = [
        -(target * log_predictions[v]).sum(dim=1).mean()
        for i, target in enumerate(targets)
        for v in range(len(student))
        if v != i
    ]
    return torch.stack(terms).mean()

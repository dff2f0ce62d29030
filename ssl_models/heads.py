"""Heads on top of an encoder: one generic MLP head (lightly's ``ProjectionHead(blocks)``), each method's
head a short subclass quoting its paper, and the classifier used for fine-tuning."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class ProjectionHead(nn.Module):
    """A stack of blocks Linear -> optional BatchNorm1d -> optional ReLU. (B, blocks[0].in) -> (B, blocks[-1].out).

    Args:
        blocks: (in_dim, out_dim, batch_norm, relu) per block. A Linear followed by BatchNorm has no bias
            (the BatchNorm's shift replaces it).
    """

    def __init__(self, blocks: Sequence[tuple[int, int, bool, bool]]):
        super().__init__()
        if not blocks:
            raise ValueError("a projection head needs at least one (in_dim, out_dim, batch_norm, relu) block")
        layers: list[nn.Module] = []
        for in_dim, out_dim, batch_norm, relu in blocks:
            layers.append(nn.Linear(in_dim, out_dim, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(out_dim))
            if relu:
                layers.append(nn.ReLU(inplace=True))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


class MLPHead(ProjectionHead):
    """The two-layer head g(h) = W2 ReLU(BN(W1 h)). (B, in_dim) -> (B, out_dim).

    SimCLR's projection head (Chen et al., 2020, arXiv 2002.05709, §2.1), MoCo v2's (Chen et al., 2020, arXiv
    2003.04297, §2), BYOL's projector and predictor (Grill et al., 2020, arXiv 2006.07733, §3.3; 4096 hidden and 256
    out there) and the distillation projector: the same block, narrower here for the encoders a CPU trains.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 256, out_dim: int = 64):
        super().__init__([(in_dim, hidden_dim, True, True), (hidden_dim, out_dim, False, False)])


class Classifier(nn.Module):
    """Encoder followed by a linear layer. (B, C, H, W) -> logits (B, num_classes)."""

    def __init__(self, encoder: nn.Module, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.linear = nn.Linear(encoder.feature_dim, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.linear(self.encoder(images))

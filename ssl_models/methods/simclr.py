"""SimCLR (Chen et al., 2020, "A Simple Framework for Contrastive Learning of Visual Representations",
arXiv 2002.05709): encoder + MLP projection head, NT-Xent over the 2B views of a batch; every other view
in the (global) batch is a negative, so it wants large batches."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ssl_models.heads import MLPHead
from ssl_models.losses import NTXentLoss
from ssl_models.methods.base import SSLMethod, full_precision


@dataclass(frozen=True)
class SimCLRSettings:
    """SimCLR's settings: ``PretrainConfig.method_settings`` when ``method`` is "simclr".

    temperature: NT-Xent's tau (> 1e-6).
    """

    temperature: float = 0.2


class SimCLR(SSLMethod):
    """encoder -> MLPHead -> NT-Xent.

    Args:
        encoder: module with ``feature_dim``; (B, C, H, W) -> (B, feature_dim).
        projection_dim: D, the projection's width. temperature: NT-Xent's tau.

    Shapes:
        views_a, views_b: (B, C, H, W); both go through the network as one (2B, C, H, W) batch, so
        BatchNorm sees both views. Returns a scalar.
    """

    label = "SimCLR"
    settings_type = SimCLRSettings

    @classmethod
    def from_config(cls, encoder: nn.Module, settings: SimCLRSettings, config) -> SimCLR:
        return cls(encoder, projection_dim=config.projection_dim, temperature=settings.temperature)

    def __init__(self, encoder: nn.Module, *, projection_dim: int = 64, temperature: float = 0.2):
        super().__init__()
        self.encoder = encoder
        self.projection = MLPHead(encoder.feature_dim, out_dim=projection_dim)
        self.loss_fn = NTXentLoss(temperature)

    def forward(self, views_a: torch.Tensor, views_b: torch.Tensor) -> torch.Tensor:
        projections = self.projection(self.encoder(torch.cat([views_a, views_b])))  # (2B, D)
        z_a, z_b = projections.float().chunk(2)
        with full_precision(z_a):
            return self.loss_fn(z_a, z_b)

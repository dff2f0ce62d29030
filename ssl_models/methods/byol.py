"""BYOL (Grill et al., 2020, "Bootstrap Your Own Latent", arXiv 2006.07733): an online network (encoder,
projector, predictor) regresses the projection of the other view made by a target network, an EMA of the
online encoder and projector. No negatives, so it does not depend on the batch size for them.

As the paper: the loss is symmetrised, the target's momentum rises from ``momentum`` to 1 on a cosine over
the run (§3.2; 0.996 there, 0.99 by default here for short runs). Heads are narrower than the paper's
(4096 hidden, 256 out) to suit the small encoders a CPU trains.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ssl_models.heads import MLPHead
from ssl_models.losses import normalized_mse
from ssl_models.methods.base import SSLMethod, cosine_momentum, ema_update, frozen_copy, full_precision


@dataclass(frozen=True)
class BYOLSettings:
    """BYOL's settings: ``PretrainConfig.method_settings`` when ``method`` is "byol".

    momentum: the target EMA's starting momentum, in [0, 1), raised to 1 on a cosine over the run (0.996 in the
        paper; 0.99 for short runs).
    """

    momentum: float = 0.99


class BYOL(SSLMethod):
    """Online encoder -> projector -> predictor against the target encoder -> projector (EMA copies).

    Args:
        encoder: module with ``feature_dim``; (B, C, H, W) -> (B, feature_dim).
        projection_dim: D, the projector's and predictor's output. momentum: the target EMA's starting
            momentum, in [0, 1), raised to 1 by the end of the run.

    State (in ``state_dict()``): ``target_encoder``, ``target_projection``.

    Shapes: views_a, views_b (B, C, H, W) -> scalar: the sum of the two directions' loss, in [0, 8].
    """

    label = "BYOL"

    settings_type = BYOLSettings

    @classmethod
    def from_config(cls, encoder: nn.Module, settings: BYOLSettings, config) -> BYOL:
        return cls(encoder, projection_dim=config.projection_dim, momentum=settings.momentum)

    def __init__(self, encoder: nn.Module, *, projection_dim: int = 64, momentum: float = 0.99):
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"BYOL's momentum must be in [0, 1) (got {momentum}); 1 would never update the target")
        self.encoder = encoder
        self.projection = MLPHead(encoder.feature_dim, out_dim=projection_dim)
        self.prediction = MLPHead(projection_dim, out_dim=projection_dim)
        self.target_encoder, self.target_projection = frozen_copy(encoder), frozen_copy(self.projection)
        self.momentum = momentum

    def forward(self, views_a: torch.Tensor, views_b: torch.Tensor) -> torch.Tensor:
        views = torch.cat([views_a, views_b])
        predictions = self.prediction(self.projection(self.encoder(views)))  # (2B, D)
        with torch.no_grad():
            targets = self.target_projection(self.target_encoder(views))  # (2B, D)
        p_a, p_b = predictions.chunk(2)
        t_a, t_b = targets.chunk(2)
        with full_precision(p_a):
            return normalized_mse(p_a, t_b) + normalized_mse(p_b, t_a)

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """Move the target towards the online encoder and projector with the cosine-scheduled momentum."""
        momentum = cosine_momentum(self.momentum, progress)
        ema_update(self.target_encoder, self.encoder, momentum)
        ema_update(self.target_projection, self.projection, momentum)

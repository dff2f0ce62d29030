"""What every self-supervised method shares: the encoder it trains, one loss per batch of view pairs, and
the optional target networks it updates after each optimiser step (solo-learn's ``BaseMethod``, reduced
to the part that differs from method to method; the loop in ``ssl_models.pretraining`` owns the optimiser,
schedule, steps, data and checkpoints).

A method is an ``nn.Module``: its target networks are submodules and its extra state (MoCo's queue of
negatives) is registered buffers, so ``state_dict()`` (the ``"model"`` entry of a resume state) holds
all of it and a resumed run continues the same run.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from ssl_models.augment import AugmentConfig


@dataclass(frozen=True)
class NoSettings:
    """A method without settings of its own: it reads only PretrainConfig's shared fields."""


class SSLMethod(nn.Module):
    """Base of the methods in ``ssl_models.methods.METHODS``.

    Subclasses set ``self.encoder`` (module with ``feature_dim``; (B, C, H, W) -> (B, feature_dim)) and define
    ``forward(views_a, views_b) -> loss``: views_a, views_b (B, C, H, W) float, row i of each a view of one
    positive pair (two augmentations of one image, or of two images of one case: the pairing is the data's,
    ``ssl_models.micle``); returns a scalar loss to minimise.
    """

    encoder: nn.Module
    settings_type: type = NoSettings  # its frozen settings dataclass, in its module (PretrainConfig.method_settings)
    label: str = ""  # the name reports print ("SimCLR", "MoCo v2")
    needs_teacher: bool = False  # from_config takes a frozen ``teacher`` module (distillation)
    sync_batch_norm: bool = True  # under torchrun on GPUs, BatchNorm over the global batch (SyncBatchNorm), as SimCLR's
    local_crops: int = (
        0  # multi-crop (DINO): this many extra views in local_view(view), passed to forward after the pair
    )

    @classmethod
    def from_config(cls, encoder: nn.Module, settings, config) -> SSLMethod:
        """The method around ``encoder``: ``settings`` is its own ``settings_type`` instance (built from
        ``PretrainConfig.method_settings``), ``config`` the PretrainConfig for the shared fields (projection_dim,
        seed)."""
        raise NotImplementedError(f"{cls.__name__} must define from_config")

    def after_step(self, progress: float) -> None:
        """Called after every optimiser step; ``progress`` in [0, 1] is steps done / steps of the run. No-op by
        default."""

    def local_view(self, view: AugmentConfig) -> AugmentConfig:
        """The view distribution of the ``local_crops`` extra views, given the pair's ``view``."""
        return view

    def epoch_metrics(self) -> dict[str, float]:
        """Measures of the steps since the last call, joined to the epoch's metrics (DINO's collapse monitor). None by
        default."""
        return {}

    @classmethod
    def collapse_reason(cls, metrics: dict) -> str:
        """Why the epoch with ``metrics`` shows a collapsed representation, or "" (never, by default)."""
        return ""


def full_precision(tensor: torch.Tensor):
    """A context in which ``tensor``'s device runs without autocast: losses are computed in float32, as the
    loop's bf16 autocast (GPUs) covers only the networks."""
    return torch.autocast(device_type=tensor.device.type, enabled=False)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose parameters take no gradient: the start of a momentum (EMA) target network."""
    target = copy.deepcopy(module)
    for parameter in target.parameters():
        parameter.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, parameter by parameter: MoCo's key encoder
    (arXiv 1911.05722, eq. 2) and BYOL's target (arXiv 2006.07733, §3.1). Buffers (BatchNorm's running
    statistics) are the target's own, from its own forward passes, as in both papers' code."""
    for target_parameter, online_parameter in zip(target.parameters(), online.parameters(), strict=True):
        target_parameter.lerp_(online_parameter.detach(), 1.0 - momentum)


def cosine_momentum(base: float, progress: float) -> float:
    """BYOL's schedule: 1 - (1 - base) (cos(pi progress) + 1) / 2, from ``base`` at the start to 1 at the end
    (arXiv 2006.07733, §3.2). progress in [0, 1]."""
    return 1.0 - (1.0 - base) * (math.cos(math.pi * min(max(progress, 0.0), 1.0)) + 1.0) / 2.0

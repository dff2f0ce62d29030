"""Distillation from a teacher the user supplies (a frozen pretrained backbone, e.g. a DINOv2 ViT they downloaded)
into the backbone they deploy, as LightlyTrain's default method does: feature distillation without labels
(Hinton et al., 2015, arXiv 1503.02531, for the idea; RKD-style feature regression as in "Knowledge
distillation: A good teacher is patient and consistent", Beyer et al., 2022, arXiv 2106.05237, for consistent
views). The student's features, through a small projector to the teacher's width, regress the teacher's
features of the other view, compared by cosine (BYOL's normalised MSE, arXiv 2006.07733, eq. 2).

The teacher never trains: its parameters take no gradient and it stays in eval mode (its BatchNorm statistics
and dropout are the pretrained ones). Cross-view targets make the student invariant to the augmentations and,
with MICLe's case pairs, to the two images of one case. The teacher is any module with ``feature_dim``
(``ssl_models.encoders.build_encoder`` with the user's weights: ``sslflow/tracking/initial_weights.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ssl_models.heads import MLPHead
from ssl_models.losses import normalized_mse
from ssl_models.methods.base import SSLMethod, frozen_copy, full_precision


@dataclass(frozen=True)
class DistillSettings:
    """Distillation's settings: ``PretrainConfig.method_settings`` when ``method`` is "distill"; both are required.

    teacher: the frozen teacher's backbone, a name as encoder_name takes ("timm:vit_small_patch14_dinov2").
    teacher_weights: its weights, a local file, s3:// or MLflow URI, loaded and checked as initial_weights.
    """

    teacher: str = ""
    teacher_weights: str = ""

    def __post_init__(self) -> None:
        if not (self.teacher and self.teacher_weights):
            raise ValueError(
                "PretrainConfig.method='distill' distils a teacher: set teacher (a backbone name) and teacher_weights"
                " (where its weights are) in PretrainConfig.method_settings"
            )


class Distillation(SSLMethod):
    """Student encoder -> projector (to the teacher's width) against the frozen teacher's features of the other view.

    Args:
        encoder: the student, module with ``feature_dim``; (B, C, H, W) -> (B, feature_dim).
        teacher: the frozen teacher, module with ``feature_dim``; (B, C, H, W) -> (B, teacher.feature_dim), on the
            same images (same channels and side) as the student.

    State (in ``state_dict()``): ``teacher`` (unchanged by training).

    Shapes: views_a, views_b (B, C, S, S) -> scalar: the sum of both directions' loss, in [0, 8].
    """

    label = "distillation"
    needs_teacher = True
    settings_type = DistillSettings

    @classmethod
    def from_config(
        cls, encoder: nn.Module, settings: DistillSettings, config, teacher: nn.Module | None = None
    ) -> Distillation:
        if teacher is None:
            raise ValueError(
                "method 'distill' needs a teacher module: build it from method_settings' teacher and teacher_weights"
                " (tasks/pretrain.py does)"
            )
        return cls(encoder, teacher)

    def __init__(self, encoder: nn.Module, teacher: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.teacher = frozen_copy(teacher).eval()
        self.projection = MLPHead(
            encoder.feature_dim, hidden_dim=max(256, teacher.feature_dim), out_dim=teacher.feature_dim
        )

    def train(self, mode: bool = True) -> Distillation:
        """As nn.Module.train, but the teacher stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, views_a: torch.Tensor, views_b: torch.Tensor) -> torch.Tensor:
        views = torch.cat([views_a, views_b])
        students = self.projection(self.encoder(views))  # (2B, D_teacher)
        with torch.no_grad():
            targets = self.teacher(views)  # (2B, D_teacher)
        s_a, s_b = students.chunk(2)
        t_a, t_b = targets.chunk(2)
        with full_precision(s_a):
            return normalized_mse(s_a, t_b) + normalized_mse(s_b, t_a)

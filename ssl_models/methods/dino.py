"""DINO (Caron et al., 2021, "Emerging Properties in Self-Supervised Vision Transformers", arXiv 2104.14294):
self-distillation without labels. A student (encoder + DINO head) matches, by cross-entropy, the output of a
teacher (an EMA of the student) on other views of the same image; the teacher's output is centred (a running
mean of its outputs subtracted: avoids one dimension dominating) and sharpened (a low temperature: avoids the
uniform output), the two together keep it from collapsing (§3.1, Fig. 7).

Multi-crop (§3.1): the two global views go through teacher and student, ``local_crops`` smaller local views
(``LOCAL_SCALE`` of the image, at ``LOCAL_SIDE_SHARE`` of the global side) through the student only; the loss
averages every (teacher global view, other student view) pair. The global views are the loop's pair, so with
MICLe's case pairs (ssl_models.micle) they are two images of one case, and the local views are drawn from both.

As the paper: student temperature 0.1, teacher temperature warmed up linearly from
``teacher_warmup_temperature`` to ``teacher_temperature`` over the first 30% of the run, centre momentum 0.9,
teacher momentum rising from ``momentum`` to 1 on a cosine, the last layer weight-normalised with its norm
fixed. Smaller than the paper's for the encoders a CPU trains: ``prototypes`` (K) 1024 instead of 65,536,
hidden width 512 instead of 2048. Under DDP the centre is the mean over every rank's teacher outputs.

Collapse monitor (the paper's Fig. 7 measures): per epoch, the mean entropy of the teacher's per-image
distribution (uniform collapse: -> log K) and the KL divergence from uniform of the batch's mean teacher
distribution (one dimension for every image: -> log K); ``collapse_reason`` turns them into a verdict.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from ssl_models.augment import AugmentConfig
from ssl_models.distributed import gather_with_grad
from ssl_models.losses import dino_loss
from ssl_models.methods.base import SSLMethod, cosine_momentum, ema_update, frozen_copy, full_precision

STUDENT_TEMPERATURE = 0.1
CENTER_MOMENTUM = 0.9
TEACHER_WARMUP_SHARE = 0.3  # of the run's steps (30 of 100 epochs in the paper)
LOCAL_SCALE = (0.05, 0.4)  # the paper's local crops: 5-40% of the image
LOCAL_SIDE_SHARE = 96 / 224  # local crops at 96 px for 224 px global ones
UNIFORM_COLLAPSE_SHARE = 0.95  # teacher entropy above this share of log K: every image gets the uniform distribution
ONE_DIMENSION_SHARE = (
    0.1  # entropy of the batch's mean teacher distribution below this share of its maximum: one dimension wins
)


@dataclass(frozen=True)
class DINOSettings:
    """DINO's settings: ``PretrainConfig.method_settings`` when ``method`` is "dino".

    prototypes: K, the width of the output distribution (65,536 in the paper; 1024 for small encoders).
    teacher_temperature, teacher_warmup_temperature: the teacher's temperature after and at the start of its linear
        warm-up over the first 30% of the run (0.07 and 0.04 as the paper).
    momentum: the teacher EMA's starting momentum, in [0, 1), raised to 1 on a cosine over the run.
    local_crops: local views per pair (multi-crop; 0: the two global views only).
    """

    prototypes: int = 1024
    teacher_temperature: float = 0.07
    teacher_warmup_temperature: float = 0.04
    momentum: float = 0.99
    local_crops: int = 2


class DINOHead(nn.Module):
    """DINO's projection head (arXiv 2104.14294, §3.1 and appendix): a 3-layer MLP (GELU) to a bottleneck, L2
    normalisation, then a weight-normalised linear layer without bias whose norm is fixed to 1. (B, in_dim) -> (B,
    K)."""

    def __init__(self, in_dim: int, hidden_dim: int = 512, bottleneck_dim: int = 128, prototypes: int = 1024):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        self.prototypes = nn.Parameter(
            torch.randn(prototypes, bottleneck_dim) * 0.02
        )  # each row a direction; used normalised

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(features), dim=1) @ F.normalize(self.prototypes, dim=1).T


def teacher_statistics(
    teacher: torch.Tensor, center: torch.Tensor, teacher_temperature: float
) -> tuple[float, float, float]:
    """(mean per-image entropy, KL(mean distribution || uniform), entropy of the mean distribution / its maximum)
    of the teacher's distributions; teacher (N, K) raw outputs, the maximum log(min(N, K)) (N outputs fill at most N
    dimensions). Entropies in nats."""
    probabilities = F.softmax((teacher.float() - center) / teacher_temperature, dim=1)
    entropy = -(probabilities * probabilities.clamp_min(1e-12).log()).sum(dim=1).mean()
    mean = probabilities.mean(dim=0)
    mean_entropy = -(mean * mean.clamp_min(1e-12).log()).sum()
    most = math.log(min(teacher.shape[0], teacher.shape[1]))
    return (
        float(entropy),
        math.log(teacher.shape[1]) - float(mean_entropy),
        min(1.0, float(mean_entropy) / most) if most > 0 else 0.0,
    )


class DINO(SSLMethod):
    """Student (encoder + DINOHead) and teacher (EMA copies), a centre, multi-crop.

    Args:
        encoder: module with ``feature_dim``; (B, C, H, W) -> (B, feature_dim) at the global and local sides.
        prototypes: K, the output dimensions. teacher_temperature, teacher_warmup_temperature: the teacher's
            temperature after and at the start of its warm-up (> 1e-6). momentum: the teacher EMA's starting
            momentum, in [0, 1), raised to 1 by the end. local_crops: local views per image pair (>= 0).

    State (in ``state_dict()``): ``teacher_encoder``, ``teacher_head``, ``center`` (1, K).

    Shapes: forward(views_a, views_b, *local_views): two (B, C, S, S) global views, ``local_crops`` (B, C, s, s) local
    ones -> scalar loss.
    """

    label = "DINO"

    settings_type = DINOSettings

    @classmethod
    def from_config(cls, encoder: nn.Module, settings: DINOSettings, config) -> DINO:
        return cls(encoder, **asdict(settings))

    def __init__(
        self,
        encoder: nn.Module,
        *,
        prototypes: int = 1024,
        teacher_temperature: float = 0.07,
        teacher_warmup_temperature: float = 0.04,
        momentum: float = 0.99,
        local_crops: int = 2,
    ):
        super().__init__()
        if min(teacher_temperature, teacher_warmup_temperature) <= 1e-6:
            raise ValueError(
                f"DINO's teacher temperatures must be positive and not ~0 (got {teacher_warmup_temperature} -> "
                f"{teacher_temperature})"
            )
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"DINO's momentum must be in [0, 1) (got {momentum}); 1 would never update the teacher")
        if local_crops < 0 or prototypes < 2:
            raise ValueError(f"DINO needs local_crops >= 0 and prototypes >= 2 (got {local_crops} and {prototypes})")
        self.encoder, self.head = encoder, DINOHead(encoder.feature_dim, prototypes=prototypes)
        self.teacher_encoder, self.teacher_head = frozen_copy(encoder), frozen_copy(self.head)
        self.register_buffer("center", torch.zeros(1, prototypes))
        self.temperatures, self.momentum, self.local_crops = (
            (teacher_warmup_temperature, teacher_temperature),
            momentum,
            local_crops,
        )
        self.progress = 0.0
        self._teacher_outputs: torch.Tensor | None = None
        self._statistics: list[tuple[float, float, float]] = []

    def local_view(self, view: AugmentConfig) -> AugmentConfig:
        """The local crops' view: ``view`` with the paper's small crop scale, at LOCAL_SIDE_SHARE of its side."""
        return replace(view, output_size=max(8, round(view.output_size * LOCAL_SIDE_SHARE)), crop_scale=LOCAL_SCALE)

    def teacher_temperature(self) -> float:
        """The teacher's temperature at ``self.progress``: linear warm-up over TEACHER_WARMUP_SHARE of the run, then
        constant."""
        start, end = self.temperatures
        return start + (end - start) * min(1.0, self.progress / TEACHER_WARMUP_SHARE)

    def forward(self, views_a: torch.Tensor, views_b: torch.Tensor, *local_views: torch.Tensor) -> torch.Tensor:
        global_views = torch.cat([views_a, views_b])
        student = list(self.head(self.encoder(global_views)).chunk(2))
        if local_views:
            student += list(self.head(self.encoder(torch.cat(local_views))).chunk(len(local_views)))
        with torch.no_grad():
            teacher = self.teacher_head(self.teacher_encoder(global_views)).float()  # (2B, K)
        temperature = self.teacher_temperature()
        with full_precision(teacher):
            student_views = [s.float() for s in student]
            loss = dino_loss(student_views, list(teacher.chunk(2)), self.center, temperature, STUDENT_TEMPERATURE)
        self._teacher_outputs = teacher
        self._statistics.append(teacher_statistics(teacher, self.center, temperature))
        return loss

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """Move the teacher towards the student (cosine-scheduled momentum) and the centre towards the mean teacher
        output of this step's global batch (every rank's)."""
        self.progress = progress
        momentum = cosine_momentum(self.momentum, progress)
        ema_update(self.teacher_encoder, self.encoder, momentum)
        ema_update(self.teacher_head, self.head, momentum)
        if self._teacher_outputs is not None:
            batch_mean = gather_with_grad(self._teacher_outputs).mean(dim=0, keepdim=True)
            self.center.mul_(CENTER_MOMENTUM).add_(batch_mean.to(self.center.dtype), alpha=1.0 - CENTER_MOMENTUM)
            self._teacher_outputs = None

    def epoch_metrics(self) -> dict[str, float]:
        """The collapse monitor of the steps since the last call (means over steps): teacher_entropy, kl_to_uniform,
        mean_entropy_share (of its maximum), and log_prototypes (log K, the ceiling of the first two)."""
        if not self._statistics:
            return {}
        entropy, kl, share = (sum(values) / len(values) for values in zip(*self._statistics, strict=True))
        self._statistics = []
        return {
            "teacher_entropy": entropy,
            "kl_to_uniform": kl,
            "mean_entropy_share": share,
            "log_prototypes": math.log(self.center.shape[1]),
        }

    @classmethod
    def collapse_reason(cls, metrics: dict) -> str:
        """ "" for a healthy epoch; else why its teacher collapsed (arXiv 2104.14294, Fig. 7): uniform (teacher entropy
        above UNIFORM_COLLAPSE_SHARE of log K) or one dimension (the batch's mean distribution below ONE_DIMENSION_SHARE
        of its maximum entropy)."""
        if "teacher_entropy" not in metrics:
            return ""
        entropy, kl, ceiling = metrics["teacher_entropy"], metrics["kl_to_uniform"], metrics["log_prototypes"]
        if entropy > UNIFORM_COLLAPSE_SHARE * ceiling:
            return (
                f"DINO collapsed to the uniform distribution: teacher entropy {entropy:.3f} of at most {ceiling:.3f} "
                "nats (sharpen more: a lower teacher_temperature)"
            )
        if metrics["mean_entropy_share"] < ONE_DIMENSION_SHARE:
            return (
                f"DINO collapsed to one dimension: KL of the mean teacher output to uniform {kl:.3f} of at most "
                f"{ceiling:.3f} nats (a higher teacher_temperature)"
            )
        return ""

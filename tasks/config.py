"""Frozen configuration dataclasses of the tasks that ssl_models does not already define.

Defaults run the whole pipeline on a 2-core laptop; cluster-scale numbers live in launch plans.
PretrainConfig, FinetuneConfig and AugmentConfig come from ssl_models.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class IngestConfig:
    """How a source becomes a dataset.

    image_size, channels: every image is converted to (channels, image_size, image_size) uint8.
    train_fraction, val_fraction: case-grouped split by a hash of case_id; the rest is test.
    all_test: the whole source is an evaluation set (a shift set such as optdigits).
    max_images: keep a deterministic subset of this many images (0 keeps all).
    proxy_cases: when the source has no case ids, group images into PROXY cases by pixel
        neighbours (ssl_models.proxy_cases) instead of one case per image.
    """

    image_size: int = 28
    channels: int = 1
    train_fraction: float = 0.7
    val_fraction: float = 0.1
    all_test: bool = False
    max_images: int = 0
    proxy_cases: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"IngestConfig.channels must be 1 or 3, got {self.channels}")
        if not (0 <= self.train_fraction and 0 <= self.val_fraction and self.train_fraction + self.val_fraction <= 1):
            raise ValueError(
                f"IngestConfig: train_fraction={self.train_fraction} and val_fraction={self.val_fraction} must be >= 0 and sum to <= 1"
            )


@dataclass(frozen=True)
class ValidationConfig:
    """What validate requires of a dataset.

    require_labels: every row needs a label (evaluation sets); otherwise labels are optional.
    """

    min_image_side: int = 8
    max_image_side: int = 8192
    require_labels: bool = False


@dataclass(frozen=True)
class RegistryConfig:
    """MLflow model registry: the model name, and how much better a challenger must be to take champion."""

    model_name: str = "sslflow"
    min_improvement: float = 0.0

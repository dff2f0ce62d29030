"""Encoder and classifier checkpoints on disk: torch state dicts, saved and read back with ``weights_only=True``."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

from ssl_models.encoders import build_encoder
from ssl_models.heads import Classifier
from sslflow.files import file_sha256


def load_encoder(path: Path | str, encoder_name: str, in_channels: int, image_size: int) -> nn.Module:
    """An ``encoder_name`` encoder for (in_channels, image_size, image_size) images with the weights at ``path``."""
    encoder = build_encoder(encoder_name, in_channels, image_size)
    encoder.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return encoder


def initial_encoder(
    path: Path | str | None, encoder_name: str, in_channels: int, image_size: int, *, seed: int
) -> nn.Module:
    """Where training starts: the weights at ``path``, or (path None) random weights drawn from ``seed``.

    Seeded here, not by whatever ran before in the process: the same inputs and seed give the same weights.
    """
    if path is None:
        return build_encoder(encoder_name, in_channels, image_size, seed=seed)
    return load_encoder(path, encoder_name, in_channels, image_size)


def load_classifier(
    path: Path | str, encoder_name: str, in_channels: int, image_size: int, num_classes: int
) -> Classifier:
    """The Classifier (encoder + linear layer) at ``path``, in eval mode."""
    classifier = Classifier(build_encoder(encoder_name, in_channels, image_size), num_classes)
    classifier.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return classifier.eval()


def save_state_dict(module: nn.Module, directory: Path, prefix: str, file_name: str) -> tuple[Path, str]:
    """Save ``module``'s state dict as ``file_name`` in a new folder ``prefix``-* inside ``directory``;
    returns (path, content sha256).

    ``directory`` is the caller's to clean up (a Flyte task passes its execution's working directory);
    the new folder keeps ``file_name`` unchanged and two saves apart.
    """
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=directory)) / file_name
    torch.save(module.state_dict(), path)
    return path, file_sha256(path)

"""Evaluation: class probabilities and accuracy of a classifier on a labelled image set."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ssl_models.augment import AugmentConfig, normalise
from ssl_models.train import _autocast, pick_device


@torch.no_grad()
def predict_probabilities(model: nn.Module, images: torch.Tensor, view: AugmentConfig, batch_size: int = 512) -> np.ndarray:
    """images: (N, C, H, W) uint8 -> (N, num_classes) float32 softmax probabilities."""
    device = pick_device()
    model = model.to(device).eval()
    outputs = []
    for start in range(0, images.shape[0], batch_size):
        batch = normalise(images[start : start + batch_size].to(device), view)
        with _autocast(device):
            logits = model(batch)
        outputs.append(torch.softmax(logits.float(), dim=1).cpu())
    return torch.cat(outputs).numpy()


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose arg-max equals the label. probabilities (N, K), labels (N,)."""
    if len(labels) == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return float((probabilities.argmax(axis=1) == labels).mean())

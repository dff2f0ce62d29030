"""Evaluation: class probabilities and accuracy of a classifier on a labelled image set."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ssl_models.augment import AugmentConfig
from ssl_models.device import apply_in_batches


def predict_probabilities(model: nn.Module, images: torch.Tensor, view: AugmentConfig, batch_size: int = 512) -> np.ndarray:
    """images: (N, C, H, W) uint8 -> (N, num_classes) float32 softmax probabilities."""
    return torch.softmax(apply_in_batches(model, images, view, batch_size), dim=1).cpu().numpy()


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose arg-max equals the label. probabilities (N, K), labels (N,)."""
    if len(labels) == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return float((probabilities.argmax(axis=1) == labels).mean())


def extract_features(encoder: nn.Module, images: torch.Tensor, view: AugmentConfig, batch_size: int = 512) -> torch.Tensor:
    """images: (N, C, H, W) uint8 -> (N, feature_dim) float32 L2-normalised encoder features, on the host."""
    return torch.nn.functional.normalize(apply_in_batches(encoder, images, view, batch_size), dim=1).cpu()


def knn_accuracy(
    bank_features: torch.Tensor, bank_labels: torch.Tensor, query_features: torch.Tensor, query_labels: torch.Tensor,
    k: int = 200, temperature: float = 0.1,
) -> float:  # fmt: skip
    """Weighted kNN classifier on cosine similarity, as in lightly's benchmarks (Wu et al. 2018, arXiv 1805.01978).

    bank_features (M, D) and query_features (Q, D) L2-normalised; labels (M,), (Q,) int64.
    Each of the k nearest bank items votes for its class with weight exp(similarity / temperature).
    """
    num_classes = int(max(bank_labels.max(), query_labels.max())) + 1
    k = min(k, bank_features.shape[0])
    correct = 0
    for start in range(0, query_features.shape[0], 1024):
        similarity = query_features[start : start + 1024] @ bank_features.T  # (q, M)
        weights, index = similarity.topk(k, dim=1)
        votes = torch.zeros(similarity.shape[0], num_classes)
        votes.scatter_add_(1, bank_labels[index], (weights / temperature).exp())
        correct += int((votes.argmax(1) == query_labels[start : start + 1024]).sum())
    return correct / query_features.shape[0]

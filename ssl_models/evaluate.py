"""Evaluation: class probabilities and accuracy of a classifier on a labelled image set; the kNN probe of an
encoder's features (as an evaluation and as a per-epoch monitor of pretraining)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ssl_models.augment import AugmentConfig
from ssl_models.device import apply_in_batches


def predict_probabilities(
    model: nn.Module, images: torch.Tensor, view: AugmentConfig, batch_size: int = 512
) -> np.ndarray:
    """images: (N, C, H, W) uint8 -> (N, num_classes) float32 softmax probabilities."""
    return torch.softmax(apply_in_batches(model, images, view, batch_size), dim=1).cpu().numpy()


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose arg-max equals the label. probabilities (N, K), labels (N,)."""
    if len(labels) == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return float((probabilities.argmax(axis=1) == labels).mean())


def extract_features(
    encoder: nn.Module, images: torch.Tensor, view: AugmentConfig, batch_size: int = 512
) -> torch.Tensor:
    """images: (N, C, H, W) uint8 -> (N, feature_dim) float32 L2-normalised encoder features, on the host."""
    return torch.nn.functional.normalize(apply_in_batches(encoder, images, view, batch_size), dim=1).cpu()


def knn_accuracy(
    bank_features: torch.Tensor,
    bank_labels: torch.Tensor,
    query_features: torch.Tensor,
    query_labels: torch.Tensor,
    k: int = 200,
    temperature: float = 0.1,
) -> float:
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


@dataclass(frozen=True)
class KnnMonitor:
    """kNN accuracy of an encoder's features during pretraining: labelled ``bank`` images as the memory bank,
    labelled ``query`` images (the validation split) classified by their k nearest bank features.

    The protocol lightly and solo-learn report (weighted kNN on L2-normalised features, k=200, temperature
    0.1; InstDisc, arXiv 1805.01978). It reads labels only to measure; pretraining never trains on them.

    Shapes: bank_images (N, C, H, W) uint8, bank_labels (N,) int64; query_images (M, C, H, W) uint8,
    query_labels (M,) int64. ``view`` gives the normalisation (its mean and std), no augmentation.
    """

    bank_images: torch.Tensor
    bank_labels: torch.Tensor
    query_images: torch.Tensor
    query_labels: torch.Tensor
    view: AugmentConfig
    k: int = 200
    temperature: float = 0.1

    def __post_init__(self) -> None:
        if len(self.bank_labels) != self.bank_images.shape[0] or len(self.query_labels) != self.query_images.shape[0]:
            raise ValueError("KnnMonitor needs one label per bank image and per query image")
        if len(self.bank_labels) == 0 or len(self.query_labels) == 0:
            raise ValueError("KnnMonitor needs at least one bank image and one query image")

    def __call__(self, encoder: nn.Module) -> float:
        """The kNN accuracy of ``encoder`` (left in the training mode it had)."""
        was_training = encoder.training
        bank = extract_features(encoder, self.bank_images, self.view)
        queries = extract_features(encoder, self.query_images, self.view)
        encoder.train(was_training)
        return knn_accuracy(bank, self.bank_labels, queries, self.query_labels, k=self.k, temperature=self.temperature)

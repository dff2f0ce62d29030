"""Classification metrics from predicted probabilities: accuracy, macro-F1, one-vs-rest AUC, ECE, per-class accuracy.

All take probabilities (N, K) (rows sum to 1) and integer labels (N,) in [0, K).
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import f1_score, roc_auc_score


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE with equal-width confidence bins (Guo et al., 2017, arXiv 1706.04599):
    sum over bins of |accuracy - mean confidence| weighted by the bin's share of samples."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    error = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            error += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(error)


def one_vs_rest_auc(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Macro one-vs-rest ROC AUC over the classes present in ``labels``; NaN with fewer than two."""
    present = np.unique(labels)
    if len(present) < 2:
        return math.nan
    scores = probabilities[:, present]
    scores = scores / scores.sum(axis=1, keepdims=True).clip(min=1e-12)
    if len(present) == 2:
        return float(roc_auc_score(labels == present[1], scores[:, 1]))
    return float(roc_auc_score(labels, scores, multi_class="ovr", labels=present))


def per_class_accuracy(probabilities: np.ndarray, labels: np.ndarray) -> dict[int, float]:
    predictions = probabilities.argmax(axis=1)
    return {int(c): float((predictions[labels == c] == c).mean()) for c in np.unique(labels)}


def classification_metrics(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """{"accuracy", "macro_f1", "auc_ovr", "ece"} for one evaluation set."""
    if len(labels) == 0:
        raise ValueError("cannot compute metrics on an empty evaluation set")
    predictions = probabilities.argmax(axis=1)
    return {
        "accuracy": float((predictions == labels).mean()),
        "macro_f1": float(f1_score(labels, predictions, average="macro", labels=np.unique(labels), zero_division=0)),
        "auc_ovr": one_vs_rest_auc(probabilities, labels),
        "ece": expected_calibration_error(probabilities, labels),
    }

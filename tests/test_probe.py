"""The linear probe (ssl_models/probe.py): converged, standardised, regularisation chosen on validation."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from ssl_models.encoders import build_encoder
from ssl_models.heads import Classifier
from ssl_models.probe import fit_linear_probe


def _blobs(rng, n: int, classes: int = 3, dim: int = 8, spread: float = 0.3, scale: float = 1000.0):
    """Well-separated Gaussian blobs on a large, shifted scale (standardisation must handle it)."""
    centres = rng.normal(size=(classes, dim)) * 5
    labels = np.arange(n) % classes
    return (centres[labels] + spread * rng.normal(size=(n, dim))) * scale + 7.0, labels


def test_probe_converges_on_a_separable_toy():
    rng = np.random.default_rng(0)
    train, train_labels = _blobs(rng, 90)
    fit = fit_linear_probe(train, train_labels, train[:30], train_labels[:30], 3)
    assert fit.converged and fit.stop_reason in ("gradient", "no_progress") and fit.train_accuracy == 1.0
    logits = torch.as_tensor(train, dtype=torch.float32) @ fit.weight.T + fit.bias  # standardisation folded in
    assert (logits.argmax(1).numpy() == train_labels).all()


def test_regularisation_is_the_best_on_validation():
    rng = np.random.default_rng(1)
    features, labels = _blobs(rng, 300, classes=4, spread=6.0)  # overlapping: the L2 strength matters
    train, val = slice(0, 40), slice(40, 300)
    grid = (1e-4, 1e-2, 1.0, 100.0)
    fit = fit_linear_probe(features[train], labels[train], features[val], labels[val], 4, inverse_l2_grid=grid)
    mean, std = features[train].mean(0), features[train].std(0) + 1e-6
    by_hand = {}
    for c in grid:  # an independent fit per C, scored on the validation rows only
        model = LogisticRegression(C=c, max_iter=2000, tol=1e-6).fit((features[train] - mean) / std, labels[train])
        by_hand[c] = float((model.predict((features[val] - mean) / std) == labels[val]).mean())
    assert fit.val_accuracy_by_inverse_l2 == pytest.approx(by_hand)
    assert fit.inverse_l2 == max(by_hand, key=lambda c: (by_hand[c], -c))
    assert len(set(by_hand.values())) > 1  # the choice was not a tie over the whole grid


def test_two_classes_and_a_missing_class_give_a_full_weight_matrix():
    rng = np.random.default_rng(2)
    features, labels = _blobs(rng, 40, classes=2)
    fit = fit_linear_probe(features, labels, features, labels, 3)  # class 2 has no example
    assert fit.weight.shape == (3, 8) and fit.bias.shape == (3,)
    logits = torch.as_tensor(features, dtype=torch.float32) @ fit.weight.T + fit.bias
    assert (logits.argmax(1).numpy() == labels).all()


def test_pixels_is_a_linear_model_on_the_image():
    classifier = Classifier(build_encoder("pixels", 1, 4), 2)
    assert classifier.encoder.feature_dim == 16 and sum(p.numel() for p in classifier.encoder.parameters()) == 0
    assert classifier(torch.zeros(3, 1, 4, 4)).shape == (3, 2)


@pytest.mark.parametrize("budget,reason", [({"MAX_ITERATIONS": 2}, "max_iter"), ({"MAX_EVALUATIONS": 4}, "max_eval")])
def test_a_probe_stopped_by_a_budget_is_not_converged(monkeypatch, budget, reason):
    """Convergence is L-BFGS's own test (gradient or no progress), not "fewer than MAX_ITERATIONS iterations":
    a fit cut off by the evaluation budget stops early, and is still not converged."""
    import ssl_models.probe as probe

    for name, value in budget.items():
        monkeypatch.setattr(probe, name, value)
    features, labels = _blobs(np.random.default_rng(3), 300, classes=4, spread=6.0)
    fit = fit_linear_probe(features, labels, features, labels, 4, inverse_l2_grid=(100.0,))
    assert fit.stop_reason == reason and not fit.converged and fit.iterations < 1000

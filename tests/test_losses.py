import math

import pytest
import torch

from ssl_models.losses import NTXentLoss


def test_nt_xent_matches_hand_computed_value():
    # Two orthogonal samples, identical views, tau = 1. For every anchor the positive has similarity 1,
    # the two negatives 0: loss = -log(e / (e + 1 + 1)) = log(1 + 2/e).
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = NTXentLoss(temperature=1.0)(z, z.clone())
    assert loss.item() == pytest.approx(math.log(1 + 2 / math.e), abs=1e-6)


def test_nt_xent_matches_naive_loop():
    torch.manual_seed(1)
    z_a, z_b, tau = torch.randn(5, 8), torch.randn(5, 8), 0.3
    z = torch.nn.functional.normalize(torch.cat([z_a, z_b]), dim=1)
    total = 0.0
    for i in range(10):
        positive = (i + 5) % 10
        numerator = torch.exp(z[i] @ z[positive] / tau)
        denominator = sum(torch.exp(z[i] @ z[k] / tau) for k in range(10) if k != i)
        total += -torch.log(numerator / denominator)
    assert NTXentLoss(tau)(z_a, z_b).item() == pytest.approx(total.item() / 10, rel=1e-5)


def test_nt_xent_rejects_zero_temperature_and_bad_shapes():
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(temperature=0.0)
    with pytest.raises(ValueError, match="batch, dim"):
        NTXentLoss()(torch.randn(4, 3), torch.randn(5, 3))

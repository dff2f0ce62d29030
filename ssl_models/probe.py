"""The linear evaluation protocol: multinomial logistic regression on frozen, standardised features.

As in SimCLR's linear evaluation (Chen et al., 2020, arXiv 2002.05709, appendix B.5) and the
converged-probe protocol of Kolesnikov et al. (2019, arXiv 1901.09005): features are computed once,
standardised with the training features' mean and standard deviation, and a multinomial logistic
regression is fitted to convergence with full-batch L-BFGS (torch.optim.LBFGS; scikit-learn's lbfgs
took 80 s for raw pixels at 100% of the MNIST-5k labels on this 2-core machine), its L2
strength chosen on the validation split from a small grid, from the strongest L2 to the weakest, each
fit started from the previous one's solution. The fitted model is returned as one
linear layer on the raw features (the standardisation folded in), so it drops into ``Classifier``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_INVERSE_L2 = (1e-3, 1e-2, 1e-1, 1.0, 10.0)  # C = 1 / L2 strength, as scikit-learn's LogisticRegression
MAX_ITERATIONS = 1000
MAX_EVALUATIONS = 1250  # torch.optim.LBFGS's default max_eval, max_iter * 5 / 4: the line search spends evaluations too
TOLERANCE_GRAD, TOLERANCE_CHANGE = 1e-6, 1e-12
CONVERGED_REASONS = ("gradient", "no_progress")  # L-BFGS's own termination tests; "max_iter" and "max_eval" are budgets


@dataclass(frozen=True)
class ProbeFit:
    """A fitted probe. weight (K, D) and bias (K,) act on raw features: logits = features @ weight.T + bias."""

    weight: torch.Tensor
    bias: torch.Tensor
    inverse_l2: float  # the C chosen on validation
    converged: bool  # L-BFGS stopped on one of its own tests (stop_reason in CONVERGED_REASONS), not on a budget
    iterations: int
    # "gradient" (max |grad| <= TOLERANCE_GRAD), "no_progress" (loss or step change < TOLERANCE_CHANGE), "max_iter",
    # "max_eval"
    stop_reason: str
    train_loss: float  # mean cross-entropy on the training features (without the L2 term)
    train_accuracy: float
    val_accuracy_by_inverse_l2: dict[float, float] = field(default_factory=dict)


def _stop_reason(optimizer: torch.optim.LBFGS, closure, parameters: list[torch.Tensor]) -> str:
    """Which of L-BFGS's termination tests ended ``optimizer.step``: the gradient test (re-evaluated at the
    solution), the iteration or evaluation budget, else its no-progress test (torch.optim.LBFGS checks these)."""
    closure()
    if max(float(p.grad.abs().max()) for p in parameters) <= TOLERANCE_GRAD:
        return "gradient"
    state = optimizer.state[parameters[0]]
    if state["n_iter"] >= MAX_ITERATIONS:
        return "max_iter"
    if state["func_evals"] >= MAX_EVALUATIONS:
        return "max_eval"
    return "no_progress"


def _fit(
    features: torch.Tensor, labels: torch.Tensor, inverse_l2: float, weight: torch.Tensor, bias: torch.Tensor
) -> tuple[str, int]:
    """Minimise mean cross-entropy + ||weight||^2 / (2 C N) (scikit-learn's objective divided by C N) in place with
    full-batch L-BFGS and a strong-Wolfe line search. features (N, D), labels (N,). -> (stop reason, iterations)."""
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=MAX_ITERATIONS,
        max_eval=MAX_EVALUATIONS,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=TOLERANCE_GRAD,
        tolerance_change=TOLERANCE_CHANGE,
    )
    penalty = 1.0 / (2.0 * inverse_l2 * len(labels))

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(features @ weight.T + bias, labels) + penalty * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return _stop_reason(optimizer, closure, [weight, bias]), optimizer.state[weight]["n_iter"]


def fit_linear_probe(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    val_features: np.ndarray,
    val_labels: np.ndarray,
    num_classes: int,
    *,
    inverse_l2_grid: Sequence[float] = DEFAULT_INVERSE_L2,
) -> ProbeFit:
    """Fit on (train_features (N, D), train_labels (N,)); choose C on (val_features (M, D), val_labels (M,)).

    The highest validation accuracy wins; a tie goes to the stronger regularisation (smaller C).
    """
    if len(train_labels) == 0 or len(val_labels) == 0:
        raise ValueError(
            f"the probe needs training and validation examples; got {len(train_labels)} and {len(val_labels)}"
        )
    if len(np.unique(train_labels)) < 2:
        raise ValueError(
            "the probe needs at least two classes among the training labels; got only "
            f"{np.unique(train_labels).tolist()}"
        )
    mean, std = train_features.mean(axis=0), train_features.std(axis=0) + 1e-6
    train_z = torch.as_tensor((train_features - mean) / std, dtype=torch.float64)
    val_z = torch.as_tensor((val_features - mean) / std, dtype=torch.float64)
    targets = torch.as_tensor(train_labels, dtype=torch.long)
    weight = torch.zeros(num_classes, train_z.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    fits, val_accuracy = {}, {}
    for inverse_l2 in sorted(inverse_l2_grid):  # a warm-started path: each fit starts from the previous solution
        stop_reason, iterations = _fit(train_z, targets, inverse_l2, weight, bias)
        fits[inverse_l2] = (weight.detach().clone(), bias.detach().clone(), stop_reason, iterations)
        val_accuracy[inverse_l2] = float(
            ((val_z @ fits[inverse_l2][0].T + fits[inverse_l2][1]).argmax(1).numpy() == val_labels).mean()
        )
    chosen = max(val_accuracy, key=lambda c: (val_accuracy[c], -c))
    chosen_weight, chosen_bias, stop_reason, iterations = fits[chosen]
    logits = train_z @ chosen_weight.T + chosen_bias
    scale = chosen_weight / torch.as_tensor(std)  # fold the standardisation into the layer
    return ProbeFit(
        weight=scale.float(),
        bias=(chosen_bias - scale @ torch.as_tensor(mean)).float(),
        inverse_l2=chosen,
        converged=stop_reason in CONVERGED_REASONS,
        iterations=iterations,
        stop_reason=stop_reason,
        train_loss=float(F.cross_entropy(logits, targets)),
        train_accuracy=float((logits.argmax(1) == targets).float().mean()),
        val_accuracy_by_inverse_l2=val_accuracy,
    )

"""The scaffolding every training loop (``pretraining.py``, ``finetuning.py``, ``fixmatch.py``) shares; each loop
adds only its own step.

How many optimiser steps an epoch has, how many epochs a run has, the warm-up + cosine schedule over
them, one optimiser step, and the sample-weighted totals an epoch reports (as solo-learn's
``BaseMethod`` holds them once for every method).
"""

from __future__ import annotations

import math

import torch

from ssl_models.optim import warmup_cosine


def steps_per_epoch(num_samples: int, batch_size: int, world_size: int = 1) -> int:
    """Optimiser steps in one epoch: ceil(ceil(num_samples / world_size) / batch_size), at least 1.

    Under DDP each rank sees ceil(num_samples / world_size) samples (DistributedSampler's padding).
    """
    return max(1, math.ceil(math.ceil(num_samples / world_size) / batch_size))


def epoch_count(epochs: int, min_steps: int, steps_in_epoch: int) -> int:
    """``epochs``, raised until the run takes at least ``min_steps`` optimiser steps (small labelled sets)."""
    return max(epochs, math.ceil(min_steps / steps_in_epoch))


def epoch_schedule(
    optimizer: torch.optim.Optimizer, steps_in_epoch: int, epochs: int, warmup_epochs: int = 1
) -> torch.optim.lr_scheduler.LambdaLR:
    """warmup_cosine over a run of ``epochs`` epochs: ``warmup_epochs`` of linear warm-up, then cosine to 0."""
    return warmup_cosine(optimizer, warmup_epochs * steps_in_epoch, epochs * steps_in_epoch)


def optimizer_step(
    loss: torch.Tensor, optimizer: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LRScheduler | None = None
) -> None:
    """Back-propagate the scalar ``loss``, step ``optimizer``, then advance ``schedule`` (if any) by one step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if schedule is not None:
        schedule.step()


class EpochTotals:
    """Sample-weighted running loss (and accuracy, for classifiers) over one epoch.

    ``add(loss, batch_size)`` with a scalar batch-mean loss; ``add(loss, batch_size, logits, targets)``
    also counts correct arg-max predictions, logits (B, K) against targets (B,) int64.
    """

    def __init__(self) -> None:
        self.loss_sum, self.correct, self.seen = 0.0, 0, 0

    def add(
        self,
        loss: torch.Tensor,
        batch_size: int,
        logits: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
    ) -> None:
        self.loss_sum += loss.item() * batch_size
        self.seen += batch_size
        if logits is not None:
            self.correct += int((logits.argmax(1) == targets).sum())

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / max(self.seen, 1)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.seen, 1)


class BestOnValidation:
    """Early stopping on validation, keeping the best weights (the rule every fine-tuned arm and the self-training
    student train under, so that each stops where its own validation score peaks).

    ``update(step, accuracy, model, loss)`` after each evaluation: a better score than every earlier one makes
    ``model``'s weights (a copy of its state_dict) the best. The score is the accuracy, ties broken by the lower
    validation cross-entropy: a validation fold of a few labels (ten at 1% of MNIST's) ties often, and the loss still
    tells a model that is surer of its right answers. ``patience`` evaluations in a row without a better score return
    True (stop; patience 0: never). ``restore(model)`` loads the best weights back. The record: best_step,
    best_val_accuracy, best_val_loss, evaluations.
    """

    def __init__(self, patience: int) -> None:
        if patience < 0:
            raise ValueError(f"patience must be >= 0 evaluations, got {patience}")
        self.patience, self.best_step, self.evaluations, self._stale = patience, 0, 0, 0
        self.best_accuracy, self.best_loss = -math.inf, math.inf
        self._state: dict[str, torch.Tensor] | None = None

    def update(self, step: int, accuracy: float, model: torch.nn.Module, loss: float = math.inf) -> bool:
        self.evaluations += 1
        if (accuracy, -loss) > (self.best_accuracy, -self.best_loss):
            self.best_step, self.best_accuracy, self.best_loss, self._stale = step, accuracy, loss, 0
            self._state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
            return False
        self._stale += 1
        return 0 < self.patience <= self._stale

    def restore(self, model: torch.nn.Module) -> None:
        if self._state is not None:
            model.load_state_dict(self._state)

    def record(self) -> dict:
        return {
            "best_step": self.best_step,
            "best_val_accuracy": self.best_accuracy,
            "best_val_loss": self.best_loss,
            "evaluations": self.evaluations,
        }

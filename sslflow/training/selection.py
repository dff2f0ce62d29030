"""The one rule that chooses among trained models: the registered model, the self-training teachers, the best arm
of a label fraction. It decides on the label budget's validation fold only (sslflow.training.labelled_subset)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Candidate(Protocol):
    """What the choice reads of a trained model (tasks.shared.FinetunedModel has it)."""

    init: str
    label_fraction: float
    val_accuracy: float
    val_loss: float
    selectable: bool  # False: a student that did not beat its teacher on validation (never chosen)


def select_best(models: Sequence[Candidate]) -> Candidate:
    """The selectable model with the best validation score: the highest accuracy on the validation fold, ties broken
    by the lower validation cross-entropy, then by more labels; nothing favours an arm for being pretrained."""
    candidates = [model for model in models if model.selectable]
    if not candidates:
        raise ValueError(f"none of the {len(models)} models is selectable")
    return max(candidates, key=lambda model: (model.val_accuracy, -model.val_loss, model.label_fraction))

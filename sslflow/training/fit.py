"""What a fine-tuning run chose and where it stopped, read from its last record (ssl_models.finetuning.finetune): the
columns every result row carries so that a reader can see each arm was tuned alike and trained to its peak."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FitSummary:
    """chosen: the settings chosen on validation ("lr=0.001 wd=0.0001"; a linear probe's "C=0.1"). best_step: the step
    whose weights were kept (0 for a probe). final_train_accuracy: the returned model on its un-augmented training
    images. best_at_budget_end: the best step was the last of the budget (the budget was too short for this arm)."""

    chosen: str
    best_step: int
    final_train_accuracy: float
    best_at_budget_end: bool


def fit_summary(last_record: dict) -> FitSummary:
    """The FitSummary of a run from the last of its records (fine-tuning's or the linear probe's)."""
    if "inverse_l2" in last_record:
        chosen = f"C={last_record['inverse_l2']:g}"
    else:
        chosen = f"lr={last_record['learning_rate']:g} wd={last_record['weight_decay']:g}"
    return FitSummary(
        chosen=chosen,
        best_step=int(last_record.get("best_step", 0)),
        final_train_accuracy=float(last_record["final_train_accuracy"]),
        best_at_budget_end=bool(last_record.get("best_at_budget_end", False)),
    )

"""How many labels self-supervision saves, and what pretraining adds with and without a student, from evaluation
result rows (sslflow.evaluation.RESULT_COLUMNS).

Every arm is chosen on validation: the label budget's validation fold (sslflow.training.labelled_subset), the
highest mean val_accuracy over seeds, ties broken by the lower mean val_loss; the test split only reports. Each
comparison is a paired difference on the same in-domain test images (the same seeds on both sides), with a 95%
interval from a bootstrap that resamples cases (patients; PROXY cases on the digits), not images, and with several
seeds the seeds too (sslflow/reporting/intervals.py). "met" when the whole interval is above 0, "NOT met" below,
"undetermined" when it holds 0.

The comparisons:
- best_at_1pct_vs_scratch_at_10pct, best_at_10pct_vs_scratch_at_100pct: the best arm (any, students included)
  against scratch fine-tuned with ten times the labels;
- best_at_1pct_vs_scratch_student_at_10pct: the same against the control, scratch followed by the same student;
- pretraining_adds_at_{f} (no student): the best self-supervised arm without a student vs scratch at f;
- pretraining_adds_with_student_at_{f}: the top rung's student vs scratch's student at f.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sslflow.evaluation import unpack_cases, unpack_correct
from sslflow.ladder import FLOORS, SCRATCH_ARM, STUDENT_SUFFIX, is_self_supervised, student_arm
from sslflow.reporting.intervals import paired_case_bootstrap, paired_verdict

TEN_TIMES = {
    "best_at_1pct_vs_scratch_at_10pct": (0.01, 0.1, SCRATCH_ARM),
    "best_at_10pct_vs_scratch_at_100pct": (0.1, 1.0, SCRATCH_ARM),
    "best_at_1pct_vs_scratch_student_at_10pct": (0.01, 0.1, student_arm(SCRATCH_ARM)),
}
VERDICT_WORDS = {
    "gain": "met",
    "loss": "NOT met",
    "no difference": "undetermined (the interval of the difference holds 0)",
}


def _models(results: pd.DataFrame) -> pd.DataFrame:
    """One row per trained model (its in-domain test row), selectable or not."""
    return results[results["eval_set"] == "in_domain"]


def best_on_validation(results: pd.DataFrame, fraction: float, arms=None) -> tuple[str, str] | None:
    """(init, probe) of the selectable arm with the best mean validation score over seeds at ``fraction`` (accuracy,
    ties broken by the lower val_loss, then by name), among ``arms`` (inits; None: all); None when none ran there."""
    rows = _models(results)
    rows = rows[(rows["label_fraction"] == fraction) & rows["selectable"].astype(bool)]
    if arms is not None:
        rows = rows[rows["init"].isin(list(arms))]
    if rows.empty:
        return None
    means = rows.groupby(["init", "probe"])[["val_accuracy", "val_loss"]].mean().reset_index()
    means = means.sort_values(["val_accuracy", "val_loss", "init", "probe"], ascending=[False, True, True, True])
    return means.iloc[0]["init"], means.iloc[0]["probe"]


def _arm_rows(results: pd.DataFrame, arm: tuple[str, str], fraction: float) -> pd.DataFrame:
    rows = _models(results)
    return rows[
        (rows["init"] == arm[0]) & (rows["probe"] == arm[1]) & (rows["label_fraction"] == fraction)
    ].sort_values("seed")


def compare_arms(
    results: pd.DataFrame, ours: tuple[str, str], ours_fraction: float, theirs: tuple[str, str], theirs_fraction: float
) -> dict | None:
    """ours - theirs in in-domain test accuracy, paired by seed and image, with its case-bootstrap interval; None when
    either arm lacks a seed the other has, or the test images come from fewer than 2 cases (no interval exists). {ours,
    theirs, *_accuracy, *_labels (training + validation), difference, verdict, seeds}."""
    mine, other = _arm_rows(results, ours, ours_fraction), _arm_rows(results, theirs, theirs_fraction)
    seeds = sorted(set(mine["seed"]) & set(other["seed"]))
    if not seeds:
        return None
    mine, other = mine[mine["seed"].isin(seeds)], other[other["seed"].isin(seeds)]
    cases = unpack_cases(mine["cases"].iloc[0])
    if len(set(cases)) < 2:  # one case: no resampling can say anything
        return None
    difference = paired_case_bootstrap(
        np.stack([unpack_correct(packed) for packed in mine["correct"]]),
        np.stack([unpack_correct(packed) for packed in other["correct"]]),
        cases,
    )
    return {
        "ours": f"{ours[0]} {ours[1]}",
        "ours_fraction": ours_fraction,
        "ours_accuracy": float(mine["accuracy"].mean()),
        "ours_labels": _labels_used(mine),
        "theirs": f"{theirs[0]} {theirs[1]}",
        "theirs_fraction": theirs_fraction,
        "theirs_accuracy": float(other["accuracy"].mean()),
        "theirs_labels": _labels_used(other),
        "difference": str(difference),
        "low": difference.low,
        "high": difference.high,
        "verdict": VERDICT_WORDS[paired_verdict(difference)],
        "seeds": seeds,
    }


def _labels_used(rows: pd.DataFrame) -> int:
    """Training + validation labels of an arm's models (the same for every seed: the budget depends on the fraction)."""
    return int((rows["num_labels"] + rows["val_labels"]).iloc[0])


def label_efficiency_comparisons(results: pd.DataFrame) -> dict[str, dict]:
    """{name: compare_arms(...) plus chosen_on: "validation"} for each comparison whose arms ran (module docstring)."""
    comparisons = {}
    for name, (few, many, baseline) in TEN_TIMES.items():
        best = best_on_validation(results, few)
        if best is not None and (found := compare_arms(results, best, few, (baseline, "finetune"), many)) is not None:
            comparisons[name] = found
    fractions = sorted(set(_models(results)["label_fraction"]))
    for fraction in fractions:
        ssl = [
            init
            for init in set(_models(results)["init"])
            if is_self_supervised(init) and not init.endswith(STUDENT_SUFFIX)
        ]
        best_ssl = best_on_validation(results, fraction, ssl)
        if (
            best_ssl is not None
            and (found := compare_arms(results, best_ssl, fraction, (SCRATCH_ARM, "finetune"), fraction)) is not None
        ):
            comparisons[f"pretraining_adds_at_{fraction:g}"] = found
        students = [
            init for init in set(_models(results)["init"]) if is_self_supervised(init) and init.endswith(STUDENT_SUFFIX)
        ]
        for student in sorted(students):
            found = compare_arms(
                results, (student, "finetune"), fraction, (student_arm(SCRATCH_ARM), "finetune"), fraction
            )
            if found is not None:
                comparisons[f"pretraining_adds_with_student_at_{fraction:g}"] = found
    return comparisons


def comparison_lines(comparisons: dict[str, dict]) -> list[str]:
    """One printable line per comparison, with the labels each side used (training + validation)."""
    return [
        f"{name}: {c['ours']} ({c['ours_labels']} labels) {c['ours_accuracy']:.4f} vs {c['theirs']} "
        f"({c['theirs_labels']} labels)"
        f" {c['theirs_accuracy']:.4f}, difference {c['difference']} -> {c['verdict']}"
        for name, c in comparisons.items()
    ]


def non_self_supervised(inits) -> list[str]:
    """The arms without self-supervised pretraining among ``inits``: the floors and their students."""
    return [init for init in inits if init.removesuffix(STUDENT_SUFFIX) in FLOORS]

"""The label-savings curve: in-domain test accuracy against the labels used (training + validation folds of the
budget) for the arms the product's answer compares, and the headline read off it ("labels saved").

The curves: scratch (fine-tuned from random weights), scratch + student (the semi-supervised control), the best arm
without self-supervision and the best self-supervised arm, each chosen per label fraction on validation
(sslflow.reporting.comparisons.best_on_validation). The headline: how many labels a baseline curve needs to reach the
best self-supervised arm's accuracy at the smallest fraction, divided by the labels that arm used
(sslflow.reporting.label_savings.labels_saved), with a bootstrap interval over test cases and seeds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sslflow.evaluation import unpack_cases, unpack_correct
from sslflow.ladder import SCRATCH_ARM, is_self_supervised, student_arm
from sslflow.reporting.comparisons import best_on_validation, non_self_supervised
from sslflow.reporting.intervals import case_bootstrap_accuracy
from sslflow.reporting.label_savings import labels_saved, savings_curve_figure

SCRATCH, SCRATCH_STUDENT = (SCRATCH_ARM, "finetune"), (student_arm(SCRATCH_ARM), "finetune")


def _points(results: pd.DataFrame, choose) -> list[tuple[float, tuple[str, str], pd.DataFrame]]:
    """(fraction, arm, its in-domain rows sorted by seed) at each fraction where ``choose(fraction)`` names an arm that
    ran."""
    models = results[results["eval_set"] == "in_domain"]
    points = []
    for fraction in sorted(set(models["label_fraction"])):
        arm = choose(fraction)
        rows = (
            None
            if arm is None
            else models[
                (models["init"] == arm[0]) & (models["probe"] == arm[1]) & (models["label_fraction"] == fraction)
            ]
        )
        if rows is not None and len(rows):
            points.append((fraction, arm, rows.sort_values("seed")))
    return points


def curve_choices(results: pd.DataFrame) -> dict:
    """{curve name: choose(fraction) -> (init, probe) | None}: the four curves of the module docstring."""
    inits = sorted(set(results["init"]))
    ssl = [init for init in inits if is_self_supervised(init)]
    floors = non_self_supervised(inits)
    return {
        SCRATCH_ARM: lambda fraction: SCRATCH,
        "scratch + student": lambda fraction: SCRATCH_STUDENT,
        "best without self-supervision": lambda fraction: best_on_validation(results, fraction, floors),
        "best self-supervised": lambda fraction: best_on_validation(results, fraction, ssl),
    }


def _correct(rows: pd.DataFrame, seeds: list[int]) -> np.ndarray:
    """(S, N) bool: which in-domain test images each seed's model got right."""
    return np.stack([unpack_correct(rows[rows["seed"] == seed]["correct"].iloc[0]) for seed in seeds])


def savings_curves(results: pd.DataFrame) -> dict[str, dict]:
    """{curve: {"fractions", "arms", "labels" (training + validation), "accuracy", "low", "high"}} (lists, one entry
    per fraction where the curve's arm ran on every seed; intervals from the case bootstrap over seeds); {} when the
    test images come from fewer than 2 cases."""
    seeds = sorted(set(results["seed"]))
    curves = {}
    for name, choose in curve_choices(results).items():
        points = [(f, arm, rows) for f, arm, rows in _points(results, choose) if sorted(rows["seed"]) == seeds]
        if not points:
            continue
        cases = unpack_cases(points[0][2]["cases"].iloc[0])
        if len(set(cases)) < 2:  # one test case: no interval, no curve worth drawing
            return {}
        intervals = [case_bootstrap_accuracy(_correct(rows, seeds), cases) for _, _, rows in points]
        curves[name] = {
            "fractions": [f for f, _, _ in points],
            "arms": [f"{arm[0]} {arm[1]}" for _, arm, _ in points],
            "labels": [int((rows["num_labels"] + rows["val_labels"]).iloc[0]) for _, _, rows in points],
            "accuracy": [i.mean for i in intervals],
            "low": [i.low for i in intervals],
            "high": [i.high for i in intervals],
        }
    return curves


def headlines(results: pd.DataFrame, targets: dict[str, float]) -> dict[str, dict]:
    """{baseline curve: labels saved by the best self-supervised arm at the smallest fraction against it, with its
    interval and the verdict against ``targets`` ({baseline curve: the ratio aimed at})}: "met" when the interval's low
    end reaches the target, "NOT met" when its high end is below it, else "undetermined"."""
    seeds = sorted(set(results["seed"]))
    choices = curve_choices(results)
    reference = _points(results, choices["best self-supervised"])
    if not reference:
        return {}
    fraction, arm, rows = reference[0]
    cases = unpack_cases(rows["cases"].iloc[0])
    if len(set(cases)) < 2:
        return {}
    found = {}
    for name, target in targets.items():
        points = [(f, a, r) for f, a, r in _points(results, choices[name]) if sorted(r["seed"]) == seeds]
        if not points:
            continue
        saved = labels_saved(
            _correct(rows, seeds),
            int((rows["num_labels"] + rows["val_labels"]).iloc[0]),
            np.array([int((r["num_labels"] + r["val_labels"]).iloc[0]) for _, _, r in points]),
            np.stack([_correct(r, seeds) for _, _, r in points], axis=1),
            cases,
        )
        verdict = (
            "met"
            if saved.low >= target
            else "NOT met"
            if saved.high < target
            else "undetermined (the interval holds the target)"
        )
        found[name] = {
            "reference": f"{arm[0]} {arm[1]} at {fraction:g}",
            "labels_saved": str(saved),
            "ratio": saved.ratio,
            "low": saved.low,
            "high": saved.high,
            "censored": saved.censored,
            "target": target,
            "verdict": verdict,
        }
    return found


def savings_figure(results: pd.DataFrame) -> dict[str, bytes]:
    """{"label_savings": PNG of savings_curves} ({} when no curve has per-image outcomes to draw)."""
    if "correct" not in results or results["correct"].isna().all():
        return {}
    curves = savings_curves(results)
    seeds = sorted(set(results["seed"]))
    return (
        {
            "label_savings": savings_curve_figure(
                curves, f"In-domain test accuracy against labels used (training + validation), {len(seeds)} seed(s)"
            )
        }
        if curves
        else {}
    )

"""How many labels self-supervision saves (issue 14's targets), from evaluation result rows.

Two comparisons: the best arm at 1% of the labels against scratch fine-tuned at 10%, and the best arm at
10% against scratch at 100%. The best arm is chosen on VALIDATION (highest mean val_accuracy over seeds,
among selectable models: a student that did not beat its teacher on validation is not one); the test split
only reports the chosen arm's accuracy. The verdict needs a real interval: with several seeds, "met" or
"NOT met" only when the 95% t-intervals over seeds of the two test accuracies separate (an interval of zero
width, an arm the seeds do not vary, or overlapping intervals: "undetermined"); with one seed, when the 95%
paired-bootstrap interval over the test images of the difference between the two models excludes 0
(sslflow/reporting/intervals.py; "undetermined" when it holds 0).
"""

from __future__ import annotations

import pandas as pd

from sslflow.evaluation import unpack_correct
from sslflow.reporting.intervals import paired_bootstrap, paired_verdict, t_interval, verdict

COMPARISONS = {"best_at_1pct_vs_scratch_at_10pct": (0.01, 0.1), "best_at_10pct_vs_scratch_at_100pct": (0.1, 1.0)}
VERDICT_WORDS = {"gain": "met", "loss": "NOT met", "no difference": "undetermined (the intervals overlap)"}
PAIRED_WORDS = {"gain": "met", "loss": "NOT met", "no difference": "undetermined (the interval of the difference holds 0)"}


def best_on_validation(results: pd.DataFrame, fraction: float) -> tuple[str, str] | None:
    """(init, probe) of the selectable arm with the highest mean val_accuracy over seeds at ``fraction`` (a tie:
    the first in name order); None when no arm ran there. results: RESULT_COLUMNS rows (val_accuracy, selectable)."""
    rows = results[(results["label_fraction"] == fraction) & results["selectable"].astype(bool)]
    per_model = rows.drop_duplicates(["init", "probe", "seed"])  # val_accuracy is per model, repeated per eval set
    means = per_model.groupby(["init", "probe"])["val_accuracy"].mean()
    return None if means.empty else means.sort_index().idxmax()


def label_efficiency_comparisons(results: pd.DataFrame) -> dict[str, dict]:
    """{name: {best_arm, best_val_accuracy, best_accuracy, scratch_accuracy, best_interval, scratch_interval,
    difference, verdict}} for each comparison whose two fractions were run; accuracies are in-domain test means over
    seeds; difference: with one seed each, best - scratch with its paired-bootstrap interval (else None).

    results: rows with init, probe, label_fraction, seed, eval_set, accuracy, val_accuracy, selectable
    (sslflow.evaluation.RESULT_COLUMNS).
    """
    in_domain = results[results["eval_set"] == "in_domain"]
    comparisons = {}
    for name, (few, many) in COMPARISONS.items():
        best = best_on_validation(in_domain, few)
        scratch = in_domain[(in_domain["init"] == "scratch") & (in_domain["probe"] == "finetune") & (in_domain["label_fraction"] == many)]
        if best is None or scratch.empty:
            continue
        ours = in_domain[(in_domain["init"] == best[0]) & (in_domain["probe"] == best[1]) & (in_domain["label_fraction"] == few)]
        ours_interval = t_interval(ours.sort_values("seed")["accuracy"].tolist())
        theirs_interval = t_interval(scratch.sort_values("seed")["accuracy"].tolist())
        raw, words, difference = verdict(ours_interval, theirs_interval), VERDICT_WORDS, None
        if len(ours) == len(scratch) == 1 and "correct" in ours and ours["correct"].notna().all() and scratch["correct"].notna().all():
            difference = paired_bootstrap(unpack_correct(ours["correct"].iloc[0]), unpack_correct(scratch["correct"].iloc[0]))
            raw, words = paired_verdict(difference), PAIRED_WORDS
        comparisons[name] = {
            "best_arm": f"{best[0]} {best[1]}", "best_val_accuracy": float(ours["val_accuracy"].mean()),
            "best_accuracy": ours_interval.mean, "scratch_accuracy": theirs_interval.mean,
            "best_interval": str(ours_interval), "scratch_interval": str(theirs_interval),
            "difference": None if difference is None else str(difference), "verdict": words.get(raw, raw),
        }  # fmt: skip
    return comparisons


def comparison_lines(comparisons: dict[str, dict]) -> list[str]:
    """One printable line per comparison."""
    return [
        f"{name}: {c['best_interval']} ({c['best_arm']}, chosen on validation) vs scratch {c['scratch_interval']}"
        + (f", difference {c['difference']}" if c.get("difference") else "") + f" -> target {c['verdict']}"
        for name, c in comparisons.items()
    ]

"""How many labels self-supervision saves (issue 14's targets), from evaluation result rows.

Two comparisons: the best arm at 1% of the labels against scratch fine-tuned at 10%, and the best arm at
10% against scratch at 100%. The best arm is chosen on VALIDATION (highest mean val_accuracy over seeds,
among selectable models: a student that did not beat its teacher on validation is not one); the test split
only reports the chosen arm's accuracy. The verdict needs a real interval: "met" or "NOT met" only when
the 95% t-intervals over seeds of the two test accuracies separate; with one seed, an interval of zero
width (an arm the seeds do not vary) or overlapping intervals it is "undetermined".
"""

from __future__ import annotations

import pandas as pd

from sslflow.reporting.intervals import t_interval, verdict

COMPARISONS = {"best_at_1pct_vs_scratch_at_10pct": (0.01, 0.1), "best_at_10pct_vs_scratch_at_100pct": (0.1, 1.0)}
VERDICT_WORDS = {"gain": "met", "loss": "NOT met", "no difference": "undetermined (the intervals overlap)"}


def best_on_validation(results: pd.DataFrame, fraction: float) -> tuple[str, str] | None:
    """(init, probe) of the selectable arm with the highest mean val_accuracy over seeds at ``fraction`` (a tie:
    the first in name order); None when no arm ran there. results: RESULT_COLUMNS rows (val_accuracy, selectable)."""
    rows = results[(results["label_fraction"] == fraction) & results["selectable"].astype(bool)]
    per_model = rows.drop_duplicates(["init", "probe", "seed"])  # val_accuracy is per model, repeated per eval set
    means = per_model.groupby(["init", "probe"])["val_accuracy"].mean()
    return None if means.empty else means.sort_index().idxmax()


def label_efficiency_comparisons(results: pd.DataFrame) -> dict[str, dict]:
    """{name: {best_arm, best_val_accuracy, best_accuracy, scratch_accuracy, best_interval, scratch_interval, verdict}}
    for each comparison whose two fractions were run; accuracies are in-domain test means over seeds.

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
        raw = verdict(ours_interval, theirs_interval)
        comparisons[name] = {
            "best_arm": f"{best[0]} {best[1]}", "best_val_accuracy": float(ours["val_accuracy"].mean()),
            "best_accuracy": ours_interval.mean, "scratch_accuracy": theirs_interval.mean,
            "best_interval": str(ours_interval), "scratch_interval": str(theirs_interval),
            "verdict": VERDICT_WORDS.get(raw, raw),
        }  # fmt: skip
    return comparisons


def comparison_lines(comparisons: dict[str, dict]) -> list[str]:
    """One printable line per comparison."""
    return [
        f"{name}: {c['best_interval']} ({c['best_arm']}, chosen on validation) vs scratch {c['scratch_interval']} -> target {c['verdict']}"
        for name, c in comparisons.items()
    ]

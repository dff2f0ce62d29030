"""How many labels self-supervision saves (issue 14's targets), from evaluation result rows.

Two comparisons on the in-domain test split: the best arm at 1% of the labels against scratch
fine-tuned at 10%, and the best arm at 10% against scratch at 100%. "Best arm" is the highest
in-domain test accuracy among all arms at that fraction: a reported comparison, never a selection
(selection and promotion decide on validation data).
"""

from __future__ import annotations

import pandas as pd

COMPARISONS = {"best_at_1pct_vs_scratch_at_10pct": (0.01, 0.1), "best_at_10pct_vs_scratch_at_100pct": (0.1, 1.0)}


def label_efficiency_comparisons(results: pd.DataFrame) -> dict[str, dict]:
    """{name: {best_arm, best_accuracy, scratch_accuracy, met}} for each comparison whose two fractions were run;
    accuracies are means over seeds.

    results: rows with init, probe, label_fraction, eval_set, accuracy (sslflow.evaluation.RESULT_COLUMNS).
    """
    in_domain = results[results["eval_set"] == "in_domain"]
    means = in_domain.groupby(["init", "probe", "label_fraction"])["accuracy"].mean()  # over seeds
    comparisons = {}
    for name, (few, many) in COMPARISONS.items():
        arms = means[means.index.get_level_values("label_fraction") == few]
        scratch = means.get(("scratch", "finetune", many))
        if arms.empty or scratch is None:
            continue
        (init, probe, _), best = arms.idxmax(), float(arms.max())
        comparisons[name] = {
            "best_arm": f"{init} {probe}", "best_accuracy": best,
            "scratch_accuracy": float(scratch), "met": bool(best >= scratch),
        }  # fmt: skip
    return comparisons


def comparison_lines(comparisons: dict[str, dict]) -> list[str]:
    """One printable line per comparison."""
    return [
        f"{name}: {c['best_accuracy']:.4f} ({c['best_arm']}) vs scratch {c['scratch_accuracy']:.4f} -> target {'met' if c['met'] else 'NOT met'}"
        for name, c in comparisons.items()
    ]

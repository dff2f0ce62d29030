"""Evaluation results as markdown tables: one row per arm and label fraction (means and 95% intervals
over seeds), corruption robustness."""

from __future__ import annotations

import pandas as pd

from sslflow.ladder import arm_order, ladder_steps, method_of
from sslflow.reporting.intervals import Interval, t_interval, verdict

HEADLINE = {"in-domain": ("in_domain", "accuracy"), "shift": ("shift", "accuracy"), "ECE": ("in_domain", "ece")}


def methods_in_order(results: pd.DataFrame) -> list[tuple[str, str]]:
    pairs = results[["init", "probe"]].drop_duplicates().itertuples(index=False)
    return sorted(pairs, key=lambda pair: (arm_order(pair[0]), pair[1]))


def arm_intervals(results: pd.DataFrame) -> dict[tuple[str, str, float], dict[str, Interval]]:
    """{(init, probe, label_fraction): {"in-domain" | "shift" | "ECE": Interval over seeds}}."""
    summary = {}
    for init, probe in methods_in_order(results):
        for fraction in sorted(results["label_fraction"].unique()):
            rows = results[
                (results["init"] == init) & (results["probe"] == probe) & (results["label_fraction"] == fraction)
            ]
            if len(rows):
                summary[(init, probe, fraction)] = {
                    column: t_interval(rows[rows["eval_set"] == eval_set].sort_values("seed")[metric].tolist())
                    for column, (eval_set, metric) in HEADLINE.items()
                }
    return summary


def results_markdown(results: pd.DataFrame) -> str:
    """One row per (arm, label fraction): the labels used (the budget's training + validation folds), in-domain and
    shift accuracy, in-domain ECE as mean ± 95% t-interval, and how it was fitted: the settings its search chose on
    validation (seed 0's; "varies" when the seeds chose differently), the best step (median over seeds) and the
    final training accuracy (mean)."""
    summary = arm_intervals(results)
    seeds = sorted(set(results["seed"]))
    note = (
        f"mean ± 95% t-interval over {len(seeds)} seeds {seeds}"
        if len(seeds) > 1
        else f"1 seed ({seeds[0]}): no interval"
    )
    models = results[results["eval_set"] == "in_domain"]
    lines = [
        f"({note}; labels: training + validation)",
        "| arm | probe | labels | in-domain | shift | ECE | chosen on validation | best step | train accuracy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (init, probe, fraction), cells in summary.items():
        fits = models[
            (models["init"] == init) & (models["probe"] == probe) & (models["label_fraction"] == fraction)
        ].sort_values("seed")
        chosen = fits["chosen"].iloc[0] if fits["chosen"].nunique() == 1 else "varies"
        labels = f"{fraction:g} ({fits['num_labels'].iloc[0]} + {fits['val_labels'].iloc[0]})"
        fit = f"{chosen} | {fits['best_step'].median():g} | {fits['final_train_accuracy'].mean():.3f}"
        lines.append(
            f"| {init} | {probe} | {labels} | {cells['in-domain']} | {cells['shift']} | {cells['ECE']} | {fit} |"
        )
    return "\n".join(lines)


def effect_lines(results: pd.DataFrame) -> list[str]:
    """Each step of the pretraining ladder (sslflow.ladder: generic -> + domain -> + MICLe pairs) of each method
    present, in-domain, per probe and fraction: the two intervals and the verdict (a gain only when they separate)."""
    summary, lines = arm_intervals(results), []
    methods = sorted({method_of(init) for init in results["init"]} - {None}, key=lambda method: arm_order(method))
    for ours, theirs, step in [step for method in methods for step in ladder_steps(method)]:
        for (init, probe, fraction), cells in summary.items():
            if init == ours and (theirs, probe, fraction) in summary:
                baseline = summary[(theirs, probe, fraction)]["in-domain"]
                lines.append(
                    f"{step} ({probe}, {fraction:g}): {cells['in-domain']} vs {baseline} -> "
                    f"{verdict(cells['in-domain'], baseline)}"
                )
    return lines


def corruption_markdown(results: pd.DataFrame) -> str:
    """Mean accuracy over the corruption types (and seeds) at each severity, per method, at every label fraction."""
    corrupted = results[results["eval_kind"] == "corruption"].copy()
    corrupted["severity"] = corrupted["eval_set"].str.split("@").str[1].astype(int)
    table = corrupted.groupby(["init", "probe", "label_fraction", "severity"])["accuracy"].mean().unstack("severity")
    lines = [
        "| method | probe | label fraction | " + " | ".join(f"severity {s}" for s in table.columns) + " |",
        "|" + "---|" * (3 + len(table.columns)),
    ]
    for (init, probe, fraction), values in table.iterrows():
        lines.append(f"| {init} | {probe} | {fraction:g} | " + " | ".join(f"{v:.4f}" for v in values) + " |")
    return "\n".join(lines)

"""Evaluation results as markdown tables: accuracy by label fraction, corruption robustness."""

from __future__ import annotations

import pandas as pd

INIT_ORDER = ["scratch", "simclr", "simclr+micle", "simclr+micle+student"]


def methods_in_order(results: pd.DataFrame) -> list[tuple[str, str]]:
    pairs = results[["init", "probe"]].drop_duplicates().itertuples(index=False)
    return sorted(pairs, key=lambda pair: (INIT_ORDER.index(pair[0]) if pair[0] in INIT_ORDER else 99, pair[1]))


def results_markdown(results: pd.DataFrame, eval_sets: tuple[str, ...] = ("in_domain", "shift")) -> str:
    """Accuracy by label fraction (rows) x method/probe/eval set (columns), as a markdown table."""
    headline = results[results["eval_set"].isin(eval_sets)]
    table = headline.pivot_table(index=["label_fraction", "num_labels"], columns=["init", "probe", "eval_set"], values="accuracy", aggfunc="first")
    columns = [c for init, probe in methods_in_order(headline) for c in table.columns if c[0] == init and c[1] == probe]
    header = ["label fraction", "labels", *[f"{init} {probe} / {eval_set}" for init, probe, eval_set in columns]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for fraction in sorted(headline["label_fraction"].unique()):
        block = table.xs(fraction, level="label_fraction")
        labels = int(block.index.max())  # the same count for every method; scratch and SSL share the subset
        values = block.max(axis=0)
        lines.append("| " + " | ".join([f"{fraction:g}", str(labels), *[f"{values[c]:.4f}" for c in columns]]) + " |")
    return "\n".join(lines)


def corruption_markdown(results: pd.DataFrame) -> str:
    """Mean accuracy over the corruption types at each severity, per method, at every label fraction."""
    corrupted = results[results["eval_kind"] == "corruption"].copy()
    corrupted["severity"] = corrupted["eval_set"].str.split("@").str[1].astype(int)
    table = corrupted.groupby(["init", "probe", "label_fraction", "severity"])["accuracy"].mean().unstack("severity")
    lines = ["| method | probe | label fraction | " + " | ".join(f"severity {s}" for s in table.columns) + " |", "|" + "---|" * (3 + len(table.columns))]
    for (init, probe, fraction), values in table.iterrows():
        lines.append(f"| {init} | {probe} | {fraction:g} | " + " | ".join(f"{v:.4f}" for v in values) + " |")
    return "\n".join(lines)

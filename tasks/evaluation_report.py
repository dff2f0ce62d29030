"""Tables and charts of evaluate's results: label-efficiency curve, shift and corruption robustness.

Charts are PNG bytes (matplotlib, Agg backend); the HTML embeds them for the Flyte Deck.
"""

from __future__ import annotations

import base64
import html
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

INIT_ORDER = ["scratch", "simclr", "simclr+micle"]


def _methods(results: pd.DataFrame) -> list[tuple[str, str]]:
    pairs = results[["init", "probe"]].drop_duplicates().itertuples(index=False)
    return sorted(pairs, key=lambda pair: (INIT_ORDER.index(pair[0]) if pair[0] in INIT_ORDER else 99, pair[1]))


def results_markdown(results: pd.DataFrame, eval_sets: tuple[str, ...] = ("in_domain", "shift")) -> str:
    """Accuracy by label fraction (rows) x method/probe/eval set (columns), as a markdown table."""
    headline = results[results["eval_set"].isin(eval_sets)]
    table = headline.pivot_table(index=["label_fraction", "num_labels"], columns=["init", "probe", "eval_set"], values="accuracy", aggfunc="first")
    columns = [c for init, probe in _methods(headline) for c in table.columns if c[0] == init and c[1] == probe]
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


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _curve(results: pd.DataFrame, eval_set: str, title: str) -> bytes:
    figure, axis = plt.subplots(figsize=(6, 4))
    for init, probe in _methods(results):
        rows = results[(results["init"] == init) & (results["probe"] == probe) & (results["eval_set"] == eval_set)].sort_values("label_fraction")
        axis.plot(rows["label_fraction"] * 100, rows["accuracy"], marker="o", linestyle="-" if probe == "finetune" else "--", label=f"{init} ({probe})")
    axis.set_xscale("log")
    axis.set_xlabel("labelled training images (%)")
    axis.set_ylabel("accuracy")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return _png(figure)


def _corruption_chart(results: pd.DataFrame) -> bytes:
    corrupted = results[(results["eval_kind"] == "corruption") & (results["probe"] == "finetune")].copy()
    fraction = corrupted["label_fraction"].max()
    corrupted = corrupted[corrupted["label_fraction"] == fraction]
    corrupted["corruption"] = corrupted["eval_set"].str.split("@").str[0]
    corrupted["severity"] = corrupted["eval_set"].str.split("@").str[1].astype(int)
    names = sorted(corrupted["corruption"].unique())
    figure, axes = plt.subplots(1, len(names), figsize=(3 * len(names), 3), sharey=True)
    for axis, name in zip(axes, names):
        for init in [i for i in INIT_ORDER if i in set(corrupted["init"])]:
            rows = corrupted[(corrupted["corruption"] == name) & (corrupted["init"] == init)].sort_values("severity")
            axis.plot(rows["severity"], rows["accuracy"], marker="o", label=init)
        axis.set_title(name, fontsize=9)
        axis.set_xlabel("severity")
        axis.set_xticks([1, 2, 3])
    axes[0].set_ylabel(f"accuracy (fine-tuned, {fraction:g} of labels)")
    axes[-1].legend(fontsize=7)
    return _png(figure)


def report_figures(results: pd.DataFrame) -> dict[str, bytes]:
    return {
        "label_efficiency": _curve(results, "in_domain", "Label efficiency: in-domain test accuracy"),
        "shift_accuracy": _curve(results, "shift", "Under distribution shift: shift-set accuracy"),
        "corruptions": _corruption_chart(results),
    }


def report_html(results: pd.DataFrame, figures: dict[str, bytes]) -> str:
    images = "".join(f'<h4>{html.escape(name)}</h4><img src="data:image/png;base64,{base64.b64encode(png).decode()}"/>' for name, png in figures.items())
    tables = f"<h4>Accuracy</h4><pre>{html.escape(results_markdown(results))}</pre><h4>Corruptions</h4><pre>{html.escape(corruption_markdown(results))}</pre>"
    return images + tables + results.to_html(index=False, float_format=lambda v: f"{v:.4f}")

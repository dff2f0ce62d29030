"""The pseudo-label quality report of the self-training stage (sslflow/training/student.py: the FixMatch student's
own pseudo-labels) as tables and a chart.

One report per label fraction (run_self_training's dict). Everything here is measured on the val split.
"""

from __future__ import annotations

import base64
import html

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from sslflow.reporting.charts import _png  # noqa: E402

SUMMARY_COLUMNS = [
    "label_fraction",
    "seed",
    "start",
    "teacher",
    "threshold",
    "coverage",
    "pseudo_label_accuracy",
    "ece",
    "mask_rate",
    "pseudo_labelled",
    "pool_images",
    "teacher_val_accuracy",
    "student_val_accuracy",
    "student_gain",
    "student_beats_teacher",
]


def quality_table(reports: list[dict]) -> pd.DataFrame:
    """One row per label fraction and seed: SUMMARY_COLUMNS (seed 0 where a report has none)."""
    defaults = {"seed": 0, "start": ""}
    rows = [
        {
            column: report.get(column, defaults[column]) if column in defaults else report[column]
            for column in SUMMARY_COLUMNS
        }
        for report in reports
    ]
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def per_class_table(reports: list[dict]) -> pd.DataFrame:
    """One row per (label fraction, seed, class): val images, coverage and accuracy at the threshold, pool pseudo-labels
    kept."""
    rows = [
        {
            "label_fraction": report["label_fraction"],
            "seed": report.get("seed", 0),
            "start": report.get("start", ""),
            **row,
        }
        for report in reports
        for row in report["per_class"]
    ]
    return pd.DataFrame(
        rows,
        columns=["label_fraction", "seed", "start", "class", "images", "coverage", "accuracy", "pool_pseudo_labels"],
    )


def quality_markdown(reports: list[dict]) -> str:
    table = quality_table(reports)
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else f"{v}" for v in row) + " |")
    return "\n".join(lines)


def quality_chart(reports: list[dict]) -> bytes:
    """PNG: per class, coverage and pseudo-label accuracy at the threshold, one panel per label fraction."""
    figure, axes = plt.subplots(1, len(reports), figsize=(4.5 * len(reports), 3.2), sharey=True, squeeze=False)
    for axis, report in zip(axes[0], reports):
        classes = [row["class"] for row in report["per_class"]]
        positions = range(len(classes))
        axis.bar(
            [p - 0.2 for p in positions], [row["coverage"] for row in report["per_class"]], width=0.4, label="coverage"
        )
        axis.bar(
            [p + 0.2 for p in positions], [row["accuracy"] for row in report["per_class"]], width=0.4, label="accuracy"
        )
        axis.set_xticks(list(positions), classes, fontsize=7)
        axis.set_title(
            f"{report.get('start', '')} student, {report['label_fraction']:g} of labels, threshold "
            f"{report['threshold']:g}",
            fontsize=9,
        )
    axes[0][0].set_ylabel("validation fold, by true class")
    axes[0][-1].legend(fontsize=7)
    return _png(figure)


def quality_html(reports: list[dict], chart: bytes) -> str:
    """The Deck page: what the numbers mean, the summary table, the chart, the per-class table."""
    return (
        "<h3>Self-training: pseudo-label quality (val split)</h3>"
        "<p>The FixMatch student labels with its own predictions. coverage: share of val images the student is "
        "confident about at the threshold (would be pseudo-labelled); pseudo_label_accuracy: accuracy of those "
        "labels; ece: the student's calibration error; mask_rate: share of pool images that passed the threshold "
        "during training; a student that does not beat its teacher on val is reported and never registered.</p>"
        f"<pre>{html.escape(quality_markdown(reports))}</pre>"
        f'<img src="data:image/png;base64,{base64.b64encode(chart).decode()}"/>'
        + per_class_table(reports).to_html(index=False, float_format=lambda v: f"{v:.4f}")
    )

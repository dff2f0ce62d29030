"""The closing text `pyflyte run` prints for the pipeline (a dataset's: sslflow/reporting/dataset_report.py)."""

from __future__ import annotations

import pandas as pd

from sslflow.registry.record import Registration
from sslflow.reporting.comparisons import comparison_lines, label_efficiency_comparisons
from sslflow.reporting.tables import effect_lines, results_markdown

CHARTS = ("label_efficiency", "label_savings", "shift_accuracy", "corruptions", "embedding")


def pipeline_summary(results: pd.DataFrame, registration: Registration, parent_run_id: str, tracking_uri: str) -> str:
    """Accuracy table, the pretraining ladder's effects, where the charts are, MLflow parent run, registered
    version and the gate's decision."""
    return "\n".join(
        [
            "Accuracy on the in-domain test split and the shift set, ECE in-domain (pixels: linear on raw pixels;",
            "scratch: random init; simclr, moco, ...: the method on generic images; +domain: continued on the domain;",
            "+micle: with case pairs; +student: a FixMatch student of that fine-tuned model). Labels: the budget at",
            "each fraction, training + validation folds; every choice (early stopping, the search, the probe's",
            "regularisation, the student's checkpoint, the best arm) was made on the validation fold:",
            results_markdown(results),
            f"This run's verdicts ({_seeds_note(results)}; the arms chosen on validation; each interval is of the",
            "paired difference on the in-domain test split, from a bootstrap over test cases, not images):",
            *comparison_lines(label_efficiency_comparisons(results)),
            "",
            "In-domain effect of each pretraining step:",
            *[f"  {line}" for line in effect_lines(results)],
            "",
            f"Charts: {', '.join(f'charts/{name}.png' for name in CHARTS)} in the 'evaluate' stage run under the "
            "parent run below, and the Flyte Deck 'evaluation' of the evaluate task.",
            "",
            f"MLflow parent run: {parent_run_id} ({tracking_uri})",
            (
                f"Registered model: {registration.model_name} version {registration.version} aliases "
                f"{', '.join(registration.aliases)} (selected: {registration.init} {registration.probe} at label "
                f"fraction {registration.label_fraction:g})"
            ),
            f"Promotion gate: {registration.decision}",
            f"Champion: {registration.model_name} version {registration.champion_version or '(none)'}",
        ]
    )


def _seeds_note(results: pd.DataFrame) -> str:
    seeds = sorted(set(results["seed"]))
    return (
        f"{len(seeds)} seeds, the bootstrap resamples them too"
        if len(seeds) > 1
        else "one seed: retraining variance is not in the interval"
    )

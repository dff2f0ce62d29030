"""The evaluation report as an HTML page for a Flyte Deck (the validation report: reporting/dataset_report.py)."""

from __future__ import annotations

import base64
import html

import pandas as pd

from sslflow.reporting.tables import corruption_markdown, results_markdown


def evaluation_html(results: pd.DataFrame, figures: dict[str, bytes]) -> str:
    images = "".join(
        f'<h4>{html.escape(name)}</h4><img src="data:image/png;base64,{base64.b64encode(png).decode()}"/>'
        for name, png in figures.items()
    )
    tables = (
        f"<h4>Accuracy</h4><pre>{html.escape(results_markdown(results))}</pre>"
        f"<h4>Corruptions</h4><pre>{html.escape(corruption_markdown(results))}</pre>"
    )
    return images + tables + results.to_html(index=False, float_format=lambda v: f"{v:.4f}")

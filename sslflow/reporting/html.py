"""HTML pages for Flyte Decks and MLflow artifacts: the evaluation report and the validation report."""

from __future__ import annotations

import base64
import html
import json

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


def validation_html(dataset_name: str, report: dict) -> str:
    rows = []
    for suite in ("manifest", "label_counts"):
        for item in (report[suite] or {}).get("results", []):
            config = item["expectation_config"]
            status = "pass" if item["success"] else "FAIL"
            rows.append(
                f"<tr><td>{status}</td><td>{suite}</td><td>{html.escape(config['type'])}</td>"
                f"<td>{html.escape(str(config['kwargs'].get('column', '')))}</td></tr>"
            )
    ingest_summary = report.get("ingest", {})
    skipped = [f"<li>{html.escape(item['problem'])}</li>" for item in ingest_summary.get("quarantined", [])]
    return (
        f"<h3>Validation of {html.escape(dataset_name)}: {'passed' if report['success'] else 'FAILED'}</h3>"
        f"<p>Case sizes: {html.escape(json.dumps(report['case_sizes']))}</p>"
        + "".join(f"<pre>{html.escape(line)}</pre>" for line in report["failures"])
        + "<table><tr><th>status</th><th>suite</th><th>expectation</th><th>column</th></tr>"
        + "".join(rows)
        + "</table>"
        + (f"<p>Quarantined by ingest ({len(skipped)}):</p><ul>{''.join(skipped)}</ul>" if skipped else "")
        + "".join(f"<p>Warning: {html.escape(warning)}</p>" for warning in report.get("warnings", []))
        + "<p>Duplicates dropped by ingest: "
        + f"{html.escape(json.dumps(ingest_summary.get('duplicate_examples', [])))}</p>"
    )

"""What the data workflow reports on a dataset: the validation report as an HTML page (validate's Flyte Deck) and the
closing text `pyflyte run` prints for a dataset checked by validate_data.

Nothing here knows a model: the data workflow's tasks import this, not the evaluation's reporting, so that their pods
and every `pyflyte run` of workflows/data.py start without PyTorch or scikit-learn (about 2.5 s of CPU each).
"""

from __future__ import annotations

import html
import json


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


def dataset_summary(
    name: str, num_images: int, content_sha256: str, summary: dict, parent_run_id: str, tracking_uri: str
) -> str:
    """What a valid dataset holds (ingest's summary.json) and where its MLflow run is."""
    quarantined = summary.get("quarantined", [])
    lines = [
        f"dataset {name!r} is valid: {num_images} images, {summary.get('cases', '?')} cases, "
        f"{summary.get('labelled', '?')} labelled, splits {summary.get('split_counts', {})}",
        f"duplicates dropped: {summary.get('duplicates_dropped', 0)}; quarantined: {len(quarantined)} (held back: "
        f"{summary.get('held_back', {})})",
        *[f"  quarantined {item['problem']}" for item in quarantined],
        f"not listed in metadata.csv, not used: {summary.get('unlisted_files', {}).get('count', 0)} image file(s)",
        *[f"warning: {warning}" for warning in summary.get("warnings", [])],
        f"sites: {summary.get('sites', {})}; modalities: {summary.get('modalities', {})}",
        f"skipped (DICOM objects without an image): {summary.get('skipped_non_image', {})}",
        f"content sha256: {content_sha256}",
        f"MLflow parent run: {parent_run_id} ({tracking_uri})",
        json.dumps(
            {
                "images": num_images,
                "cases": summary.get("cases"),
                "sites": len(summary.get("sites", {})),
                "modalities": summary.get("modalities", {}),
                "skipped": sum(summary.get("skipped_non_image", {}).values()),
                "quarantined": len(quarantined),
                "unlisted_files": summary.get("unlisted_files", {}).get("count", 0),
            },
            sort_keys=True,
        ),  # the last line: machine-readable
    ]
    return "\n".join(lines)

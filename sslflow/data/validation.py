"""The great-expectations 1.x suite over a dataset manifest (validate's checks).

Checks: schema, nulls, image decoded for every row and side lengths in range, no duplicate images,
no case in two splits, split values, label values (no surrounding blanks; in
ValidationConfig.allowed_labels when given), and enough labels per class for every requested label
fraction. Also reported, not checked: case-size statistics (MICLe needs cases with two or more
images; single-image cases fall back to two augmentations of one image) and the files ingest
quarantined or dropped as duplicates. Each failure names the expectation, its column and the
offending files (source_path). The task (tasks/validate.py) shows the result as a Flyte Deck and logs it to MLflow (JSON + HTML).
"""

from __future__ import annotations

import json
import math
import os

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

import great_expectations as gx  # noqa: E402
import pandas as pd  # noqa: E402
from great_expectations.data_context.types.base import ProgressBarsConfig  # noqa: E402

from sslflow.config import ValidationConfig  # noqa: E402
from sslflow.data.manifest import MANIFEST_COLUMNS  # noqa: E402

E = gx.expectations
LABEL_PATTERN = r"^\S(?:.*\S)?\Z"  # one line, no leading or trailing blanks ("cat " and "cat" would be two classes)
MAX_OFFENDING_ROWS = 20


class DataValidationError(ValueError):
    """The dataset failed validation; the message lists every failing expectation."""


def _suite(name: str, expectations: list) -> gx.ExpectationSuite:
    suite = gx.ExpectationSuite(name=name)
    for expectation in expectations:
        suite.add_expectation(expectation)
    return suite


def manifest_expectations(config: ValidationConfig, image_count: int) -> list:
    expectations = [
        E.ExpectTableColumnsToMatchSet(column_set=[*MANIFEST_COLUMNS, "splits_of_case"], exact_match=True),  # + derived
        E.ExpectTableRowCountToEqual(value=image_count),  # every manifest row has a decoded image
        E.ExpectTableRowCountToBeBetween(min_value=1),
        *[E.ExpectColumnValuesToNotBeNull(column=column) for column in ("sha256", "source_path", "case_id", "site", "split")],
        E.ExpectColumnValuesToBeUnique(column="sha256"),
        E.ExpectColumnValuesToBeInSet(column="split", value_set=["train", "val", "test"]),
        E.ExpectColumnValuesToBeBetween(column="width", min_value=config.min_image_side, max_value=config.max_image_side),
        E.ExpectColumnValuesToBeBetween(column="height", min_value=config.min_image_side, max_value=config.max_image_side),
        E.ExpectColumnValuesToBeBetween(column="size_bytes", min_value=1),
        E.ExpectColumnValuesToBeInSet(column="splits_of_case", value_set=[1]),
    ]
    if config.require_labels:
        expectations.append(E.ExpectColumnValuesToNotBeNull(column="label"))
    expectations.append(E.ExpectColumnValuesToMatchRegex(column="label", regex=LABEL_PATTERN))
    if config.allowed_labels:
        expectations.append(E.ExpectColumnValuesToBeInSet(column="label", value_set=list(config.allowed_labels)))
    return expectations


def label_count_expectations(label_fractions: list[float]) -> list:
    """Each class needs floor(fraction * train_labels) >= 1 at the smallest fraction."""
    needed = math.ceil(1 / min(label_fractions) - 1e-9)
    return [
        E.ExpectTableRowCountToBeBetween(min_value=2),  # at least two classes
        E.ExpectColumnValuesToBeBetween(column="train_labels", min_value=needed),
    ]


def _run(name: str, frame: pd.DataFrame, expectations: list, row_names: list[str]) -> dict:
    """Validate ``frame``; failing column checks list their rows by the ``row_names`` columns."""
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (
        context.data_sources.add_pandas(name)
        .add_dataframe_asset(name=name)
        .add_batch_definition_whole_dataframe(name)
        .get_batch(batch_parameters={"dataframe": frame})
    )
    result_format = {"result_format": "SUMMARY", "partial_unexpected_count": MAX_OFFENDING_ROWS, "unexpected_index_column_names": row_names}
    return batch.validate(_suite(name, expectations), result_format=result_format).to_json_dict()


def _offending(outcome: dict, column: str | None) -> str:
    """The rows (source_path: column=value) or the observed value behind one failing expectation."""
    rows = outcome.get("partial_unexpected_index_list")
    if rows:
        names = [f"{row.get('source_path', row.get('label', '?'))}: {column}={row.get(column)!r}" for row in rows[:MAX_OFFENDING_ROWS]]
        more = outcome.get("unexpected_count", len(rows)) - len(names)
        return "; ".join(names) + (f"; ... and {more} more" if more > 0 else "")
    if outcome.get("partial_unexpected_list"):
        return json.dumps(outcome["partial_unexpected_list"], default=str)[:400]
    return f"observed {json.dumps(outcome.get('observed_value'), default=str)[:400]}"


def failures(result: dict) -> list[str]:
    """One line per failing expectation: its type, column and arguments, and the offending rows or value."""
    lines = []
    for item in result["results"]:
        if item["success"]:
            continue
        config = item["expectation_config"]
        kwargs = {k: v for k, v in config["kwargs"].items() if k not in ("batch_id", "column")}
        column = config["kwargs"].get("column")
        error = (item.get("exception_info") or {}).get("exception_message")
        offending = f"error: {error}" if error else _offending(item.get("result") or {}, column)
        where = f" column {column!r}" if column else ""
        lines.append(f"{config['type']}{where} {json.dumps(kwargs, default=str)} failed; offending: {offending}")
    return lines


def case_size_statistics(frame: pd.DataFrame) -> dict:
    """How many images each case has: what MICLe can pair (cases of 2+ images) and what it cannot."""
    case_sizes = frame.groupby("case_id").size()
    multi = case_sizes[case_sizes >= 2]
    return {
        "cases": int(len(case_sizes)),
        "single_image_cases": int((case_sizes == 1).sum()),
        "multi_image_cases": int(len(multi)),
        "images_in_multi_image_cases": int(multi.sum()),
        "mean_images_per_case": float(case_sizes.mean()) if len(case_sizes) else 0.0,
        "max_images_per_case": int(case_sizes.max()) if len(case_sizes) else 0,
        "cases_by_size": {str(size): int(count) for size, count in case_sizes.value_counts().sort_index().items()},
    }


def validate_manifest(manifest: pd.DataFrame, image_count: int, config: ValidationConfig, label_fractions: list[float]) -> dict:
    """Run both suites. Returns {"success", "manifest", "label_counts", "failures", "case_sizes"}."""
    frame = manifest.copy()
    frame["splits_of_case"] = frame.groupby("case_id")["split"].transform("nunique")
    row_names = ["source_path"] if "source_path" in frame.columns else []
    manifest_result = _run("manifest", frame, manifest_expectations(config, image_count), row_names)
    labelled_train = frame[(frame["split"] == "train") & frame["label"].notna()]
    label_counts = labelled_train.groupby("label").size().rename("train_labels").reset_index()
    label_result = _run("label_counts", label_counts, label_count_expectations(label_fractions), ["label"]) if label_fractions else None
    failing = failures(manifest_result) + (failures(label_result) if label_result else [])
    return {
        "success": not failing,
        "failures": failing,
        "manifest": manifest_result,
        "label_counts": label_result,
        "train_labels_per_class": {str(label): int(count) for label, count in zip(label_counts["label"], label_counts["train_labels"])},
        "case_sizes": case_size_statistics(frame),
    }

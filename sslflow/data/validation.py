"""The great-expectations 1.x suite over a dataset manifest (validate's checks).

Checks: schema, nulls, image decoded for every row and side lengths in range, no duplicate images,
no case in two splits, split values, label values (no surrounding blanks; in
ValidationConfig.allowed_labels when given), and enough labels per class for every requested label
fraction: every class labelled in any split needs ceil(1 / smallest fraction) training labels (a
class only in val or test cannot be predicted, and would fail evaluation after all the training),
and the val, gate and test splits a labelled image each (a small folder can leave one empty).
Also reported, not checked: case-size statistics (MICLe needs cases with two or more images;
single-image cases fall back to two augmentations of one image) and the files ingest quarantined or
dropped as duplicates. Each failure names the expectation, its column, the offending images (image_key, the
pseudonymous key ingest gave each file: sslflow/data/manifest.py) and what to do
(sslflow/data/validation_advice.py). The task (tasks/validate.py) shows the result as a Flyte Deck and logs it
to MLflow (JSON + HTML).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

import great_expectations as gx  # noqa: E402
import pandas as pd  # noqa: E402
from great_expectations.data_context.types.base import ProgressBarsConfig  # noqa: E402

from sslflow.config import (
    ValidationConfig,  # noqa: E402
    check_label_fractions,  # noqa: E402
)
from sslflow.data.manifest import MANIFEST_COLUMNS  # noqa: E402
from sslflow.data.metadata import canonical_label  # noqa: E402
from sslflow.data.validation_advice import what_to_do  # noqa: E402
from sslflow.errors import Refusal  # noqa: E402

E = gx.expectations
LABEL_PATTERN = r"^\S(?:.*\S)?\Z"  # one line, no leading or trailing blanks ("cat " and "cat" would be two classes)
MAX_OFFENDING_ROWS = 20
SPLITS = ("train", "val", "gate", "test")


class DataValidationError(Refusal, ValueError):
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
        *[
            E.ExpectColumnValuesToNotBeNull(column=column)
            for column in ("sha256", "image_key", "case_id", "site", "split")
        ],
        E.ExpectColumnValuesToBeUnique(column="sha256"),
        E.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
        E.ExpectColumnValuesToBeBetween(
            column="width", min_value=config.min_image_side, max_value=config.max_image_side
        ),
        E.ExpectColumnValuesToBeBetween(
            column="height", min_value=config.min_image_side, max_value=config.max_image_side
        ),
        E.ExpectColumnValuesToBeBetween(column="size_bytes", min_value=1),
        E.ExpectColumnValuesToBeInSet(column="splits_of_case", value_set=[1]),
        *[
            E.ExpectColumnValuesToNotBeNull(column=column)
            for column in ("pixel_mean", "pixel_std", "shard", "shard_row")
        ],
        E.ExpectColumnValuesToBeBetween(
            column="pixel_mean", min_value=0, max_value=255
        ),  # per-image statistics from ingest
        E.ExpectColumnValuesToBeBetween(column="pixel_std", min_value=0, max_value=128),
    ]
    if config.require_labels:
        expectations.append(E.ExpectColumnValuesToNotBeNull(column="label"))
    expectations.append(E.ExpectColumnValuesToMatchRegex(column="label", regex=LABEL_PATTERN))
    if config.allowed_labels:
        allowed = [
            canonical_label(label) or label for label in config.allowed_labels
        ]  # "1.0" allows "1", as ingest spells it
        expectations.append(E.ExpectColumnValuesToBeInSet(column="label", value_set=allowed))
    return expectations


def label_count_expectations(label_fractions: Sequence[float]) -> list:
    """Each class needs floor(fraction * train_labels) >= 1 at the smallest fraction, and val, gate and test need a
    labelled image each (ValueError for a bad fraction)."""
    check_label_fractions(label_fractions)
    needed = math.ceil(1 / min(label_fractions) - 1e-9)
    return [
        E.ExpectTableRowCountToBeBetween(min_value=2),  # at least two classes
        E.ExpectColumnValuesToBeBetween(column="train_labels", min_value=needed),
        # fine-tune selects on val, register gates on gate, evaluate scores test: each needs a labelled image
        *[E.ExpectColumnSumToBeBetween(column=f"{split}_labels", min_value=1) for split in ("val", "gate", "test")],
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
    result_format = {
        "result_format": "SUMMARY",
        "partial_unexpected_count": MAX_OFFENDING_ROWS,
        "unexpected_index_column_names": row_names,
    }
    return batch.validate(_suite(name, expectations), result_format=result_format).to_json_dict()


def _row_name(row: dict) -> str:
    """A failing row by its file (manifest) or its class (label counts)."""
    if "image_key" in row:
        return str(row["image_key"])
    return f"class {row['label']!r}" if "label" in row else "?"


def _offending(outcome: dict, column: str | None) -> str:
    """The rows (image_key: column=value) or the observed value behind one failing expectation."""
    rows = outcome.get("partial_unexpected_index_list")
    if rows:
        names = [f"{_row_name(row)}: {column}={row.get(column)!r}" for row in rows[:MAX_OFFENDING_ROWS]]
        more = outcome.get("unexpected_count", len(rows)) - len(names)
        return "; ".join(names) + (f"; ... and {more} more" if more > 0 else "")
    if outcome.get("partial_unexpected_list"):
        return json.dumps(outcome["partial_unexpected_list"], default=str)[:400]
    return f"observed {json.dumps(outcome.get('observed_value'), default=str)[:400]}"


def failures(result: dict, label_counts: pd.DataFrame | None = None) -> list[str]:
    """One entry per failing expectation: its type, column and arguments, the offending rows or value, and what to do
    (sslflow/data/validation_advice.py; label_counts: the frame the label-count suite checked)."""
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
        advice = what_to_do(config["type"], column, kwargs, label_counts)
        lines.append(
            f"{config['type']}{where} {json.dumps(kwargs, default=str)} failed; offending: {offending}\n    what to "
            f"do: {advice}"
        )
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


def labels_per_class(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per class labelled in any split: label, train_labels, val_labels, gate_labels, test_labels (counts, 0
    when none)."""
    labelled = frame[frame["label"].notna()]
    classes = sorted(set(labelled["label"]))
    counts = {"label": classes}
    for split in SPLITS:
        in_split = labelled.loc[labelled["split"] == split, "label"].value_counts()
        counts[f"{split}_labels"] = [int(in_split.get(label, 0)) for label in classes]
    return pd.DataFrame(counts)


def validate_manifest(
    manifest: pd.DataFrame, image_count: int, config: ValidationConfig, label_fractions: list[float]
) -> dict:
    """Run both suites. Returns {"success", "manifest", "label_counts", "failures", "case_sizes",
    "train_labels_per_class"}.

    The label-count suite runs only when ``label_fractions`` is not empty; ValueError for a fraction
    outside (0, 1] (check_label_fractions), before anything runs.
    """
    check_label_fractions(label_fractions)
    frame = manifest.copy()
    frame["splits_of_case"] = frame.groupby("case_id")["split"].transform("nunique")
    row_names = ["image_key"] if "image_key" in frame.columns else []
    manifest_result = _run("manifest", frame, manifest_expectations(config, image_count), row_names)
    label_counts = labels_per_class(frame)
    label_result = (
        _run("label_counts", label_counts, label_count_expectations(label_fractions), ["label"])
        if label_fractions
        else None
    )
    failing = failures(manifest_result) + (failures(label_result, label_counts) if label_result else [])
    return {
        "success": not failing,
        "failures": failing,
        "manifest": manifest_result,
        "label_counts": label_result,
        "train_labels_per_class": {
            str(label): int(count) for label, count in zip(label_counts["label"], label_counts["train_labels"])
        },
        "case_sizes": case_size_statistics(frame),
    }

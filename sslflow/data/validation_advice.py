"""What to do about a failing expectation of validate's suite (sslflow/data/validation.py): one sentence a new
user can act on, printed under the expectation's own line. Most entries are one (expectation, column) ->
sentence; the label counts get numbers: the label fractions this data can support.
"""

from __future__ import annotations

import math

import pandas as pd

REINGEST = (
    "the dataset folder is not what ingest writes (a bug, or a folder changed by hand): ingest it again "
    "(make clean-cache, then rerun) and report it if it persists"
)
FIX_METADATA = "in metadata.csv (columns path, case_id, site, label) beside the images"

MANIFEST_ADVICE = {
    (
        "expect_table_row_count_to_be_between",
        None,
    ): "no image was ingested: point the source at a folder, S3 prefix or parquet list of image files",
    (
        "expect_column_values_to_be_between",
        "width",
    ): "remove or resize those files: validate accepts sides from {min_value:g} to {max_value:g} px",
    (
        "expect_column_values_to_be_between",
        "height",
    ): "remove or resize those files: validate accepts sides from {min_value:g} to {max_value:g} px",
    (
        "expect_column_values_to_match_regex",
        "label",
    ): f"remove the blanks around those labels {FIX_METADATA}: 'cat ' and 'cat' would be two classes",
    (
        "expect_column_values_to_be_in_set",
        "label",
    ): "correct those labels, or add them to ValidationConfig.allowed_labels",
    ("expect_column_values_to_not_be_null", "label"): (
        f"every image of an evaluation set (the shift set) needs a label: add the missing ones {FIX_METADATA}, or move "
        "those images out"
    ),
}


def _fewest_training_labels(label_counts: pd.DataFrame, needed: float) -> str:
    """The label fractions that the fewest training labels of a class support, or which classes have none."""
    fewest = int(label_counts["train_labels"].min())
    if fewest == 0:
        missing = ", ".join(repr(label) for label in label_counts.loc[label_counts["train_labels"] == 0, "label"][:10])
        return (
            f"class(es) {missing} have labels only outside the train split, so no fine-tune can learn them: label "
            f"more images of them {FIX_METADATA} (train_fraction of the cases are train), or remove their labels"
        )
    smallest = math.ceil(100 / fewest) / 100  # ceil(1 / f) <= fewest for every f >= 1 / fewest; 2 decimals, rounded up
    fractions = f"[{smallest:g}, 1.0]" if smallest < 1 else "[1.0]"
    return (
        f"the smallest label fraction f needs ceil(1 / f) = {needed:g} training labels of every class; the fewest "
        f"here is {fewest} (class {label_counts.loc[label_counts['train_labels'].idxmin(), 'label']!r}), so pass "
        f"larger label fractions, every one >= {smallest:g}: --label_fractions '{fractions}'; or label more images "
        f"{FIX_METADATA}"
    )


SPLIT_ROLES = {"val": "selects the model", "gate": "the promotion gate decides on", "test": "the evaluation reports"}
# the split's share doubled (defaults: train 0.7, val 0.1, gate 0.1, test the rest), taken from train
LARGER_SHARE = {
    "val": '{"train_fraction": 0.6, "val_fraction": 0.2}',
    "gate": '{"train_fraction": 0.6, "gate_fraction": 0.2}',
    "test": '{"train_fraction": 0.6}',
}


def _empty_split(split: str, label_counts: pd.DataFrame) -> str:
    labelled = int(label_counts[[f"{name}_labels" for name in ("train", "val", "gate", "test")]].to_numpy().sum())
    return (
        f"no labelled image is in the {split} split, which {SPLIT_ROLES[split]}: splits take whole cases by a hash of "
        f"the case id, so with {labelled} labelled images one can stay empty; label more images {FIX_METADATA}, or "
        f"give it a larger share: --domain_ingest '{LARGER_SHARE[split]}'"
    )


def what_to_do(expectation: str, column: str | None, kwargs: dict, label_counts: pd.DataFrame | None = None) -> str:
    """The advice for one failing expectation; ``label_counts`` (validation.labels_per_class) for the label-count
    suite."""
    if label_counts is not None:
        if column == "train_labels":
            return _fewest_training_labels(label_counts, kwargs.get("min_value", 0))
        if column in ("val_labels", "gate_labels", "test_labels"):
            return _empty_split(column.removesuffix("_labels"), label_counts)
        return (
            f"fine-tuning needs labelled images of at least two classes and this data has {len(label_counts)}: "
            f"label images of two or more classes {FIX_METADATA}"
        )
    template = MANIFEST_ADVICE.get((expectation, column))
    return template.format(**kwargs) if template else REINGEST

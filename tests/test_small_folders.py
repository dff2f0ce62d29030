"""A new user's small folder: it must not crash, and what refuses it must say what to do."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from ssl_models.proxy_cases import PROXY_PREFIX, pixel_neighbour_proxy_cases
from sslflow.config import IngestConfig, ValidationConfig
from sslflow.data.chunks import ingest_source
from sslflow.data.sources.builtin import read_mnist_5k
from sslflow.data.validation import validate_manifest


def _digit_folder(root: Path, count: int, *, labelled: bool = False) -> Path:
    """``count`` MNIST digits saved as PNG files in ``root``, one case each; with their labels in metadata.csv if
    ``labelled``."""
    root.mkdir(parents=True)
    digits = read_mnist_5k()
    rows = [
        (i * 499 + i // 10) % len(digits.pixels) for i in range(count)
    ]  # mnist_5k.csv is sorted by label: every digit
    for i, row in enumerate(rows):
        Image.fromarray(digits.pixels[row, 0]).save(root / f"scan{i}.png")
    if labelled:
        pd.DataFrame(
            {"path": [f"scan{i}.png" for i in range(count)], "label": [digits.labels[row] for row in rows]}
        ).to_csv(root / "metadata.csv", index=False)
    return root


@pytest.mark.parametrize("count", [1, 2, 3, 8, 9])
def test_proxy_cases_group_any_number_of_images(count):
    """Eight or fewer images have fewer than eight neighbours each; they are still paired."""
    pixels = read_mnist_5k().pixels[:count]
    case_ids = pixel_neighbour_proxy_cases(pixels)
    assert len(case_ids) == count and all(case.startswith(PROXY_PREFIX) for case in case_ids)
    sizes = sorted(case_ids.count(case) for case in set(case_ids))
    assert sizes == [1] * (count % 2) + [2] * (count // 2)  # pairs, and one left alone when the count is odd
    assert pixel_neighbour_proxy_cases(pixels[:0]) == []


def test_a_folder_of_five_images_is_ingested_with_proxy_cases(tmp_path):
    folder = _digit_folder(tmp_path / "scans", 5)
    _, manifest, _ = ingest_source(str(folder), IngestConfig(proxy_cases=True), tmp_path / "dataset")
    assert len(manifest) == 5 and manifest["case_id_is_proxy"].all()
    assert manifest["case_id"].nunique() == 3  # two pairs and one single image


def _advice(report: dict) -> str:
    assert not report["success"]
    return "\n".join(line.split("what to do: ", 1)[1] for line in report["failures"])


def test_ninety_labelled_images_are_told_which_label_fractions_work(tmp_path):
    """The default fractions (0.01 needs 100 training labels per class) refuse 90 labelled images; the refusal
    names fractions that pass, and they do."""
    _, manifest, _ = ingest_source(
        str(_digit_folder(tmp_path / "scans", 90, labelled=True)), IngestConfig(), tmp_path / "dataset"
    )
    refused = validate_manifest(manifest, len(manifest), ValidationConfig(), [0.01, 0.1, 1.0])
    advice = _advice(refused)
    assert "expect_column_values_to_be_between column 'train_labels' {\"min_value\": 100.0}" in refused["failures"][0]
    suggested = re.search(r"--label_fractions '(\[[0-9., ]+\])'", advice)
    assert suggested and "the fewest here is" in advice
    assert validate_manifest(manifest, len(manifest), ValidationConfig(), json.loads(suggested.group(1)))["success"]


@pytest.fixture(scope="module")
def small_manifest(tmp_path_factory) -> pd.DataFrame:
    """The manifest of a real 40-image folder, digits 0-9 labelled."""
    root = tmp_path_factory.mktemp("small")
    return ingest_source(str(_digit_folder(root / "scans", 40, labelled=True)), IngestConfig(), root / "dataset")[1]


def _one_class(manifest: pd.DataFrame) -> pd.DataFrame:
    return manifest.assign(label=pd.array(["7"] * len(manifest), dtype="string"))


def _class_only_in_test(manifest: pd.DataFrame) -> pd.DataFrame:
    manifest = manifest.copy()
    manifest.loc[manifest.index[manifest["split"] == "test"][0], "label"] = "unseen"
    return manifest


def _unlabel_split(manifest: pd.DataFrame, split: str) -> pd.DataFrame:
    manifest = manifest.copy()
    manifest.loc[manifest["split"] == split, "label"] = None
    return manifest


def _edited(column: str, value) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def edit(manifest: pd.DataFrame) -> pd.DataFrame:
        manifest = manifest.copy()
        manifest[column] = manifest[column].astype(object)
        manifest.loc[manifest.index[3], column] = value
        return manifest

    return edit


@pytest.mark.parametrize(
    ("case", "edit", "config", "fractions", "expected"),
    [
        (
            "one labelled class",
            _one_class,
            ValidationConfig(),
            [1.0],
            "at least two classes and this data has 1: label images of two or more",
        ),
        (
            "a class only in test",
            _class_only_in_test,
            ValidationConfig(),
            [1.0],
            "'unseen' have labels only outside the train split",
        ),
        (
            "no labelled val image",
            lambda manifest: _unlabel_split(manifest, "val"),
            ValidationConfig(),
            [1.0],
            "no labelled image is in the val split, which selects the model",
        ),
        (
            "no labelled gate image",
            lambda manifest: _unlabel_split(manifest, "gate"),
            ValidationConfig(),
            [1.0],
            """--domain_ingest '{"train_fraction": 0.6, "gate_fraction": 0.2}'""",
        ),
        (
            "no labelled test image",
            lambda manifest: _unlabel_split(manifest, "test"),
            ValidationConfig(),
            [1.0],
            """--domain_ingest '{"train_fraction": 0.6}'""",
        ),
        (
            "a 5 px image",
            _edited("width", 5),
            ValidationConfig(),
            [],
            "remove or resize those files: validate accepts sides from 8 to 8192 px",
        ),
        (
            "a label with a blank",
            _edited("label", "3 "),
            ValidationConfig(),
            [],
            "remove the blanks around those labels in metadata.csv",
        ),
        (
            "a label not allowed",
            _edited("label", "x"),
            ValidationConfig(allowed_labels=[str(d) for d in range(10)]),
            [],
            "add them to ValidationConfig.allowed_labels",
        ),
        (
            "an unlabelled shift image",
            _edited("label", None),
            ValidationConfig(require_labels=True),
            [],
            "every image of an evaluation set (the shift set) needs a label",
        ),
        ("no image", lambda manifest: manifest.iloc[:0], ValidationConfig(), [], "no image was ingested"),
        (
            "a changed dataset folder",
            lambda manifest: _edited("sha256", manifest["sha256"].iloc[4])(manifest),
            ValidationConfig(),
            [],
            "ingest it again (make clean-cache, then rerun)",
        ),
    ],
)
def test_every_refusal_says_what_to_do(small_manifest, case, edit, config, fractions, expected):
    manifest = edit(small_manifest)
    report = validate_manifest(manifest, len(manifest), config, fractions)
    assert expected in _advice(report), report["failures"]
    assert all("\n    what to do: " in line for line in report["failures"])

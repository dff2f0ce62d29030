import numpy as np
import pandas as pd

from sslflow.config import IngestConfig, ValidationConfig
from sslflow.data.manifest import decoded_table, finish_manifest
from sslflow.data.types import SourceImages
from sslflow.data.validation import validate_manifest


def _manifest(count=200, classes=4):
    labels = [str(i % classes) for i in range(count)]
    images = SourceImages(
        pixels=np.random.default_rng(0).integers(0, 256, (count, 1, 8, 8), dtype=np.uint8),
        source_paths=[f"img{i}.png" for i in range(count)],
        labels=labels,
        case_ids=[f"case{i // 2}" for i in range(count)],
        sites=["a"] * count,
        size_bytes=[64] * count,
        modes=["L"] * count,
        widths=[8] * count,
        heights=[8] * count,
    )
    config = IngestConfig(image_size=8)
    manifest, kept, _ = finish_manifest(decoded_table(images, config), config)
    return manifest.assign(shard="0" * 64, shard_row=range(len(manifest))), len(
        kept
    )  # as in a dataset, all in one shard


def test_clean_manifest_passes():
    manifest, count = _manifest()
    report = validate_manifest(manifest, count, ValidationConfig(), [0.1, 1.0])
    assert report["success"], report["failures"]
    assert report["case_sizes"]["cases"] == 100


def test_case_leakage_and_duplicates_are_named():
    manifest, count = _manifest()
    first, second = manifest.index[manifest["case_id"] == manifest.loc[0, "case_id"]]
    manifest.loc[first, "split"], manifest.loc[second, "split"] = "train", "test"  # one case in two splits
    manifest.loc[5, "sha256"] = manifest.loc[6, "sha256"]
    report = validate_manifest(manifest, count, ValidationConfig(), [])
    joined = "\n".join(report["failures"])
    assert not report["success"]
    assert "expect_column_values_to_be_unique" in joined and manifest.loc[6, "sha256"] in joined
    assert "splits_of_case" in joined


def test_too_few_labels_for_the_smallest_fraction():
    manifest, count = _manifest(count=40)
    report = validate_manifest(manifest, count, ValidationConfig(), [0.01])
    assert not report["success"]
    assert "train_labels" in "\n".join(report["failures"])


def test_missing_labels_fail_when_required_and_row_count_must_match_images():
    manifest, count = _manifest()
    manifest["label"] = pd.array([None] * len(manifest), dtype="string")
    report = validate_manifest(manifest, count + 1, ValidationConfig(require_labels=True), [])
    joined = "\n".join(report["failures"])
    assert "expect_column_values_to_not_be_null" in joined and "expect_table_row_count_to_equal" in joined


def test_label_values_outside_the_allowed_set_or_with_blanks_are_named_with_their_file():
    manifest, count = _manifest()
    manifest["label"] = manifest["label"].astype("string")
    manifest.loc[3, "label"] = "7"
    manifest.loc[4, "label"] = "2 "
    report = validate_manifest(manifest, count, ValidationConfig(allowed_labels=["0", "1", "2", "3"]), [])
    joined = "\n".join(report["failures"])
    assert "expect_column_values_to_be_in_set column 'label'" in joined and "img3.png: label='7'" in joined
    assert "expect_column_values_to_match_regex column 'label'" in joined and "img4.png: label='2 '" in joined
    assert validate_manifest(_manifest()[0], count, ValidationConfig(allowed_labels=["0", "1", "2", "3"]), [])[
        "success"
    ]


def test_failing_column_checks_name_the_offending_files():
    manifest, count = _manifest()
    manifest.loc[7, "width"] = 3
    report = validate_manifest(manifest, count, ValidationConfig(), [])
    assert any("column 'width'" in line and "img7.png: width=3" in line for line in report["failures"]), report[
        "failures"
    ]


def test_case_size_statistics_for_micle():
    manifest, count = _manifest(count=10)  # five cases of two images
    manifest.loc[9, "case_id"] = "alone"
    stats = validate_manifest(manifest, count, ValidationConfig(), [])["case_sizes"]
    assert stats == {
        "cases": 6,
        "single_image_cases": 2,
        "multi_image_cases": 4,
        "images_in_multi_image_cases": 8,
        "mean_images_per_case": 10 / 6,
        "max_images_per_case": 2,
        "cases_by_size": {"1": 2, "2": 4},
    }


def test_all_unlabelled_dataset_passes_label_checks():
    manifest, count = _manifest()
    manifest["label"] = pd.array([None] * len(manifest), dtype="string")
    assert validate_manifest(manifest, count, ValidationConfig(allowed_labels=["0"]), [])["success"]

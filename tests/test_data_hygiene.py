"""Caching and refusals a user can trust: every bad input is refused naming its file, row or field.

NUL bytes and over-long names in metadata paths, one spelling per numeric label, identical images with
different labels, classes without training labels, label fractions outside (0, 1], float images with
NaN or infinite pixels, 12-bit data in 16-bit files (IngestConfig.bits_stored) and files over
IngestConfig.max_file_bytes. New API is imported inside the tests that use it.
"""

import io

import numpy as np
import pandas as pd
import pytest
from ingested import image_keys, ingest
from ingested import labels as labels_of
from PIL import Image

from sslflow.config import IngestConfig, ValidationConfig
from sslflow.data.image_keys import paths_of_keys
from sslflow.data.listing import ListingReader
from sslflow.data.manifest import decoded_table, finish_manifest
from sslflow.data.metadata import ImageRecord, metadata_rows, parse_metadata_csv
from sslflow.data.pseudonyms import Pseudonyms
from sslflow.data.types import SourceError, SourceImages, UndecodableImageError
from sslflow.data.validation import validate_manifest

CONFIG = IngestConfig(image_size=16)


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (20, 24), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _folder(root, count: int = 4, metadata: str | None = None):
    """``count`` distinct 8-bit PNGs img0.png ... and, when given, the text of metadata.csv."""
    root.mkdir(exist_ok=True)
    for i in range(count):
        (root / f"img{i}.png").write_bytes(_png(i))
    if metadata is not None:
        (root / "metadata.csv").write_text(metadata)
    return root


def _save(array: np.ndarray, path, format_name: str) -> None:
    Image.fromarray(array).save(path, format=format_name)


# 1. Metadata paths that no file can have are refused naming the file, row and column.


def test_nul_byte_in_a_csv_path_is_refused_naming_the_row(tmp_path):
    root = _folder(tmp_path / "scans", metadata="path,label\nimg0.png,a\nimg\x001.png,b\n")
    with pytest.raises(SourceError, match=r"metadata.csv row 3, column 'path': 'img\\x001.png' contains a NUL byte"):
        ingest(root, CONFIG)


def test_nul_byte_in_a_parquet_path_is_refused_naming_the_row(tmp_path):
    root = _folder(tmp_path / "scans")
    pd.DataFrame({"path": ["img0.png", "img1.png", "img\x002.png"]}).to_parquet(root / "cohort.parquet")
    with pytest.raises(SourceError, match=r"cohort.parquet row 2, column 'path': .* contains a NUL byte"):
        ingest(root / "cohort.parquet", CONFIG)


@pytest.mark.parametrize("name, length", [("x" * 252 + ".png", 256), ("é" * 126 + ".png", 256)])
def test_a_path_component_over_255_bytes_is_refused_naming_the_row(tmp_path, name, length):
    root = _folder(tmp_path / "scans", metadata=f"path,label\nimg0.png,a\n{name},b\n")
    with pytest.raises(
        SourceError,
        match=rf"metadata.csv row 3, column 'path': the name .* is {length} bytes in UTF-8, longer than the 255",
    ):
        ingest(root, CONFIG)
    pd.DataFrame({"path": ["img0.png", name]}).to_parquet(root / "cohort.parquet")
    with pytest.raises(SourceError, match=r"cohort.parquet row 1, column 'path': the name .* longer than the 255"):
        ingest(root / "cohort.parquet", CONFIG)


# 2. A numeric label has one spelling whatever the source.


def test_numeric_label_spellings_are_one_class_in_csv_and_parquet(tmp_path):
    labels = ["1", "1.0", " 1e0", "01", "2", "0.5", "cat", ""]
    expected = ["1", "1", "1", "1", "2", "0.5", "cat", None]
    rows = "".join(f"img{i}.png,{label}\n" for i, label in enumerate(labels))
    root = _folder(tmp_path / "scans", count=len(labels), metadata="path,label\n" + rows)
    assert labels_of(ingest(root, CONFIG)[0]) == expected
    pd.DataFrame({"path": [f"img{i}.png" for i in range(3)], "label": [1.0, 2.0, None]}).to_parquet(
        root / "floats.parquet"
    )
    pd.DataFrame({"path": [f"img{i}.png" for i in range(3)], "label": [1, 2, 1]}).to_parquet(root / "ints.parquet")
    assert labels_of(ingest(root / "floats.parquet", CONFIG)[0]) == ["1", "2", None]
    assert labels_of(ingest(root / "ints.parquet", CONFIG)[0]) == ["1", "2", "1"]


def test_metadata_rows_canonicalise_labels_for_every_source():
    """The S3 source parses its metadata.csv with the same two functions as a folder."""
    table = parse_metadata_csv(
        b"path,label\na.png,3.00\nb.png,-0\nc.png,1e-1\nd.png,nan\ne.png,12345678901234567890.0\n",
        "s3://b/p/metadata.csv",
    )
    labels = [row["label"] for row in metadata_rows(table, "s3://b/p/metadata.csv", first_row=2)]
    assert labels == ["3", "0", "1e-1", "nan", "12345678901234567890"]  # exact, never rounded through float


# 3. Identical images with different labels are refused; with one label they are kept once.


def test_identical_images_with_different_labels_are_refused_naming_both(tmp_path):
    root = _folder(
        tmp_path / "scans", count=3, metadata="path,label\nimg0.png,cat\nimg1.png,dog\nimg2.png,cat\ncopy.png,dog\n"
    )
    (root / "copy.png").write_bytes((root / "img0.png").read_bytes())
    with pytest.raises(SourceError, match=r"identical images .* different labels") as caught:
        ingest(root, CONFIG)
    first, second = (Pseudonyms().pseudonym("file", path) for path in ("img0.png", "copy.png"))
    assert f"{first} (label 'cat') and {second} (label 'dog')" in str(
        caught.value
    )  # named by key; the keys lead back to the files:
    assert paths_of_keys(str(root), [first, second]) == {first: "img0.png", second: "copy.png"}
    assert "img0.png" not in str(caught.value) and "python -m sslflow.data.image_keys" in str(caught.value)
    assert (
        str(caught.value).splitlines()[-1].startswith("Correct the label or remove the copy")
    )  # the refusal ends with the fix


def test_identical_images_with_one_label_are_kept_once_with_that_label(tmp_path):
    root = _folder(
        tmp_path / "scans", count=3, metadata="path,label\nimg0.png,\nimg1.png,dog\nimg2.png,dog\ncopy.png,cat\n"
    )
    (root / "copy.png").write_bytes((root / "img0.png").read_bytes())
    (root / "copy2.png").write_bytes((root / "img1.png").read_bytes())
    (root / "metadata.csv").write_text((root / "metadata.csv").read_text() + "copy2.png,dog\n")
    manifest, _, summary = ingest(root, CONFIG)
    paths = paths_of_keys(str(root), list(manifest["image_key"]) + summary["duplicate_examples"])
    assert [paths[key] for key in manifest["image_key"]] == [
        "img1.png",
        "img2.png",
        "copy.png",
    ]  # the unlabelled img0.png gave way
    assert list(manifest["label"]) == ["dog", "dog", "cat"]
    assert summary["duplicates_dropped"] == 2 and [paths[key] for key in summary["duplicate_examples"]] == [
        "img0.png",
        "copy2.png",
    ]


# 4. Every class needs training labels; label fractions lie in (0, 1].


def _labelled_manifest(count: int = 60) -> pd.DataFrame:
    images = SourceImages(
        pixels=np.random.default_rng(0).integers(0, 256, (count, 1, 8, 8), dtype=np.uint8),
        source_paths=[f"img{i}.png" for i in range(count)],
        labels=[str(i % 2) for i in range(count)],
        case_ids=[f"case{i}" for i in range(count)],
        sites=["a"] * count,
        size_bytes=[64] * count,
        modes=["L"] * count,
        widths=[8] * count,
        heights=[8] * count,
    )
    config = IngestConfig(image_size=8)
    manifest, _, _ = finish_manifest(decoded_table(images, config), config)
    return manifest.assign(shard="0" * 64, shard_row=range(len(manifest)))  # as in a dataset, all in one shard


def test_a_class_labelled_only_outside_train_fails_validation_naming_it():
    manifest = _labelled_manifest()
    assert validate_manifest(manifest, len(manifest), ValidationConfig(), [0.5, 1.0])["success"]
    manifest["label"] = manifest["label"].astype("string")
    manifest.loc[manifest.index[manifest["split"] == "test"][0], "label"] = "rare"
    report = validate_manifest(manifest, len(manifest), ValidationConfig(), [0.5, 1.0])
    assert not report["success"]
    assert any("train_labels" in line and "class 'rare': train_labels=0" in line for line in report["failures"]), (
        report["failures"]
    )
    assert report["train_labels_per_class"]["rare"] == 0


@pytest.mark.parametrize(
    "fractions, index, shown",
    [([0.1, 0.0], 1, "0.0"), ([1.5], 0, "1.5"), ([-0.1], 0, "-0.1"), ([float("nan")], 0, "nan")],
)
def test_label_fractions_outside_0_to_1_are_refused_naming_the_value(fractions, index, shown):
    manifest = _labelled_manifest()
    with pytest.raises(ValueError, match=rf"label_fractions\[{index}\] = {shown} is not a fraction in \(0, 1\]"):
        validate_manifest(manifest, len(manifest), ValidationConfig(), fractions)


def test_check_label_fractions_accepts_fractions_and_an_empty_list():
    from sslflow.data.validation import check_label_fractions

    check_label_fractions([])
    check_label_fractions([0.01, 0.1, 1.0, 1, np.float32(0.5)])
    with pytest.raises(ValueError, match=r"label_fractions\[0\] = '0.1' is not a fraction"):
        check_label_fractions(["0.1"])


# 5. Float images with NaN or infinite pixels are refused (quarantinable); finite ones min-max scaled.


def _float_tiff(path, bad: float, count: int) -> None:
    values = np.linspace(-1.0, 3.0, 100, dtype=np.float32).reshape(10, 10)
    values.flat[:count] = bad
    _save(values, path, "TIFF")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_float_image_with_non_finite_pixels_is_refused_naming_the_count(tmp_path, bad):
    root = _folder(tmp_path / "scans")
    _float_tiff(root / "float.tif", bad, count=3)
    with pytest.raises(
        UndecodableImageError, match=r"float.tif: 3 of 100 pixels of this 32-bit float image are not finite"
    ):
        ingest(root, CONFIG)
    manifest, _, summary = ingest(root, IngestConfig(image_size=16, max_bad_fraction=0.2))
    (key,) = image_keys(["float.tif"])
    assert key not in set(manifest["image_key"]) and summary["quarantined"][0]["image_key"] == key


def test_finite_float_image_is_min_max_scaled(tmp_path):
    root = tmp_path / "scans"
    root.mkdir()
    _float_tiff(root / "float.tif", 0.0, count=0)
    pixels = ingest(root, IngestConfig(image_size=10))[1]
    assert pixels.min() == 0 and pixels.max() == 255


# 6. 12-bit data in 16-bit files: IngestConfig.bits_stored (0 infers the depth per image).


def _sixteen_bit_png(path, maximum: int) -> None:
    values = np.linspace(0, maximum, 256).round().astype(np.uint16).reshape(16, 16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    image.save(path, format="PNG")


def test_12_bit_data_in_a_16_bit_png_uses_the_full_8_bit_range(tmp_path):
    root = tmp_path / "scans"
    root.mkdir()
    _sixteen_bit_png(root / "ct.png", maximum=4095)
    pixels = ingest(root, CONFIG)[1]
    assert pixels.max() == 255, pixels.max()  # scaled by 255/65535 it would be 16: nearly black


def test_bits_stored_fixes_the_scale_and_refuses_values_above_it(tmp_path):
    root = tmp_path / "scans"
    root.mkdir()
    _sixteen_bit_png(root / "dark.png", maximum=3000)
    inferred = ingest(root, CONFIG)[1]  # per image: 12 bits, so 3000 -> 187
    assert inferred.max() == round(3000 / 4095 * 255)
    assert ingest(root, IngestConfig(image_size=16, bits_stored=12))[1].max() == round(3000 / 4095 * 255)
    assert ingest(root, IngestConfig(image_size=16, bits_stored=16))[1].max() == round(3000 / 65535 * 255)
    refused = (
        r"dark.png: maximum pixel value 3000 is above 1023 = 2\*\*10 - 1, "
        r"the largest value IngestConfig.bits_stored=10 allows"
    )
    with pytest.raises(UndecodableImageError, match=refused):
        ingest(root, IngestConfig(image_size=16, bits_stored=10))


@pytest.mark.parametrize(
    "value, problem",
    [
        (-5, r"negative pixel values \(minimum -5\) in a mode I image"),
        (70000, r"maximum pixel value 70000 is above 65535"),
    ],
    ids=["negative", "over-16-bits"],
)
def test_32_bit_integer_values_outside_16_bits_are_refused_not_clipped(tmp_path, value, problem):
    root = tmp_path / "scans"
    root.mkdir()
    values = np.full((10, 10), 1000, dtype=np.int32)
    values[0, 0] = value
    _save(values, root / "wide.tif", "TIFF")
    with pytest.raises(UndecodableImageError, match=rf"wide.tif: {problem}"):
        ingest(root, CONFIG)


def test_eight_bit_images_do_not_depend_on_bits_stored(tmp_path):
    root = _folder(tmp_path / "scans")
    expected = ingest(root, CONFIG)[1]
    for bits in (8, 12, 16):
        assert np.array_equal(ingest(root, IngestConfig(image_size=16, bits_stored=bits))[1], expected)


def test_decode_cache_keeps_each_bits_stored_apart():
    from sslflow.data.decode_cache import DecodeCache

    settings = {DecodeCache.for_config(IngestConfig(bits_stored=bits)).setting for bits in (0, 12, 16)}
    assert len(settings) == 3


@pytest.mark.parametrize("field, value", [("bits_stored", 7), ("bits_stored", 17), ("max_file_bytes", 0)])
def test_ingest_config_refuses_impossible_settings(field, value):
    with pytest.raises(ValueError, match=rf"IngestConfig.{field} must be"):
        IngestConfig(**{field: value})


# 7. A file over IngestConfig.max_file_bytes is refused from its listed size, never read.


def test_file_over_max_file_bytes_is_refused_without_reading_it(tmp_path):
    from sslflow.data.decode_cache import DecodeCache

    small, large = _png(0), _png(1)
    records = [
        ImageRecord(source_path="small.png", location="/data/small.png", size_bytes=len(small)),
        ImageRecord(source_path="huge.png", location="/data/huge.png", size_bytes=10**12),
    ]
    read = []

    def read_bytes(record):
        read.append(record.source_path)
        return small if record.source_path == "small.png" else large

    config = IngestConfig(image_size=16, max_bad_fraction=0.5, max_file_bytes=10**6)
    images = ListingReader(read_bytes, config, DecodeCache(tmp_path / "cache", 16, 1), "test").read(records)
    assert read == ["small.png"] and images.source_paths == ["small.png"]
    (quarantined,) = images.quarantined
    assert quarantined["source_path"] == "huge.png" and quarantined["problem"] == (
        f"/data/huge.png: {10**12} bytes is over IngestConfig.max_file_bytes=1000000; "
        "not read (raise max_file_bytes if the file is a genuine image)"
    )


def test_folder_file_over_max_file_bytes_stops_ingest_naming_it(tmp_path):
    root = _folder(tmp_path / "scans", count=2)
    limit = min(len(_png(0)), len(_png(1))) - 1
    with pytest.raises(
        UndecodableImageError, match=rf"img0.png: \d+ bytes is over IngestConfig.max_file_bytes={limit}"
    ):
        ingest(root, IngestConfig(image_size=16, max_file_bytes=limit))

"""DICOM in: pixel semantics with exact values, every bundled pydicom test file decoded or refused by name,
PACS folders found by content, header identities pseudonymised, bad files refused or quarantined."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import boto3
import botocore.client
import numpy as np
import pandas as pd
import pydicom
import pytest
from dicom_files import PLANTED, PLANTED_FRAGMENTS, write_dicom, write_pacs_folder
from ingested import ingest
from moto_s3 import moto_s3_server, s3_environment
from pydicom.data import get_testdata_file, get_testdata_files

from sslflow.config import IngestConfig
from sslflow.data import chunks as chunks_module
from sslflow.data.chunks import (
    DecodedChunk,
    chunk_json,
    decode_chunk,
    ingest_source,
    join_chunks,
    plan_chunks,
    plan_to_files,
)
from sslflow.data.dataset import read_manifest
from sslflow.data.dicom import NonImageObject, decode_dicom, has_dicom_preamble
from sslflow.data.pseudonyms import KEY_ENV, KEY_FILE_ENV, Pseudonyms
from sslflow.data.sources import fingerprint_source as fingerprint_folder
from sslflow.data.types import SourceError, UndecodableImageError

KEY = "test-key-0123456789abcdef0123456789"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
PYFLYTE = Path(sys.executable).parent / "pyflyte"


@pytest.fixture(autouse=True)
def _key(monkeypatch, tmp_path):
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setenv("SSLFLOW_INGEST_CACHE", str(tmp_path / "ingest-cache"))


def _image_key(path: str) -> str:
    """The image_key ingest gives the file at ``path`` (relative to the source) under the test key."""
    return Pseudonyms(KEY).pseudonym("file", path)


def _decode(path: Path, size: int, **options):
    return decode_dicom(path.read_bytes(), path.name, IngestConfig(image_size=size, **options), Pseudonyms(KEY))


def _standard_window(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 (LINEAR) into [0, 255], rounded: the expected values, written independently of
    pydicom."""
    low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    inside = ((hu - (center - 0.5)) / (width - 1) + 0.5) * 255
    return np.round(np.where(hu <= low, 0, np.where(hu > high, 255, inside))).astype(np.uint8)


STORED = np.array([[0, 864, 1024, 1064], [1263, 1264, 2048, 4095]], dtype=np.uint16)  # 12-bit CT, HU = stored - 1024


def test_ct_to_hounsfield_units_then_the_header_window(tmp_path):
    square = write_dicom(
        tmp_path / "sq",
        STORED[:, :2].reshape(2, 2),
        RescaleSlope=1,
        RescaleIntercept=-1024,
        WindowCenter=40,
        WindowWidth=400,
    )
    pixels = _decode(square, 2).pixels[0, 0]
    hu = STORED[:, :2].astype(float) - 1024  # -1024, -160, 239, 240
    assert pixels.tolist() == _standard_window(hu, 40, 400).tolist() == [[0, 0], [255, 255]]
    full = _decode(
        write_dicom(
            tmp_path / "w",
            np.array([[1024, 1064], [984, 1063]], np.uint16),
            RescaleSlope=1,
            RescaleIntercept=-1024,
            WindowCenter=40,
            WindowWidth=400,
        ),
        2,
    ).pixels[0, 0]
    assert (
        full.tolist()
        == _standard_window(np.array([[0, 40], [-40, 39]], float), 40, 400).tolist()
        == [[102, 128], [77, 127]]
    )
    image = _decode(square, 2)
    assert (
        image.modality == "CT" and image.mode == "DICOM CT MONOCHROME2 12-bit" and image.case_id.startswith("patient-")
    )


def test_full_range_maps_the_whole_12_bit_range_to_8_bits_unclipped(tmp_path):
    values = np.array([[0, 2048], [4095, 1000]], dtype=np.uint16)
    pixels = _decode(
        write_dicom(tmp_path / "ct", values, RescaleSlope=1, RescaleIntercept=-1024), 2, dicom_window="full-range"
    ).pixels[0, 0]
    assert pixels.tolist() == np.round(values / 4095 * 255).astype(int).tolist() == [[0, 128], [255, 62]]
    windowed = write_dicom(
        tmp_path / "w", values, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400
    )
    assert _decode(windowed, 2, dicom_window="full-range").pixels[0, 0].tolist() == [[0, 128], [255, 62]]


def test_ct_preset_replaces_the_header_window(tmp_path):
    values = np.array([[424, 1024], [0, 4095]], dtype=np.uint16)  # HU -600 (lung centre), 0, -1024, 3071
    path = write_dicom(
        tmp_path / "ct", values, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400
    )
    hu = values.astype(float) - 1024
    assert _decode(path, 2, dicom_window="ct-lung").pixels[0, 0].tolist() == _standard_window(hu, -600, 1500).tolist()
    assert _decode(path, 2, dicom_window="ct-bone").pixels[0, 0].tolist() == _standard_window(hu, 400, 1800).tolist()


def test_monochrome1_is_inverted_so_bright_means_dense(tmp_path):
    values = np.array([[0, 2048], [4095, 1000]], dtype=np.uint16)
    path = write_dicom(tmp_path / "cr", values, PhotometricInterpretation="MONOCHROME1", Modality="CR")
    pixels = _decode(path, 2, dicom_window="full-range").pixels[0, 0]
    assert pixels.tolist() == (255 - np.round(values / 4095 * 255)).astype(int).tolist() == [[255, 127], [0, 193]]


def test_multi_frame_objects_follow_the_frame_policy(tmp_path):
    frames = np.stack([np.full((2, 2), value, np.uint16) for value in (0, 2048, 4095)])
    path = write_dicom(tmp_path / "mf", frames, Modality="OT")
    assert [int(f[0, 0, 0]) for f in _decode(path, 2, dicom_window="full-range").pixels] == [0, 128, 255]
    assert [int(f[0, 0, 0]) for f in _decode(path, 2, dicom_frames="middle", dicom_window="full-range").pixels] == [128]
    assert [int(f[0, 0, 0]) for f in _decode(path, 2, dicom_frames="first", dicom_window="full-range").pixels] == [0]


def test_colour_palette_and_ybr_become_rgb_or_luma(tmp_path):
    rgb = _decode(Path(get_testdata_file("SC_rgb_small_odd.dcm")), 3, channels=3).pixels[0]
    ybr = _decode(Path(get_testdata_file("SC_ybr_full_422_uncompressed.dcm")), 100, channels=3).pixels[0]
    reference = pydicom.dcmread(get_testdata_file("SC_rgb_rle.dcm")).pixel_array.transpose(
        2, 0, 1
    )  # the same picture, stored RGB
    assert (
        rgb.shape == (3, 3, 3) and np.abs(ybr.astype(int) - reference).max() <= 6
    )  # YBR_FULL_422 -> RGB (pydicom's conversion, 8-bit rounding)
    grey = _decode(Path(get_testdata_file("SC_rgb_small_odd.dcm")), 3, channels=1).pixels[0, 0]
    luma = np.round((rgb[0].astype(float) * 299 + rgb[1].astype(float) * 587 + rgb[2].astype(float) * 114) / 1000)
    assert np.abs(grey.astype(int) - luma).max() <= 1
    palette = _decode(Path(get_testdata_file("examples_palette.dcm")), 32, channels=3)
    assert palette.pixels.shape == (1, 3, 32, 32) and palette.mode.startswith("DICOM US PALETTE COLOR")


def test_every_bundled_file_decodes_or_is_refused_naming_why():
    decoded, refused, skipped = [], {}, {}
    for name in sorted(get_testdata_files()):
        path = Path(name)
        if path.is_dir() or not has_dicom_preamble(path.read_bytes()[:132]):
            continue
        try:
            decoded.append(_decode(path, 16))
        except NonImageObject as error:
            skipped[path.name] = error.sop_class
        except UndecodableImageError as error:
            refused[path.name] = str(error)
    assert len(decoded) >= 70 and all(image.pixels.dtype == np.uint8 for image in decoded)
    for name, message in refused.items():
        reasons = ("transfer syntax", "without pixel data", "not a readable DICOM", "is incomplete")
        assert message.startswith(name) and any(reason in message for reason in reasons), message
    assert "JPEG Extended (Process 2 and 4) (1.2.840.10008.1.2.4.51)" in refused["JPEG-lossy.dcm"]
    assert "JPEG 2000 Image Compression (1.2.840.10008.1.2.4.91)" in refused["JPEG2000-embedded-sequence-delimiter.dcm"]
    assert (
        "less than expected" in refused["MR_truncated.dcm"]
        and "Explicit VR Little Endian" in refused["MR_truncated.dcm"]
    )
    assert {"reportsi.dcm", "rtplan.dcm", "test-SR.dcm", "liver_1frame.dcm", "rtdose.dcm"} <= set(skipped)
    for compressed in (
        "MR_small_RLE.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_jp2klossless.dcm",
        "JPGExtended.dcm",
        "SC_rgb_jpeg_gdcm.dcm",
        "693_J2KI.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
        "image_dfl.dcm",
        "MR_small_bigendian.dcm",
        "examples_ybr_color.dcm",
    ):
        assert compressed not in refused and compressed not in skipped, compressed


def test_pacs_folder_cases_sites_modalities_and_skipped_objects(tmp_path):
    folder = tmp_path / "pacs"
    files = write_pacs_folder(folder, planted=PLANTED, multiframe=True)
    config = IngestConfig()
    manifest, _, summary = ingest(folder, config)
    frames = 30 - summary["duplicates_dropped"]  # identical frames of the cine loop are kept once
    north, south = (Pseudonyms(KEY).pseudonym("site", name) for name in ("North Hospital", "South Clinic"))
    assert summary["sites"] == {north: 12 + frames, south: 12}  # pseudonymised by default
    named = ingest(folder, IngestConfig(dicom_site_names=True))[2]
    assert named["sites"] == {"North Hospital": 12 + frames, "South Clinic": 12}
    assert summary["modalities"] == {"CT": 8, "MR": 4, "NM": 4, "US": 8 + frames}
    # README.txt has no image suffix: a candidate the chunk reads, finds not DICOM and skips (counted, not quarantined)
    assert summary["skipped_non_image"] == {
        "Basic Text SR Storage": 1,
        "Media Storage Directory Storage": 1,
        "RT Plan Storage": 1,
        "not DICOM (no image suffix)": 1,
    }
    assert (
        summary["quarantined"] == []
        and summary["cases"] == files["patient"].nunique() == 5
        and manifest["case_id"].str.fullmatch(r"patient-[0-9a-f]{20}").all()
    )
    assert (
        manifest.loc[
            manifest["image_key"].str.startswith(_image_key("PAT0/CINE/US0001") + "#frame="), "case_id"
        ].nunique()
        == 1
    )
    again = ingest(folder, config)[0]  # a second run, same key: same pseudonyms
    assert again["case_id"].tolist() == manifest["case_id"].tolist()
    other = ingest(folder, config, pseudonym_key="another-key-0123456789")[0]
    assert set(other["case_id"]).isdisjoint(manifest["case_id"])
    studies = ingest(folder, IngestConfig(dicom_case_level="study", dicom_site="scanner", dicom_site_names=True))[2]
    assert (
        studies["cases"] > 5 and "GE MEDICAL SYSTEMS RHAPSODE" in studies["sites"]
    )  # no Manufacturer: the institution


def test_fingerprint_covers_extensionless_dicom_files(tmp_path):
    folder = tmp_path / "pacs"
    write_pacs_folder(folder, copies=1)
    before = fingerprint_folder(str(folder))
    write_dicom(folder / "PAT9" / "IM0001", np.zeros((4, 4), np.uint16))
    assert fingerprint_folder(str(folder)) != before


def test_key_file_is_created_private_and_reused(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    monkeypatch.setenv(KEY_FILE_ENV, str(tmp_path / "config" / "pseudonym.key"))
    first = Pseudonyms().pseudonym("patient", "PID-1")
    assert stat.S_IMODE(os.stat(tmp_path / "config" / "pseudonym.key").st_mode) == 0o600
    assert Pseudonyms().pseudonym("patient", "PID-1") == first != Pseudonyms(KEY).pseudonym("patient", "PID-1")


def test_bad_dicom_is_refused_by_path_or_quarantined_and_never_modified(tmp_path):
    folder = tmp_path / "pacs"
    write_pacs_folder(folder, copies=1)
    data = (folder / "PAT0/STUDY0/SERIES0/IM0000").read_bytes()
    (folder / "PAT0/STUDY0/SERIES0/IM0000").write_bytes(data[: len(data) - 500])  # truncated inside the pixel data
    hashes = {path: hashlib.sha256(path.read_bytes()).hexdigest() for path in folder.rglob("*") if path.is_file()}
    with pytest.raises(
        UndecodableImageError, match=r"PAT0/STUDY0/SERIES0/IM0000: .*transfer syntax Explicit VR Little Endian"
    ):
        ingest(folder, IngestConfig())
    summary = ingest(folder, IngestConfig(max_bad_fraction=0.2))[2]
    assert [item["image_key"] for item in summary["quarantined"]] == [_image_key("PAT0/STUDY0/SERIES0/IM0000")]
    assert hashes == {
        path: hashlib.sha256(path.read_bytes()).hexdigest() for path in folder.rglob("*") if path.is_file()
    }


def test_pyflyte_validate_data_on_a_pacs_export_shows_no_identifier(tmp_path):
    """Names, IDs, dates, accession numbers, UIDs and path parts of an export reach no output: not the dataset, a task
    output, Flyte's cache, MLflow or the console (only ingest's plan lists the files it reads)."""
    folder = tmp_path / "pacs"
    write_pacs_folder(folder, planted=PLANTED, multiframe=True, identifying_paths=True)
    burned = folder / "ZYXWVÜT_QÖPNMLK_PID-8675309-ZQPAT0" / "20231105" / "CT" / "ACC-5551234-XJ99_99.dcm"
    write_dicom(burned, np.full((8, 8), 1200, np.int16), BurnedInAnnotation="YES", **PLANTED)
    environment = {
        **os.environ,
        "PYTHONPATH": str(PROJECT_ROOT),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "FLYTE_SDK_LOCAL_SANDBOX": str(tmp_path / "sandbox"),
        "HOME": str(tmp_path / "home"),
    }
    result = subprocess.run(
        [str(PYFLYTE), "run", "workflows/data.py", "validate_data", "--source", str(folder)],
        cwd=PROJECT_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert last == {
        "images": 52,
        "cases": 5,
        "sites": 2,
        "modalities": {"CT": 8, "MR": 4, "NM": 4, "US": 36},
        "skipped": 4,
        "quarantined": 1,
        "unlisted_files": 0,
    }  # skipped: 3 non-image DICOM objects, README.txt
    assert "held back: {'burned_in_annotation': 1}" in result.stdout
    plans = list(plan_chunks(str(folder), IngestConfig()))
    cached = flyte_cache_entries(tmp_path / "home", plans)
    assert (
        any(key.startswith("tasks.ingest.plan_ingest-") for key in cached) and len(cached) >= 6
    )  # plan, chunks, join, validate, ...
    outputs = [tmp_path / name for name in ("mlflow.db", "mlartifacts", "sandbox", "ingest-cache")]
    assert_no_identifier([result.stdout, result.stderr], outputs, folder=folder, blobs=cached, plans=plans)


GENERIC_PATH_PARTS = {"CT", "MR", "US", "NM", "SR", "CINE", "RTPLAN", "DICOMDIR", "README.txt", "metadata.csv"}


def identifiers_of(folder: Path) -> set[str]:
    """What a PACS export at ``folder`` identifies people by: every UID of its DICOM files and every part of its
    paths."""
    found = set()
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        found |= {
            part
            for part in relative.parts
            if part not in GENERIC_PATH_PARTS
            and not part.startswith(("PAT", "STUDY", "SERIES", "IM", "US0", "SR0", "RP0"))
        }
        if path.is_file() and has_dicom_preamble(path.read_bytes()[:132]):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            found |= {
                str(ds.get(keyword))
                for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID")
                if keyword in ds
            }
    return found


def needles_of(values: set[str]) -> set[bytes]:
    """``values`` in the spellings an export and a program give them: caret, space, underscore, upper case; UTF-8,
    Latin-1, UTF-16."""
    spellings = {
        spelling
        for value in values
        for spelling in (value, value.replace("^", " "), value.replace("^", "_"), value.upper())
    }
    encoded = set()
    for spelling in spellings:
        for encoding in ("utf-8", "latin-1", "utf-16-le"):
            try:
                encoded.add(spelling.encode(encoding))
            except UnicodeEncodeError:
                continue
    return encoded


def flyte_cache_entries(home: Path, plans: list[dict]) -> dict[str, bytes]:
    """Flyte's local cache (``home``/.flyte/local-cache, a diskcache): every task's cached outputs by cache key, the
    chunk documents of ``plans`` (ingest's plan: the files it must read, plan_chunks) cut out of plan_ingest's."""
    from diskcache import Cache

    with Cache(str(home / ".flyte" / "local-cache")) as cache:
        entries = {key: bytes(cache[key]) for key in cache.iterkeys()}
    for key in [key for key in entries if key.startswith("tasks.ingest.plan_ingest-")]:
        for chunk in plans:
            entries[key] = entries[key].replace(chunk_json(chunk).encode(), b"")
    return entries


def assert_no_identifier(
    texts: list[str],
    paths: list[Path],
    *,
    folder: Path | None = None,
    blobs: dict[str, bytes] | None = None,
    plans: list[dict] = (),
) -> None:
    """None of PLANTED's values, nor (``folder``) a UID or path part of the export, in ``texts``, in any file under
    ``paths`` or in ``blobs`` (name: bytes, e.g. flyte_cache_entries). plans: chunk documents (plan_chunks), the
    files plan_ingest writes, which name the files to read: a file holding exactly one of them is not searched."""
    values = {value for keyword, value in PLANTED.items() if keyword != "SpecificCharacterSet"} | set(PLANTED_FRAGMENTS)
    needles = needles_of(values | (identifiers_of(folder) if folder else set()))
    for text in texts:
        found = [
            needle
            for needle in needles
            if needle.decode("utf-8", "ignore") and needle.decode("utf-8", "ignore") in text
        ]
        assert not found, found[:5]
    files = [
        file
        for path in paths
        if path.exists()
        for file in ([path] if path.is_file() else path.rglob("*"))
        if file.is_file()
    ]
    assert files
    documents = {chunk_json(chunk).encode() for chunk in plans}
    files = [
        file
        for file in files
        if not (file.name.startswith("chunk-") and file.suffix == ".json" and file.read_bytes() in documents)
    ]
    for name, data in [*((str(file), file.read_bytes()) for file in files), *(blobs or {}).items()]:
        found = [needle for needle in needles if needle in data]
        assert not found, f"{name} holds {found[:5]}"


def _uid_keyed_folder(root: Path) -> tuple[Path, list[str]]:
    """Three extensionless CT files of two patients, and a metadata.csv naming them by SOPInstanceUID."""
    uids = []
    for index, (patient, value) in enumerate([("P-A", 100), ("P-A", 200), ("P-B", 300)]):
        path = write_dicom(
            root / "export" / f"IM{index:04d}", np.full((16, 16), value, dtype=np.int16), PatientID=patient
        )
        uids.append(str(pydicom.dcmread(path).SOPInstanceUID))
    rows = [f"{uids[0]},benign,", f"{uids[1]},malignant,case-7", f"{uids[2]},benign,"]
    (root / "metadata.csv").write_text("sop_instance_uid,label,case_id\n" + "\n".join(rows) + "\n")
    return root, uids


def test_metadata_keyed_by_sop_instance_uid_labels_dicom_files_and_never_shows_the_uid(tmp_path):
    folder, uids = _uid_keyed_folder(tmp_path / "pacs")
    config = IngestConfig(image_size=16)
    manifest, _, summary = ingest(folder, config)
    by_file = manifest.set_index("image_key")
    assert (
        by_file.loc[_image_key("export/IM0000"), "label"] == "benign"
        and by_file.loc[_image_key("export/IM0001"), "label"] == "malignant"
    )
    assert by_file.loc[_image_key("export/IM0001"), "case_id"] == "case-7"  # the metadata's case wins over the header's
    assert by_file.loc[_image_key("export/IM0000"), "case_id"].startswith(
        "patient-"
    )  # blank in the metadata: the header's pseudonym
    written = manifest.to_csv() + json.dumps(summary, default=str)
    assert not any(uid in written for uid in uids)
    # a row naming an object the folder does not hold is refused by its row, without the UID
    (folder / "metadata.csv").write_text(
        (folder / "metadata.csv").read_text() + "1.2.826.0.1.3680043.99999.1,benign,\n"
    )
    with pytest.raises(SourceError, match=r"metadata.csv row 5, column 'sop_instance_uid'") as refused:
        ingest(folder, config)
    assert "99999" not in str(refused.value)


def test_chunked_ingest_of_a_pacs_folder_matches_one_chunk(tmp_path):
    """Chunks (map-task elements, in a pool) decode DICOM with the given key: same cases, sites, modalities and skipped
    counts as the whole folder in one chunk."""
    folder = tmp_path / "pacs"
    write_pacs_folder(folder, planted=PLANTED, multiframe=True)
    config = IngestConfig(chunk_images=4)
    chunks = [chunk_json(chunk) for chunk in plan_chunks(str(folder), config)]
    assert len(chunks) > 2 and not any(KEY in chunk or "another-key" in chunk for chunk in chunks)
    for key in (None, "another-key-0123456789"):
        _, chunked, summary = ingest_source(
            str(folder), config, tmp_path / f"dataset-{key}", workers=2, pseudonym_key=key
        )
        expected, _, in_memory = ingest(folder, IngestConfig(), pseudonym_key=key)
        columns = ["image_key", "case_id", "site", "modality", "label", "split", "sha256"]
        assert (
            chunked[columns].sort_values("image_key").values.tolist()
            == expected[columns].sort_values("image_key").values.tolist()
        )
        for name in ("sites", "modalities", "skipped_non_image", "cases", "duplicates_dropped"):
            assert summary[name] == in_memory[name], name


def test_chunked_ingest_applies_and_refuses_sop_instance_rows_across_chunks(tmp_path):
    folder, uids = _uid_keyed_folder(tmp_path / "pacs")
    config = IngestConfig(image_size=16, chunk_images=1)
    assert len(list(plan_chunks(str(folder), config))) == 3  # one file per chunk: each row matched by one chunk only
    _, manifest, _ = ingest_source(str(folder), config, tmp_path / "dataset")
    by_file = manifest.set_index("image_key")
    assert (
        by_file.loc[_image_key("export/IM0001"), "label"] == "malignant"
        and by_file.loc[_image_key("export/IM0001"), "case_id"] == "case-7"
    )
    (folder / "metadata.csv").write_text(
        (folder / "metadata.csv").read_text() + "1.2.826.0.1.3680043.99999.1,benign,\n"
    )
    with pytest.raises(SourceError, match=r"metadata.csv row 5, column 'sop_instance_uid'") as refused:
        ingest_source(str(folder), config, tmp_path / "dataset-2")
    assert "99999" not in str(refused.value) and "row 2" not in str(refused.value)


def test_dicom_files_without_an_extension_at_an_s3_prefix_are_found_by_content(tmp_path, monkeypatch):
    folder, uids = _uid_keyed_folder(tmp_path / "pacs")
    with moto_s3_server(tmp_path) as endpoint:
        s3_environment(monkeypatch, endpoint)
        client = boto3.client("s3")
        client.create_bucket(Bucket="hospital")
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                client.put_object(
                    Bucket="hospital", Key=f"site-a/{path.relative_to(folder).as_posix()}", Body=path.read_bytes()
                )
        client.put_object(Bucket="hospital", Key="site-a/export/README", Body=b"not an image")
        config = IngestConfig(image_size=16)
        manifest, _, _ = ingest("s3://hospital/site-a", config)
    assert sorted(manifest["image_key"]) == sorted(_image_key(f"export/IM000{index}") for index in range(3))
    assert sorted(manifest["label"]) == ["benign", "benign", "malignant"] and set(manifest["modality"]) == {"CT"}


@pytest.fixture
def s3_calls(monkeypatch) -> list[tuple[str, str | None, str | None]]:
    """Every S3 API call any boto3 client makes from here on: (operation, key or prefix, Range)."""
    calls = []
    make_call = botocore.client.BaseClient._make_api_call

    def recorded(client, operation: str, parameters: dict):
        calls.append((operation, parameters.get("Key", parameters.get("Prefix")), parameters.get("Range")))
        return make_call(client, operation, parameters)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", recorded)
    return calls


def _uid_keyed_prefix(client, folder: Path) -> None:
    """The SOPInstanceUID-keyed folder at s3://hospital/site-a, with two objects without an image suffix that are not
    DICOM."""
    client.create_bucket(Bucket="hospital")
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            client.put_object(
                Bucket="hospital", Key=f"site-a/{path.relative_to(folder).as_posix()}", Body=path.read_bytes()
            )
    client.put_object(Bucket="hospital", Key="site-a/export/README", Body=b"not an image")
    client.put_object(Bucket="hospital", Key="site-a/export/report.pdf", Body=b"%PDF-1.4" + bytes(300))


def test_an_s3_plan_reads_no_object_without_an_image_suffix_and_the_chunks_skip_those_not_dicom(
    tmp_path, monkeypatch, s3_calls
):
    """The plan lists objects without a suffix unread (no GET, ranged or not); each chunk reads its own, decodes the
    DICOM ones and counts the others as skipped, never quarantined. The prefix is listed once per ingest, by the plan:
    a chunk reads the metadata keyed by SOPInstanceUID by its key."""
    folder, _ = _uid_keyed_folder(tmp_path / "pacs")
    with moto_s3_server(tmp_path) as endpoint:
        s3_environment(monkeypatch, endpoint)
        _uid_keyed_prefix(boto3.client("s3"), folder)
        s3_calls.clear()
        plan = list(plan_chunks("s3://hospital/site-a", IngestConfig(image_size=16)))
        assert plan and [call for call in s3_calls if call[0] == "GetObject"] == [
            ("GetObject", "site-a/metadata.csv", None)
        ]
        s3_calls.clear()
        manifest, _, summary = ingest("s3://hospital/site-a", IngestConfig(image_size=16, chunk_images=1))
    assert sorted(manifest["image_key"]) == sorted(_image_key(f"export/IM000{index}") for index in range(3))
    assert summary["skipped_non_image"] == {"not DICOM (no image suffix)": 2} and summary["quarantined"] == []
    assert not any(byte_range for _, _, byte_range in s3_calls)
    assert (
        sum(1 for operation, key, _ in s3_calls if operation == "GetObject" and key.endswith(("README", "report.pdf")))
        == 2
    )
    assert len(summary["chunks"]) > 1 and [operation for operation, _, _ in s3_calls].count("ListObjectsV2") == 1


def test_the_plan_and_the_join_read_sop_instance_metadata_once_each_and_no_chunk_reads_it(
    tmp_path, monkeypatch, s3_calls
):
    """Metadata keyed by SOPInstanceUID at an S3 prefix: one GET of metadata.csv by the plan, none by any chunk, one
    by the join. A metadata.csv changed after the plan is refused by the join, naming the file, not a UID."""
    folder, uids = _uid_keyed_folder(tmp_path / "pacs")
    config = IngestConfig(image_size=16, chunk_images=1)
    metadata_gets = lambda: s3_calls.count(("GetObject", "site-a/metadata.csv", None))  # noqa: E731
    with moto_s3_server(tmp_path) as endpoint:
        s3_environment(monkeypatch, endpoint)
        client = boto3.client("s3")
        _uid_keyed_prefix(client, folder)
        s3_calls.clear()
        chunk_files = plan_to_files("s3://hospital/site-a", config, tmp_path / "plan")
        assert len(chunk_files) > 1 and metadata_gets() == 1
        s3_calls.clear()
        chunks = [
            DecodedChunk(
                decode_chunk(path.read_text(), tmp_path / f"chunk-{index}"), str(tmp_path / f"chunk-{index}/shards")
            )
            for index, path in enumerate(chunk_files)
        ]
        assert metadata_gets() == 0 and any(key.startswith("site-a/export/IM") for _, key, _ in s3_calls)
        join_chunks(chunks, config, tmp_path / "dataset")
        assert metadata_gets() == 1
        manifest = read_manifest(tmp_path / "dataset").set_index("image_key")
        assert manifest.loc[_image_key("export/IM0001"), ["label", "case_id"]].tolist() == ["malignant", "case-7"]
        metadata = (folder / "metadata.csv").read_bytes().replace(b"malignant", b"benign")
        client.put_object(Bucket="hospital", Key="site-a/metadata.csv", Body=metadata)
        with pytest.raises(
            SourceError, match=r"s3://hospital/site-a: metadata.csv changed since ingest listed the source"
        ) as refused:
            join_chunks(chunks, config, tmp_path / "dataset-2")
    assert not (tmp_path / "dataset-2").exists() and not any(uid in str(refused.value) for uid in uids)


def _labelled_export(root: Path) -> Path:
    """Eight extensionless CT objects of eight patients (P6: 3 frames, P7: 2 frames, the others 1) and a metadata.csv
    keyed by SOPInstanceUID: P0 benign; P1 no label, case-7, site-x; P2 malignant, case-8; P5 benign, site-y; P6
    malignant, case-9; no row for P3, P4, P7."""
    uids = []
    for index in range(8):
        frames = {6: 3, 7: 2}.get(index, 1)
        pixels = np.random.default_rng(index).integers(0, 4000, (frames, 8, 8) if frames > 1 else (8, 8), np.int16)
        path = write_dicom(root / f"P{index}" / "IM0000", pixels, PatientID=f"P-{index}", InstitutionName="North")
        uids.append(str(pydicom.dcmread(path).SOPInstanceUID))
    rows = [
        f"{uids[0]},benign,,",
        f"{uids[1]},,case-7,site-x",
        f"{uids[2]},malignant,case-8,",
        f"{uids[5]},benign,,site-y",
        f"{uids[6]},malignant,case-9,",
    ]
    (root / "metadata.csv").write_text("sop_instance_uid,label,case_id,site\n" + "\n".join(rows) + "\n")
    return root


def _ingest_with_metadata_away(folder: Path, config: IngestConfig, work: Path) -> tuple[pd.DataFrame, dict]:
    """(manifest, summary) of ``folder`` planned, its chunks decoded while its metadata.csv is moved out of it, and
    joined with it back: a chunk that read the file would fail (it is gone)."""
    chunk_files = plan_to_files(str(folder), config, work / "plan")
    (folder / "metadata.csv").rename(work / "metadata.csv")
    try:
        folders = [decode_chunk(path.read_text(), work / f"chunk-{index}") for index, path in enumerate(chunk_files)]
    finally:
        (work / "metadata.csv").rename(folder / "metadata.csv")
    chunks = [DecodedChunk(path, str(path / "shards")) for path in folders]
    _, summary = join_chunks(chunks, config, work / "dataset")
    return read_manifest(work / "dataset"), summary


def test_labelled_dicom_objects_are_in_shards_apart_though_no_chunk_reads_the_sop_instance_metadata(tmp_path):
    """The chunk documents name the labelled rows: one chunk of every object puts the six labelled images (P0, P2,
    P5, P6's three frames) in shards that hold no unlabelled one. The join applies the rows as a chunk that read the
    file did: a row's label, its case (case_source "metadata") when given, its site unless blank."""
    folder = _labelled_export(tmp_path / "export")
    config = IngestConfig(image_size=8, chunk_images=64)
    manifest, summary = _ingest_with_metadata_away(folder, config, tmp_path)
    assert summary["chunks"] and len(summary["chunks"]) == 1 and len(manifest) == 11
    labelled = manifest["label"].notna()
    assert labelled.sum() == 6 and not set(manifest["shard"][labelled]) & set(manifest["shard"][~labelled])
    rows = manifest.set_index("image_key")
    expected = {"P0": ("benign", None, None), "P1": (None, "case-7", "site-x"), "P2": ("malignant", "case-8", None)}
    expected |= {"P3": (None, None, None), "P4": (None, None, None), "P5": ("benign", None, "site-y")}
    header_site = rows.loc[_image_key("P3/IM0000"), "site"]
    for patient, (label, case, site) in expected.items():
        row = rows.loc[_image_key(f"{patient}/IM0000")]
        assert (None if pd.isna(row["label"]) else row["label"]) == label, patient
        assert row["case_id"] == case if case else row["case_id"].startswith("patient-"), patient
        assert row["site"] == (site or header_site), patient
    assert header_site not in ("site-x", "site-y", "default")
    assert summary["case_ids"]["from"] == {"metadata": 5, "patient": 6} and summary["labelled"] == 6


def test_every_frame_of_a_multi_frame_object_gets_its_sop_instance_row(tmp_path):
    """P6's three frames take its row's label and case, in a labelled shard, one file per chunk; P7's two frames (no
    row) keep the header's case and no label, in an unlabelled one."""
    folder = _labelled_export(tmp_path / "export")
    manifest, summary = _ingest_with_metadata_away(folder, IngestConfig(image_size=8, chunk_images=1), tmp_path)
    assert len(summary["chunks"]) == 8
    frames = {
        patient: manifest[manifest["image_key"].str.startswith(_image_key(f"{patient}/IM0000") + "#frame=")]
        for patient in ("P6", "P7")
    }
    assert len(frames["P6"]) == 3 and len(frames["P7"]) == 2
    assert frames["P6"]["label"].tolist() == ["malignant"] * 3 and frames["P6"]["case_id"].tolist() == ["case-9"] * 3
    assert frames["P7"]["label"].isna().all() and frames["P7"]["case_id"].str.startswith("patient-").all()
    assert set(manifest[manifest["shard"].isin(frames["P6"]["shard"])]["label"].isna()) == {False}
    assert set(manifest[manifest["shard"].isin(frames["P7"]["shard"])]["label"].isna()) == {True}


def test_a_single_labelled_sop_instance_row_puts_its_object_in_shards_apart(tmp_path):
    """One labelled row (P6, three frames) in one chunk of every object: its frames alone in labelled shards."""
    folder = _labelled_export(tmp_path / "export")
    uid = pydicom.dcmread(folder / "P6" / "IM0000", stop_before_pixels=True).SOPInstanceUID
    (folder / "metadata.csv").write_text(f"sop_instance_uid,label\n{uid},malignant\n")
    manifest, _ = _ingest_with_metadata_away(folder, IngestConfig(image_size=8, chunk_images=64), tmp_path)
    labelled = manifest["label"].notna()
    assert labelled.sum() == 3 and manifest["image_key"][labelled].str.startswith(_image_key("P6/IM0000")).all()
    assert not set(manifest["shard"][labelled]) & set(manifest["shard"][~labelled])


def _multiframe_export(root: Path, files: int, frames: int) -> Path:
    """A PACS export of ``files`` multi-frame objects of ``frames`` frames each (8 x 8), no suffix, one patient each."""
    for index in range(files):
        pixels = np.random.default_rng(index).integers(0, 4096, (frames, 8, 8), dtype=np.int16)
        write_dicom(root / f"patient{index:03d}" / "IM0000", pixels, PatientID=f"P-{index:03d}")
    return root


def test_a_chunk_of_multi_frame_objects_holds_at_most_twice_chunk_images_frames(tmp_path, monkeypatch, s3_calls):
    """The plan reads the header of each large DICOM object (here: every one; a ranged GET on S3) for its
    NumberOfFrames, and cuts chunks by images, not files: 12 objects of 8 frames with chunk_images=4 are 12 chunks of
    8 images, never several objects (up to 64 images) in one."""
    monkeypatch.setattr(chunks_module, "FRAME_PROBE_BYTES", 0)
    folder = _multiframe_export(tmp_path / "export", files=12, frames=8)
    config = IngestConfig(image_size=8, chunk_images=4)
    assert [len(chunk["records"]) for chunk in plan_chunks(str(folder), config)] == [1] * 12
    _, manifest, summary = ingest_source(str(folder), config, tmp_path / "dataset")
    assert len(manifest) == 96 and [chunk["images"] for chunk in summary["chunks"]] == [8] * 12
    one_frame = IngestConfig(image_size=8, chunk_images=4, dicom_frames="middle")  # one image per object: not read
    assert sum(len(chunk["records"]) for chunk in plan_chunks(str(folder), one_frame)) == 12
    with moto_s3_server(tmp_path) as endpoint:
        s3_environment(monkeypatch, endpoint)
        client = boto3.client("s3")
        client.create_bucket(Bucket="hospital")
        for path in sorted(folder.rglob("IM*")):
            client.put_object(Bucket="hospital", Key=f"export/{path.relative_to(folder)}", Body=path.read_bytes())
        s3_calls.clear()
        assert [len(chunk["records"]) for chunk in plan_chunks("s3://hospital/export", config)] == [1] * 12
    ranged = [byte_range for operation, key, byte_range in s3_calls if operation == "GetObject" and "IM" in key]
    assert ranged == ["bytes=0-65535"] * 12


def test_the_plan_reads_the_frames_of_large_objects_a_metadata_csv_lists_without_a_suffix(tmp_path, monkeypatch):
    """A PACS export with a metadata.csv naming its suffixless files by path: the plan reads each large object's
    header for its NumberOfFrames as it does for an unlisted one, so 12 objects of 8 frames with chunk_images=4 are
    12 chunks, not 3 of 4 files (32 images each)."""
    monkeypatch.setattr(chunks_module, "FRAME_PROBE_BYTES", 0)
    folder = _multiframe_export(tmp_path / "export", files=12, frames=8)
    rows = [f"patient{index:03d}/IM0000,P-{index:03d},{index % 2}" for index in range(12)]
    (folder / "metadata.csv").write_text("path,case_id,label\n" + "\n".join(rows) + "\n")
    config = IngestConfig(image_size=8, chunk_images=4)
    assert [len(chunk["records"]) for chunk in plan_chunks(str(folder), config)] == [1] * 12

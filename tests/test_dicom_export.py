"""DICOM as hospitals export it (issue 22): burned-in pixels held back, identity by issuer, cut-short compressed
frames refused, one image per SOPInstanceUID, windows that keep anatomy (signed CT, 16-bit MR, Enhanced objects
with per-frame functional groups), sites pseudonymised, and the leakage guard. Each test builds its own export
with pydicom over pydicom's bundled pixel data or synthetic pixels."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
from dicom_files import write_dicom
from ingested import ingest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import EnhancedCTImageStorage, MRImageStorage, generate_uid
from test_dicom import _standard_window

from sslflow.config import IngestConfig
from sslflow.data.chunks import ingest_source
from sslflow.data.dataset import read_summary
from sslflow.data.dicom import decode_dicom
from sslflow.data.pseudonyms import KEY_ENV, Pseudonyms
from sslflow.data.types import UndecodableImageError

KEY = "export-test-key-0123456789abcdef"


@pytest.fixture(autouse=True)
def _environment(monkeypatch, tmp_path):
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.setenv("SSLFLOW_INGEST_CACHE", str(tmp_path / "ingest-cache"))


def _key(path: str) -> str:
    return Pseudonyms(KEY).pseudonym("file", path)


def _ingest(folder, **options):
    config = IngestConfig(image_size=16, **options)
    return ingest(folder, config)


def _ct(path, seed: int, **header):
    """A 16 x 16 CT of soft tissue (HU -160 to 240, inside the default window), distinct for each seed."""
    return write_dicom(path, np.random.default_rng(seed).integers(-160, 240, (16, 16)).astype(np.int16), **header)


# 2. BurnedInAnnotation YES: held back by default, counted; included only by opt-in.


def test_burned_in_annotation_is_held_back_by_default_and_counted(tmp_path):
    folder = tmp_path / "export"
    for index in range(3):
        _ct(folder / f"IM{index}", 100 * index, PatientID=f"P{index}", BurnedInAnnotation="YES" if index == 1 else "NO")
    manifest, _, summary = _ingest(folder)  # max_bad_fraction 0: a held-back image is not a bad file
    assert len(manifest) == 2
    assert sorted(manifest["image_key"]) == sorted([_key("IM0"), _key("IM2")])
    assert summary["held_back"] == {"burned_in_annotation": 1}
    assert (
        "Basic Application Level Confidentiality Profile (DCM 113100)" in summary["deidentification"]["dicom"]["method"]
    )
    assert summary["deidentification"]["dicom"]["opted_in_beyond_the_profile"] == []
    (item,) = summary["quarantined"]
    assert (
        item["image_key"] == _key("IM1")
        and item["held_back"] == "burned_in_annotation"
        and "BurnedInAnnotation (0028,0301) is YES" in item["problem"]
    )
    included, _, summary = _ingest(folder, dicom_burned_in=True)
    assert (
        len(included) == 3
        and summary["held_back"] == {}
        and summary["deidentification"]["dicom"]["opted_in_beyond_the_profile"]
    )
    assert len(_ingest(folder)[0]) == 2  # the decode cache of the opted-in run does not serve the default one


# 3. A case is (IssuerOfPatientID or InstitutionName) + PatientID; fallbacks to study and series are marked weaker.


def test_one_patient_id_at_two_issuers_is_two_cases(tmp_path):
    folder = tmp_path / "export"
    same = {"PatientID": "12345"}
    _ct(
        folder / "north/IM0", 100, InstitutionName="North Hospital", **same
    )  # no issuer: the institution qualifies the id
    _ct(folder / "south/IM0", 200, InstitutionName="South Clinic", **same)
    _ct(folder / "east/IM0", 300, IssuerOfPatientID="EAST-MRN", InstitutionName="North Hospital", **same)
    _ct(folder / "mpi/IM0", 400, IssuerOfPatientID="REGIONAL-MPI", InstitutionName="North Hospital", **same)
    _ct(
        folder / "mpi/IM1", 500, IssuerOfPatientID="REGIONAL-MPI", InstitutionName="South Clinic", **same
    )  # one index, two sites
    manifest, _, summary = _ingest(folder)
    assert summary["cases"] == 4
    cases = manifest.set_index("image_key")["case_id"]
    assert len({cases[_key(path)] for path in ("north/IM0", "south/IM0", "east/IM0", "mpi/IM0")}) == 4
    assert cases[_key("mpi/IM0")] == cases[_key("mpi/IM1")]
    assert (
        summary["cases"] == 4
        and summary["case_ids"] == {"from": {"patient": 5}, "weaker": 0, "none": 0}
        and summary["warnings"] == []
    )


def test_without_patient_id_cases_fall_back_to_the_study_marked_weaker(tmp_path):
    folder = tmp_path / "export"
    study = generate_uid()
    for index in range(2):
        _ct(folder / f"IM{index}", 100 * index, PatientID="", StudyInstanceUID=study)
    _ct(folder / "IM2", 300, PatientID="P9")
    manifest, _, summary = _ingest(folder)
    assert (
        manifest["case_id"].str.startswith("study-").sum() == 2
        and manifest["case_id"].str.startswith("patient-").sum() == 1
    )
    assert summary["case_ids"]["from"] == {"patient": 1, "study": 2} and summary["case_ids"]["weaker"] == 2
    assert any("grouped by study or series" in warning for warning in summary["warnings"])


# 4. A compressed frame cut short decodes with the rest filled in: refused by its end marker, quarantined by key.


def _cut_last_frame(source: str, target, fraction: float = 0.6):
    ds = pydicom.dcmread(get_testdata_file(source))
    frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames") or 1)))
    frames[-1] = frames[-1][: int(len(frames[-1]) * fraction)]
    ds.PixelData = encapsulate(frames)
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target)
    return target


def test_a_jpeg_frame_cut_short_is_refused_naming_the_frame_and_quarantined_by_key(tmp_path):
    folder = tmp_path / "export"
    _cut_last_frame("SC_rgb_jpeg_dcmtk.dcm", folder / "cut/IM0")
    _cut_last_frame("examples_ybr_color.dcm", folder / "cut/CINE")  # 30 frames, the last one cut
    for index in range(8):
        _ct(folder / f"ok/IM{index}", 50 * index)
    with pytest.raises(
        UndecodableImageError, match=r"cut/CINE: frame 30 of 30 is incomplete: .*JPEG Baseline.*FF D9"
    ) as refused:
        _ingest(folder)
    assert "cut/IM0: frame 1 of 1 is incomplete" in str(
        refused.value
    )  # the refusal, on ingest's console, names the files
    manifest, _, summary = _ingest(folder, max_bad_fraction=0.2)
    assert len(manifest) == 8 and {item["image_key"] for item in summary["quarantined"]} == {
        _key("cut/IM0"),
        _key("cut/CINE"),
    }
    assert "cut/" not in json.dumps(summary)


# 5. One SOPInstanceUID is one image: the lossless copy is kept, the lossy re-export dropped and counted.


def test_a_lossy_re_export_of_one_instance_is_dropped_for_the_lossless_copy(tmp_path):
    folder = tmp_path / "export"
    uid = generate_uid()
    for name, source in (
        ("a_lossy/IM0", "SC_rgb_jpeg_dcmtk.dcm"),
        ("b_lossless/IM0", "SC_rgb_jpeg_gdcm.dcm"),
    ):  # same picture, JPEG baseline and lossless
        ds = pydicom.dcmread(get_testdata_file(source))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.PatientID = "P1"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(folder / name)
    lossy_marked = _ct(
        folder / "c/IM0", 100, PatientID="P2", LossyImageCompression="01"
    )  # lossy before, stored uncompressed
    original = pydicom.dcmread(lossy_marked)
    _ct(folder / "d/IM0", 400, PatientID="P2", SOPInstanceUID=original.SOPInstanceUID)
    manifest, _, summary = _ingest(folder)
    assert len(manifest) == 2
    assert sorted(manifest["image_key"]) == sorted([_key("b_lossless/IM0"), _key("d/IM0")])
    assert summary["instance_copies_dropped"] == 2


# 7. Windows that keep anatomy.

HU = np.array([[-1000, -100, 0, 40], [80, 240, 700, 1500]], dtype=np.int16)


def test_signed_ct_without_a_window_gets_the_soft_tissue_window_in_hu(tmp_path):
    for index, hu in enumerate((HU[:, :2], HU[:, 2:])):  # signed stored values, HU after RescaleIntercept
        path = write_dicom(tmp_path / f"ct{index}", (hu + 24).astype(np.int16), RescaleSlope=1, RescaleIntercept=-24)
        pixels = decode_dicom(path.read_bytes(), "ct", IngestConfig(image_size=2), Pseudonyms(KEY)).pixels[0, 0]
        assert pixels.tolist() == _standard_window(hu.astype(float), 40, 400).tolist()
    tissue = np.random.default_rng(0).normal(40, 30, (64, 64)).round().astype(np.int16)  # soft tissue, sd 30 HU
    pixels = decode_dicom(
        write_dicom(tmp_path / "body", tissue).read_bytes(), "body", IngestConfig(image_size=64), Pseudonyms(KEY)
    ).pixels
    assert pixels.std() > 15  # the declared 12-bit range (4096 HU wide) would leave it sd ~2 of 255


def test_sixteen_bit_mr_using_0_to_2000_fills_the_8_bit_range(tmp_path):
    values = np.random.default_rng(0).integers(0, 2001, (32, 32)).astype(np.uint16)
    path = write_dicom(tmp_path / "mr", values, SOPClassUID=MRImageStorage, Modality="MR", BitsStored=16, HighBit=15)
    pixels = (
        decode_dicom(path.read_bytes(), "mr", IngestConfig(image_size=32), Pseudonyms(KEY)).pixels[0, 0].astype(float)
    )
    low, high = np.percentile(values, (0.5, 99.5))
    assert pixels.tolist() == np.round(np.clip((values - low) * 255 / (high - low), 0, 255)).tolist()
    assert pixels.std() > 60  # declared 16-bit range: values 0-2000 would land in 0-8


def _functional_group(slope: float, intercept: float, center: float, width: float) -> Dataset:
    transformation, window, group = Dataset(), Dataset(), Dataset()
    transformation.RescaleSlope, transformation.RescaleIntercept, transformation.RescaleType = slope, intercept, "HU"
    window.WindowCenter, window.WindowWidth = center, width
    group.PixelValueTransformationSequence, group.FrameVOILUTSequence = [transformation], [window]
    return group


def test_enhanced_ct_reads_rescale_and_window_from_the_per_frame_functional_groups(tmp_path):
    stored = np.stack([HU[:, :2] + 1024, HU[:, :2] + 1000]).astype(
        np.uint16
    )  # the two frames store HU with different intercepts
    groups = [_functional_group(1, -1024, 40, 400), _functional_group(1, -1000, -600, 1500)]
    path = write_dicom(
        tmp_path / "enhanced", stored, SOPClassUID=EnhancedCTImageStorage, PerFrameFunctionalGroupsSequence=groups
    )
    pixels = decode_dicom(path.read_bytes(), "enhanced", IngestConfig(image_size=2), Pseudonyms(KEY)).pixels[:, 0]
    assert pixels[0].tolist() == _standard_window(HU[:, :2].astype(float), 40, 400).tolist()
    assert pixels[1].tolist() == _standard_window(HU[:, :2].astype(float), -600, 1500).tolist()


# 8. Sites pseudonymised by default; readable names by opt-in or a user-supplied mapping.


def test_institution_names_are_pseudonymised_unless_asked_for(tmp_path):
    folder = tmp_path / "export"
    _ct(folder / "IM0", 100, PatientID="P1", InstitutionName="Dr Qwertyuiop Family Practice")
    _ct(folder / "IM1", 200, PatientID="P2", InstitutionName="Dr Qwertyuiop Family Practice")
    _, _, summary = _ingest(folder)
    assert summary["sites"] == {Pseudonyms(KEY).pseudonym("site", "Dr Qwertyuiop Family Practice"): 2}
    assert "Qwertyuiop" not in json.dumps(summary)
    assert _ingest(folder, dicom_site_names=True)[2]["sites"] == {"Dr Qwertyuiop Family Practice": 2}
    (folder / "metadata.csv").write_text("path,site\nIM0,site-a\nIM1,site-b\n")  # the user's own mapping
    assert _ingest(folder)[2]["sites"] == {"site-a": 1, "site-b": 1}


# 9. The leakage guard: images without a case id are said to be split one by one, with how to give case ids.


def _png_folder(root, count: int, metadata: str):
    root.mkdir(parents=True)
    for index in range(count):
        Image.fromarray(np.random.default_rng(index).integers(0, 256, (20, 20), dtype=np.uint8)).save(
            root / f"img{index}.png"
        )
    (root / "metadata.csv").write_text(metadata)
    return root


def test_images_without_case_ids_are_reported_with_how_to_give_them(tmp_path):
    folder = _png_folder(tmp_path / "photos", 3, "path,label\nimg0.png,a\nimg1.png,b\nimg2.png,a\n")
    _, _, summary = _ingest(folder)
    assert summary["case_ids"]["none"] == 3
    (warning,) = summary["warnings"]
    assert warning.startswith("3 of 3 images have no case id") and "a case_id column in metadata.csv" in warning
    (folder / "metadata.csv").write_text("path,label,case_id\nimg0.png,a,c1\nimg1.png,b,c1\nimg2.png,a,c2\n")
    assert _ingest(folder)[2]["warnings"] == []


def test_dicom_with_patient_ids_grouped_by_study_is_warned_about(tmp_path):
    folder = tmp_path / "export"
    for index in range(3):
        _ct(folder / f"IM{index}", 100 * index, PatientID="P1")  # one patient, three studies
    assert _ingest(folder)[2]["cases"] == 1  # patients by default
    _, _, summary = _ingest(folder, dicom_case_level="study")
    assert summary["cases"] == 3 and summary["case_ids"]["weaker"] == 3
    assert any("grouped by study or series, not by patient" in warning for warning in summary["warnings"])


def test_dataset_hash_covers_the_whole_listing_quarantined_files_included(tmp_path):
    folder = tmp_path / "export"
    for index in range(4):
        _ct(folder / f"IM{index}", 100 * index, PatientID=f"P{index}")
    data = (folder / "IM0").read_bytes()
    (folder / "broken.dcm").write_bytes(data[: len(data) - 100])  # cut short inside the pixel data
    config = IngestConfig(image_size=16, max_bad_fraction=0.5)
    before, manifest, summary = ingest_source(str(folder), config, tmp_path / "before")
    assert len(summary["quarantined"]) == 1
    (folder / "broken.dcm").unlink()  # the user removes the bad file: same images, a changed source
    after, same, summary = ingest_source(str(folder), config, tmp_path / "after")
    assert same.equals(manifest) and summary["quarantined"] == [] and after != before
    assert read_summary(tmp_path / "after")["listing_sha256"] != read_summary(tmp_path / "before")["listing_sha256"]


def test_validate_data_reports_afresh_after_a_quarantined_file_is_removed_and_warns_of_missing_case_ids(
    tmp_path, monkeypatch
):
    """6 and 9 through the workflow: validate is cached on the dataset's hash, which covers the whole listing; its
    report and the printed summary say that images without a case id are split one by one."""
    from flytekit.core.local_cache import LocalTaskCache
    from live_mlflow import mlflow_at
    from mlflow.tracking import MlflowClient

    from sslflow.tracking.store import EXPERIMENT_NAME, tracking_uri
    from workflows.data import validate_data

    folder = _png_folder(
        tmp_path / "photos", 4, "path,label\nimg0.png,a\nimg1.png,b\nimg2.png,a\nimg3.png,b\nbroken.png,a\n"
    )
    (folder / "broken.png").write_bytes((folder / "img0.png").read_bytes()[:60])
    monkeypatch.setenv("FLYTE_SDK_LOCAL_SANDBOX", str(tmp_path / "sandbox"))
    LocalTaskCache.clear()
    config = IngestConfig(image_size=16, max_bad_fraction=0.25)
    with mlflow_at(monkeypatch, f"sqlite:///{tmp_path / 'mlflow.db'}"):
        first = validate_data(source=str(folder), config=config)
        assert json.loads(first.splitlines()[-1])["quarantined"] == 1
        (folder / "broken.png").unlink()
        (folder / "metadata.csv").write_text("path,label\nimg0.png,a\nimg1.png,b\nimg2.png,a\nimg3.png,b\n")
        second = validate_data(source=str(folder), config=config)
        client = MlflowClient(tracking_uri())
        experiment = client.get_experiment_by_name(EXPERIMENT_NAME).experiment_id
        runs = client.search_runs(
            [experiment], "tags.`sslflow.stage` = 'validate:photos'", order_by=["attributes.start_time DESC"]
        )
        report = json.loads(
            open(client.download_artifacts(runs[0].info.run_id, "validation.json", str(tmp_path))).read()
        )
    assert (
        json.loads(second.splitlines()[-1])["quarantined"] == 0 and len(runs) == 2
    )  # a fresh report, not the cached one
    assert "warning: 4 of 4 images have no case id" in second and "a case_id column in metadata.csv" in second
    assert report["warnings"] and report["warnings"][0].startswith("4 of 4 images have no case id")

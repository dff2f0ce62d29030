"""DICOMweb sources against a real Orthanc server (tests/orthanc.py) with basic-auth users: an archive query gives
the dataset the same files give from a folder, survives 429 and 503 answers, is cached by its QIDO-RS listing, and
refuses what it cannot read by name. Skipped, saying why, where Orthanc or its DICOMweb plugin is not installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from dicom_files import PLANTED, write_dicom, write_pacs_folder
from faulty_proxy import FaultyS3Proxy, self_signed_certificate
from ingested import ingest
from orthanc import MISSING, orthanc_server
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from sslflow.config import IngestConfig
from sslflow.data.chunks import ingest_source
from sslflow.data.pseudonyms import Pseudonyms
from sslflow.data.sources import dicomweb, fingerprint_source, open_source
from sslflow.data.sources.dicomweb_http import CA_BUNDLE_ENV, PASSWORD_ENV, TOKEN_ENV, USERNAME_ENV
from sslflow.data.types import SourceError
from workflows.data import validate_data

pytestmark = pytest.mark.skipif(MISSING is not None, reason=str(MISSING))
USER, PASSWORD = "sslflow-reader", "a-long-test-password-0123"
CONFIG = IngestConfig(image_size=16, chunk_images=8, max_bad_fraction=0.5)  # a chunk of 2 may hold 1 bad file


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """One Orthanc for the module, its credentials in the environment as a user sets them."""
    with (
        orthanc_server(tmp_path_factory.mktemp("orthanc"), users={USER: PASSWORD}) as server,
        pytest.MonkeyPatch.context() as environment,
    ):
        environment.setenv(USERNAME_ENV, USER)
        environment.setenv(PASSWORD_ENV, PASSWORD)
        environment.delenv(TOKEN_ENV, raising=False)
        yield server


def write_study(folder: Path, description: str, patient: str, images: int, seed: int) -> list[Path]:
    """One CT series of ``images`` 16 x 16 images of ``patient`` with StudyDescription ``description``."""
    study, series, rng = generate_uid(), generate_uid(), np.random.default_rng(seed)
    return [
        write_dicom(
            folder / f"{study}-{index}.dcm",
            rng.integers(0, 4000, (16, 16)).astype(np.int16),
            StudyInstanceUID=study,
            SeriesInstanceUID=series,
            StudyDescription=description,
            PatientID=patient,
            InstanceNumber=index + 1,
        )
        for index in range(images)
    ]


def _pacs_export(folder: Path) -> list[Path]:
    """A PACS export (dicom_files.write_pacs_folder, every file StudyDate 20231105) with an image held back for
    burned-in text and one no installed decoder reads (JPEG Extended): its DICOM files, DICOMDIR and notes removed."""
    write_pacs_folder(folder, copies=2, patients=3, planted=PLANTED)
    write_dicom(
        folder / "PAT1" / "BURNED" / "IM0001", np.full((8, 8), 1200, np.int16), BurnedInAnnotation="YES", **PLANTED
    )
    lossy = pydicom.dcmread(get_testdata_file("JPEG-lossy.dcm"))
    lossy.StudyDate, lossy.PatientID = PLANTED["StudyDate"], "PID-8675309-ZQPAT2"
    (folder / "PAT2" / "LOSSY").mkdir()
    lossy.save_as(folder / "PAT2" / "LOSSY" / "IM0001")
    (folder / "DICOMDIR").unlink()
    (folder / "README.txt").unlink()
    return sorted(path for path in folder.rglob("*") if path.is_file())


def _same_columns(manifest: pd.DataFrame) -> pd.DataFrame:
    return manifest.drop(columns=["image_key", "shard", "shard_row"]).sort_values("sha256").reset_index(drop=True)


def _refusals(summary: dict) -> list[str]:
    return sorted(item["problem"].replace(item["image_key"], "<image>") for item in summary["quarantined"])


def test_an_archive_query_gives_the_dataset_pseudonyms_and_refusals_of_the_same_files_in_a_folder(archive, tmp_path):
    files = _pacs_export(tmp_path / "export")
    archive.store(files)
    archive.store(
        write_study(tmp_path / "other", "NOT SELECTED", "P-OTHER", 2, seed=1)
    )  # another date: not in the query
    from_folder, folder_pixels, folder_summary = ingest(tmp_path / "export", CONFIG)
    from_archive, archive_pixels, archive_summary = ingest(archive.uri("StudyDate=20231105"), CONFIG)
    pd.testing.assert_frame_equal(
        _same_columns(from_archive), _same_columns(from_folder), check_dtype=False
    )  # pixels, sizes, case and site pseudonyms, splits
    assert sorted(map(bytes, archive_pixels)) == sorted(map(bytes, folder_pixels))
    assert len(from_archive) == 12 and from_archive["case_id"].str.startswith("patient-").all()
    for name in (
        "images",
        "cases",
        "case_ids",
        "split_counts",
        "sites",
        "modalities",
        "held_back",
        "skipped_non_image",
        "instance_copies_dropped",
    ):
        assert archive_summary[name] == folder_summary[name], name
    assert archive_summary["held_back"] == {"burned_in_annotation": 1} and archive_summary["skipped_non_image"] == {
        "Basic Text SR Storage": 1,
        "RT Plan Storage": 1,
    }
    assert (
        _refusals(archive_summary) == _refusals(folder_summary) and len(_refusals(archive_summary)) == 2
    )  # burned in, JPEG Extended
    paths = [f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}" for ds in map(pydicom.dcmread, files)]
    assert set(from_archive["image_key"]) <= {
        Pseudonyms().pseudonym("file", path) for path in paths
    }  # an instance's key: its UIDs' HMAC


def test_validate_data_on_an_archive_query_labelled_by_sop_instance_uid(archive, tmp_path):
    files = [
        path
        for patient in range(4)
        for path in write_study(tmp_path / "validate", "SSLFLOW-VALIDATE", f"P-V{patient}", 3, seed=10 + patient)
    ]
    archive.store(files)
    uids = [str(pydicom.dcmread(path).SOPInstanceUID) for path in files]
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"sop_instance_uid": uids, "label": [index % 2 for index in range(len(uids))]}).to_csv(
        labels, index=False
    )
    summary = validate_data(source=archive.uri(f"StudyDescription=SSLFLOW-VALIDATE&Modality=CT&metadata={labels}"))
    assert "is valid: 12 images, 4 cases" in summary
    assert not any(uid in summary for uid in uids)


def test_through_429_and_503_answers_ingest_gives_the_same_dataset_and_waits_as_told(archive, tmp_path, monkeypatch):
    monkeypatch.setenv("SSLFLOW_INGEST_CACHE", "off")  # every instance is retrieved in both runs
    archive.store(
        [
            path
            for patient in range(3)
            for path in write_study(tmp_path / "faults", "SSLFLOW-FAULTS", f"P-F{patient}", 4, seed=20 + patient)
        ]
    )
    query = "/dicom-web?StudyDescription=SSLFLOW-FAULTS"
    expected, _, _ = ingest_source(archive.uri().replace("/dicom-web", query), CONFIG, tmp_path / "direct")
    upstream = archive.base_url.removesuffix("/dicom-web")
    with FaultyS3Proxy(upstream, slow_down_every=5, reset_every=7, too_many_every=6, retry_after=1) as proxy:
        observed, _, _ = ingest_source(f"dicomweb+{proxy.endpoint}{query}", CONFIG, tmp_path / "through-faults")
    assert observed == expected
    assert min(proxy.injected.values()) >= 2, proxy.injected
    assert proxy.waits_after_too_many and min(proxy.waits_after_too_many) >= 0.95  # Retry-After: 1 honoured


def test_the_fingerprint_is_the_listing_an_unchanged_query_hits_and_a_new_study_misses(archive, tmp_path, monkeypatch):
    archive.store(write_study(tmp_path / "cache", "SSLFLOW-CACHE", "P-C0", 3, seed=30))
    source = archive.uri("StudyDescription=SSLFLOW-CACHE")
    first = fingerprint_source(source)
    assert fingerprint_source(source) == first
    archive.store(
        write_study(tmp_path / "elsewhere", "SSLFLOW-ELSEWHERE", "P-C1", 2, seed=31)
    )  # not selected: still a hit
    assert fingerprint_source(source) == first
    archive.store(write_study(tmp_path / "more", "SSLFLOW-CACHE", "P-C2", 1, seed=32))
    second = fingerprint_source(source)
    assert second != first
    monkeypatch.setattr(
        dicomweb, "PAGE_SIZE", 2
    )  # studies, series and instances a page of 2 at a time: the same listing
    assert fingerprint_source(source) == second


def test_refusals_name_the_archive_and_the_problem(archive, monkeypatch):
    with pytest.raises(
        SourceError,
        match=r"the query matches no instance in the archive \(studies by \{'StudyDate': '19000101-19001231'\}",
    ):
        ingest(archive.uri("StudyDate=19000101-19001231"), CONFIG)
    with pytest.raises(SourceError, match=r"dicom-web: the query selects by PatientID, an identifier") as refused:
        open_source(archive.uri("PatientID=PID-8675309"))
    assert "8675309" not in str(refused.value)
    with pytest.raises(SourceError, match=r"credentials in the URI would be logged"):
        open_source(f"dicomweb+http://{USER}:{PASSWORD}@127.0.0.1:1/dicom-web")
    with pytest.raises(
        SourceError, match=r"dicom-web, searching studies \(QIDO-RS\): not found: no DICOMweb service at this URL"
    ):
        fingerprint_source(archive.uri().replace("/dicom-web", "/no-dicom-web"))
    monkeypatch.setenv(PASSWORD_ENV, "not-the-password")
    with pytest.raises(
        SourceError, match=rf"the archive asks for credentials, or refused the ones given: set {TOKEN_ENV}"
    ) as refused:
        fingerprint_source(archive.uri())
    assert "not-the-password" not in str(refused.value)
    monkeypatch.setenv(TOKEN_ENV, "a-token")
    with pytest.raises(SourceError, match=rf"both {TOKEN_ENV} and {USERNAME_ENV}/{PASSWORD_ENV} are set"):
        fingerprint_source(archive.uri())
    monkeypatch.delenv(USERNAME_ENV)
    monkeypatch.delenv(PASSWORD_ENV)
    with pytest.raises(SourceError, match=r"credentials are sent only over https \(or to a loopback address\)"):
        fingerprint_source("dicomweb+http://pacs.example.org/dicom-web?Modality=CT")


def test_tls_is_verified_against_the_ca_bundle_setting(archive, tmp_path, monkeypatch):
    """The archive behind a TLS front (the proxy with a self-signed certificate, as a hospital's own CA signs one)."""
    archive.store(write_study(tmp_path / "tls-study", "SSLFLOW-TLS", "P-T0", 2, seed=40))
    certificate = self_signed_certificate(tmp_path / "tls")
    with FaultyS3Proxy(
        archive.base_url.removesuffix("/dicom-web"), slow_down_every=10**9, reset_every=10**9, certificate=certificate
    ) as front:
        source = f"dicomweb+{front.endpoint}/dicom-web?StudyDescription=SSLFLOW-TLS"
        monkeypatch.delenv(CA_BUNDLE_ENV, raising=False)
        with pytest.raises(
            SourceError,
            match=rf"{front.endpoint}/dicom-web, searching studies \(QIDO-RS\): "
            rf"its TLS certificate cannot be verified .* set {CA_BUNDLE_ENV}",
        ):
            fingerprint_source(source)
        monkeypatch.setenv(CA_BUNDLE_ENV, str(certificate))  # the hospital's CA: here the certificate itself
        assert len(ingest(source, CONFIG)[0]) == 2
        monkeypatch.setenv(CA_BUNDLE_ENV, str(tmp_path / "no-such-ca.pem"))
        with pytest.raises(SourceError, match=rf"{CA_BUNDLE_ENV}=.*no-such-ca.pem: no such file"):
            fingerprint_source(source)

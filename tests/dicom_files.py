"""DICOM test data without network: synthetic files written with pydicom, and PACS-style folders built from
the ~80 real files pydicom's wheel ships (pydicom.data.get_testdata_file)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

# values a PACS export carries that must never reach any output
PLANTED = {
    "SpecificCharacterSet": "ISO_IR 100",
    "PatientName": "Zyxwvüt^Qöpnmlk",
    "PatientID": "PID-8675309-ZQ",
    "PatientBirthDate": "19230417",
    "StudyDate": "20231105",
    "AccessionNumber": "ACC-5551234-XJ",
    "OtherPatientIDs": "MRN-77441122-KW",
    "ReferringPhysicianName": "Drqxv^Jolyon",
}
PLANTED_FRAGMENTS = ("8675309", "5551234", "77441122", "Zyxwvüt", "Qöpnmlk", "Drqxv", "Jolyon", "19230417", "20231105")


def export_path(planted: dict, patient: str, modality: str, accession: str, uid: str, index: int) -> str:
    """Where a PACS export puts an image: <NAME>_<MRN>/<StudyDate>/<Modality>/<Accession>_<n>.dcm, or the file named by
    its SOPInstanceUID (every other image, no extension)."""
    name = planted["PatientName"].replace("^", "_").upper()
    folder = f"{name}_{planted['PatientID']}{patient}/{planted['StudyDate']}/{modality}"
    return f"{folder}/{accession}_{index}.dcm" if index % 2 == 0 else f"{folder}/{uid}"


def write_dicom(path: Path, pixels: np.ndarray, **header) -> Path:
    """A single-frame image (CT Image Storage unless SOPClassUID is given) of ``pixels`` (rows, columns) int16/uint16 or
    (frames, rows, columns); header: any DICOM keywords (PhotometricInterpretation, RescaleSlope, WindowCenter, ...)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = header.pop("SOPClassUID", CTImageStorage)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID = "CT", "synthetic"
    frames = pixels.shape[0] if pixels.ndim == 3 else 1
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    if frames > 1:
        ds.NumberOfFrames = frames
    for keyword, value in header.items():
        setattr(ds, keyword, value)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _copy_with(source: str, target: Path, **header) -> None:
    ds = pydicom.dcmread(get_testdata_file(source))
    for keyword, value in header.items():
        setattr(ds, keyword, value)
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target)


def _write_pacs_image(
    root: Path,
    source: str,
    modality: str,
    copy: int,
    index: int,
    num_sources: int,
    patients: int,
    planted: dict | None,
    identifying_paths: bool,
) -> dict:
    """Copy ``copy`` of bundled image ``source`` (write_pacs_folder's ``index``-th) under ``root``; its manifest row."""
    patient = f"PAT{(copy * num_sources + index) % patients}"
    institution = "North Hospital" if (copy // 2 + index) % 2 else "South Clinic"  # a patient visits both
    path = f"{patient}/STUDY{copy}/SERIES{index}/IM{copy:02d}{index:02d}"
    ds = pydicom.dcmread(get_testdata_file(source))
    for keyword, value in (planted or {}).items():
        setattr(ds, keyword, value)
    ds.PatientID, ds.InstitutionName = f"{(planted or {}).get('PatientID', '')}{patient}", institution
    ds.IssuerOfPatientID = "REGIONAL-MPI"  # one patient index over both institutions: PAT<k> is one person at both
    if copy:  # a different image (its own SOPInstanceUID): shift the decoded pixels, store uncompressed
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.decompress() if ds.file_meta.TransferSyntaxUID.is_compressed else None
        axis = -2 if ds.get("SamplesPerPixel", 1) == 1 else -3
        ds.PixelData = np.roll(ds.pixel_array, copy, axis=axis).tobytes()
    if identifying_paths:
        accession = f"{planted['AccessionNumber']}{copy}{index}"
        ds.AccessionNumber = accession
        serial = copy * num_sources + index
        path = export_path(planted, patient, modality, accession, str(ds.SOPInstanceUID), serial)
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(root / path)
    return {"path": path, "patient": patient, "institution": institution, "modality": modality}


def write_pacs_folder(
    root: Path,
    *,
    copies: int = 4,
    patients: int = 5,
    planted: dict | None = None,
    multiframe: bool = False,
    identifying_paths: bool = False,
) -> pd.DataFrame:
    """A PACS export: extensionless files in patient/study/series folders, several patients at two institutions,
    CT, MR, US (RGB, palette, multi-frame YBR JPEG) and non-image objects (SR, RT plan) plus a DICOMDIR.

    Each bundled image is written ``copies`` times with a small pixel shift so the copies are not duplicates; patients:
    PAT<k> (PatientID = planted PatientID + PAT<k>, IssuerOfPatientID REGIONAL-MPI), institutions "North Hospital" /
    "South Clinic". planted: header values added to every image (PLANTED). identifying_paths (with planted): files laid
    out as an export names them (export_path): patient name, MRN, study date, accession number and SOPInstanceUID in the
    path. Returns one row per image file: path, patient, institution, modality."""
    sources = [
        ("CT_small.dcm", "CT"),
        ("MR_small.dcm", "MR"),
        ("693_J2KI.dcm", "CT"),
        ("examples_rgb_color.dcm", "US"),
        ("examples_palette.dcm", "US"),
        ("JPEG2000.dcm", "NM"),
    ]
    rows = [
        _write_pacs_image(root, source, modality, copy, index, len(sources), patients, planted, identifying_paths)
        for copy in range(copies)
        for index, (source, modality) in enumerate(sources)
    ]
    _copy_with("reportsi.dcm", root / "PAT0/SR/SR0001", **(planted or {}))
    _copy_with("rtplan.dcm", root / "PAT1/RTPLAN/RP0001", **(planted or {}))
    shutil.copy(get_testdata_file("DICOMDIR"), root / "DICOMDIR")
    if multiframe:  # 30 frames of ultrasound, JPEG baseline YBR_FULL_422
        prefix = (planted or {}).get("PatientID", "")
        header = {
            **(planted or {}),
            "PatientID": f"{prefix}PAT0",
            "InstitutionName": "North Hospital",
            "IssuerOfPatientID": "REGIONAL-MPI",
        }
        _copy_with("examples_ybr_color.dcm", root / "PAT0/CINE/US0001", **header)
        rows.append({"path": "PAT0/CINE/US0001", "patient": "PAT0", "institution": "North Hospital", "modality": "US"})
    (root / "README.txt").write_text("export notes, not DICOM\n")
    return pd.DataFrame(rows)

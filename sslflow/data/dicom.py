"""One DICOM file's bytes -> its frames as (frames, channels, size, size) uint8, plus pseudonymised identity.

Detected by content: the ``DICM`` magic at byte offset 128 (has_dicom_preamble), whatever the file is
called. Read by pydicom; compressed transfer syntaxes through its own decoders (RLE, deflate) and the
pylibjpeg plugins (JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000).

Pixel policy (README "Medical data"), by pydicom's own pixel pipeline:
- colour: YBR_* converted to RGB by pydicom when decoding, PALETTE COLOR through apply_color_lut;
  scaled by the full scale of their bit depth (2**BitsStored - 1; 8 or 16 bits for a palette);
- MONOCHROME1/2: apply_modality_lut (CT: stored values -> Hounsfield units by RescaleSlope and
  RescaleIntercept), then a window (IngestConfig.dicom_window: the header's first window or VOI LUT,
  a CT preset, or none) by apply_windowing / apply_voi_lut. The result is mapped to [0, 255] from the
  range pydicom's windowing maps into: the modality LUT applied to the range BitsStored and
  PixelRepresentation allow (so unwindowed 12-bit CT keeps its whole range, nothing clipped; only
  values outside what the header declares are clipped). MONOCHROME1 is then inverted (255 - v), so
  bright always means dense;
- one channel: colour to grey by ITU-R 601-2 luma (as Pillow's "L"); three: grey repeated;
- resized per frame and channel to size x size, bilinear, in float, rounded once;
- multi-frame objects: IngestConfig.dicom_frames ("all": one image per frame, same case).
Identity: the case from PatientID, StudyInstanceUID or SeriesInstanceUID (dicom_case_level), always
pseudonymised (sslflow/data/pseudonyms.py); the site from InstitutionName or Manufacturer +
ManufacturerModelName (dicom_site); the Modality. No other header value leaves this module: messages
name the file, the SOP class and the transfer syntax, and any text from pydicom is scrubbed of the
file's identifying values first. pydicom's own log output is limited to errors (its warnings can
quote header values).

Objects without an image (structured reports, RT plans and doses, segmentations, presentation
states, DICOMDIRs, ...) raise NonImageObject: skipped and counted, not an error.
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, apply_windowing

from sslflow.config import IngestConfig
from sslflow.data.decode import check_pixel_count
from sslflow.data.pseudonyms import Pseudonyms
from sslflow.data.types import UndecodableImageError

DICOM_MAGIC_OFFSET, DICOM_MAGIC = 128, b"DICM"
PREAMBLE_BYTES = DICOM_MAGIC_OFFSET + len(DICOM_MAGIC)
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
CT_PRESETS = {"ct-soft-tissue": (40.0, 400.0), "ct-lung": (-600.0, 1500.0), "ct-bone": (400.0, 1800.0), "ct-brain": (40.0, 80.0)}
WINDOW_KEYWORDS = (
    "PhotometricInterpretation", "BitsStored", "PixelRepresentation", "RescaleSlope", "RescaleIntercept",
    "ModalityLUTSequence", "VOILUTFunction",
)  # fmt: skip
# values never to be shown, even inside a decoder's message (PS3.15 basic profile, the usual suspects)
IDENTIFYING_KEYWORDS = (
    "PatientID", "PatientName", "PatientBirthDate", "PatientBirthTime", "PatientSex", "PatientAge", "PatientAddress",
    "PatientTelephoneNumbers", "OtherPatientIDs", "OtherPatientNames", "PatientMotherBirthName", "IssuerOfPatientID",
    "AccessionNumber", "StudyID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID",
    "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName", "NameOfPhysiciansReadingStudy",
    "RequestingPhysician", "InstitutionAddress", "StudyDate", "StudyTime", "AcquisitionDateTime", "ContentDate",
    "DeviceSerialNumber", "MedicalRecordLocator", "EthnicGroup", "Occupation", "AdditionalPatientHistory",
)  # fmt: skip
CASE_KEYWORDS = {"patient": "PatientID", "study": "StudyInstanceUID", "series": "SeriesInstanceUID"}

logging.getLogger("pydicom").setLevel(logging.ERROR)


class NonImageObject(Exception):
    """A DICOM object without an image to learn from; ``sop_class`` names its kind (e.g. "Basic Text SR Storage")."""

    def __init__(self, sop_class: str):
        super().__init__(sop_class)
        self.sop_class = sop_class


@dataclass(frozen=True)
class DicomImage:
    """pixels: (frames, channels, size, size) uint8; width, height, mode: as stored; case_id: a pseudonym or None."""

    pixels: np.ndarray
    width: int
    height: int
    mode: str
    modality: str
    case_id: str | None
    site: str
    instance: str = ""  # the pseudonym of the SOPInstanceUID ("" without one): matches metadata rows keyed by it


def has_dicom_preamble(head: bytes) -> bool:
    """Whether a file's first PREAMBLE_BYTES bytes hold the DICOM magic ``DICM`` at offset 128."""
    return head[DICOM_MAGIC_OFFSET:PREAMBLE_BYTES] == DICOM_MAGIC


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return str(value).strip() if value is not None else ""


def _scrub(text: str, ds: Dataset | None) -> str:
    """``text`` with every identifying value of ``ds`` replaced by <redacted>; at most 300 characters."""
    for keyword in IDENTIFYING_KEYWORDS if ds is not None else ():
        element = ds.get(keyword)
        values = element if isinstance(element, (list, tuple, pydicom.multival.MultiValue)) else [element]
        for value in values:
            for spelling in {str(value).strip(), repr(value)} if value not in (None, "") else ():
                if len(spelling) >= 2:
                    text = text.replace(spelling, "<redacted>")
    return text[:300]


def _transfer_syntax(ds: Dataset) -> str:
    uid = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    return f"{uid.name} ({uid})" if uid else "none stated (no TransferSyntaxUID in the file meta)"


def _sop_class(ds: Dataset) -> str:
    uid = ds.get("SOPClassUID") or (ds.file_meta.get("MediaStorageSOPClassUID") if hasattr(ds, "file_meta") else None)
    return uid.name if uid else ""


def _read_dataset(data: bytes, name: str) -> Dataset:
    try:
        return pydicom.dcmread(io.BytesIO(data))
    except Exception as error:  # pydicom raises many types for bad bytes; none may escape as a crash
        raise UndecodableImageError(f"{name}: not a readable DICOM file, truncated or corrupt ({type(error).__name__}: {_scrub(str(error), None)})") from error


def _check_image_object(ds: Dataset, name: str) -> None:
    """NonImageObject for an object without an image; UndecodableImageError for an image SOP class without pixels."""
    sop_class = _sop_class(ds)
    has_pixels = any(keyword in ds for keyword in PIXEL_KEYWORDS)
    if has_pixels and (not sop_class or "Image" in sop_class):
        return
    if not has_pixels and "Image Storage" in sop_class:
        raise UndecodableImageError(f"{name}: a {sop_class} object without pixel data (no (7FE0,0010) element); the file is incomplete")
    raise NonImageObject(sop_class or "unknown SOP class")


def _frame_indices(ds: Dataset, policy: str) -> list[int] | None:
    """The frames to decode (None: the only one, or all of them)."""
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames <= 1 or policy == "all":
        return None
    return [0] if policy == "first" else [frames // 2]


def _decoded_frames(ds: Dataset, name: str, indices: list[int] | None) -> np.ndarray:
    """Decoded pixels (frames, rows, columns, samples); UndecodableImageError naming the transfer syntax."""
    try:
        if indices is not None:
            ds.pixel_array_options(index=indices[0])
        array = ds.pixel_array
    except Exception as error:  # no decoder, truncated or inconsistent pixel data: every cause is refused, named
        raise UndecodableImageError(
            f"{name}: the pixel data of this {_sop_class(ds) or 'DICOM'} object cannot be decoded "
            f"(transfer syntax {_transfer_syntax(ds)}; {type(error).__name__}: {_scrub(str(error), ds)})"
        ) from error
    samples = int(ds.get("SamplesPerPixel") or 1)
    single = indices is not None or int(ds.get("NumberOfFrames") or 1) <= 1
    array = array[None] if single else array
    return array[..., None] if samples == 1 else array


def _window_dataset(ds: Dataset, window: str) -> tuple[Dataset, tuple[float, float] | None]:
    """A dataset holding only what windowing needs, and the (center, width) to apply (None: no window)."""
    small = Dataset()
    for keyword in WINDOW_KEYWORDS:
        if keyword in ds:
            setattr(small, keyword, ds.get(keyword))
    if window in CT_PRESETS and _text(ds, "Modality") == "CT":
        center_width = CT_PRESETS[window]
    elif window != "full-range" and "WindowCenter" in ds and "WindowWidth" in ds:
        first = lambda value: float(value[0] if isinstance(value, pydicom.multival.MultiValue) else value)  # noqa: E731
        center_width = (first(ds.WindowCenter), first(ds.WindowWidth))
        center_width = center_width if center_width[1] >= 1 else None
    else:
        center_width = None
    if center_width:
        small.WindowCenter, small.WindowWidth = center_width
    return small, center_width


def _output_range(small: Dataset) -> tuple[float, float]:
    """The range pydicom's apply_windowing maps into: the modality LUT of the stored range (its y_min, y_max)."""
    if small.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(small.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    bits = int(small.BitsStored)
    low, high = (0.0, 2.0**bits - 1) if int(small.get("PixelRepresentation", 0)) == 0 else (-(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1)
    if "RescaleSlope" in small and "RescaleIntercept" in small:
        slope, intercept = float(small.RescaleSlope), float(small.RescaleIntercept)
        low, high = sorted((low * slope + intercept, high * slope + intercept))
    return low, high


def _monochrome_to_unit(frames: np.ndarray, ds: Dataset, window: str) -> np.ndarray:
    """MONOCHROME1/2 frames (F, R, C, 1) -> floats in [0, 255]: modality LUT, window, range, inversion."""
    small, center_width = _window_dataset(ds, window)
    values = apply_modality_lut(frames, ds).astype(np.float64)
    low, high = _output_range(small)
    if center_width:
        values = apply_windowing(values, small)
    elif window == "header" and ds.get("VOILUTSequence"):
        values = apply_voi_lut(values, ds, prefer_lut=True).astype(np.float64)
        low, high = 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    scaled = np.clip((values - low) * (255.0 / (high - low)), 0.0, 255.0) if high > low else np.zeros_like(values)
    return 255.0 - scaled if _text(ds, "PhotometricInterpretation") == "MONOCHROME1" else scaled


def _to_unit_range(frames: np.ndarray, ds: Dataset, window: str) -> np.ndarray:
    """Decoded frames (F, R, C, S) -> floats in [0, 255], (F, R, C, 1) grey or (F, R, C, 3) RGB."""
    photometric = _text(ds, "PhotometricInterpretation")
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(frames[..., 0], ds)
        return rgb.astype(np.float64) * (255.0 / (255 if rgb.dtype == np.uint8 else 65535))
    if frames.shape[-1] == 3:
        return np.clip(frames.astype(np.float64) * (255.0 / (2 ** int(ds.BitsStored) - 1)), 0.0, 255.0)
    return _monochrome_to_unit(frames, ds, window)


def _resize(unit: np.ndarray, size: int, channels: int) -> np.ndarray:
    """(F, R, C, S) floats in [0, 255] -> (F, channels, size, size) uint8: luma or repeat, bilinear, rounded once."""
    if unit.shape[-1] == 3 and channels == 1:
        unit = (unit[..., 0] * 299 + unit[..., 1] * 587 + unit[..., 2] * 114)[..., None] / 1000
    planes = [
        [np.asarray(Image.fromarray(frame[..., sample].astype(np.float32), mode="F").resize((size, size), Image.Resampling.BILINEAR))
         for sample in range(frame.shape[-1])]
        for frame in unit
    ]  # fmt: skip
    pixels = np.clip(np.round(np.array(planes, dtype=np.float64)), 0, 255).astype(np.uint8)
    if pixels.shape[1] == 1 and channels == 3:
        pixels = np.repeat(pixels, 3, axis=1)
    return np.ascontiguousarray(pixels)


def _identity(ds: Dataset, config: IngestConfig, pseudonyms: Pseudonyms) -> tuple[str | None, str]:
    """(case_id pseudonym or None, site) from the header, by config.dicom_case_level and config.dicom_site."""
    level = config.dicom_case_level
    value = _text(ds, CASE_KEYWORDS[level])
    case_id = pseudonyms.pseudonym(level, value) if value else None
    institution = _text(ds, "InstitutionName")
    scanner = " ".join(part for part in (_text(ds, "Manufacturer"), _text(ds, "ManufacturerModelName")) if part)
    first, second = (institution, scanner) if config.dicom_site == "institution" else (scanner, institution)
    return case_id, first or second or "default"


def _instance(ds: Dataset, pseudonyms: Pseudonyms) -> str:
    uid = _text(ds, "SOPInstanceUID")
    return pseudonyms.pseudonym("instance", uid) if uid else ""


def decode_dicom(data: bytes, name: str, config: IngestConfig, pseudonyms: Pseudonyms) -> DicomImage:
    """Decode one DICOM file's bytes by the module's policy; ``name`` (path or URL) is used in messages.

    Raises NonImageObject for an object without an image, UndecodableImageError for a file that is not
    readable DICOM, an image without pixel data, pixel data no installed decoder handles (the transfer
    syntax is named), truncated or inconsistent pixel data, or more than config.max_image_pixels pixels.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warnings can quote header values
        ds = _read_dataset(data, name)
        _check_image_object(ds, name)
        rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        indices = _frame_indices(ds, config.dicom_frames)
        check_pixel_count(columns, rows * (len(indices) if indices else int(ds.get("NumberOfFrames") or 1)), config.max_image_pixels, name)
        frames = _decoded_frames(ds, name, indices)
        try:
            unit = _to_unit_range(frames, ds, config.dicom_window)
        except Exception as error:  # a LUT or window the header describes inconsistently
            raise UndecodableImageError(f"{name}: the pixel values cannot be mapped to 8 bits ({type(error).__name__}: {_scrub(str(error), ds)})") from error
    case_id, site = _identity(ds, config, pseudonyms)
    modality = _text(ds, "Modality") or "OT"
    mode = f"DICOM {modality} {_text(ds, 'PhotometricInterpretation') or '?'} {int(ds.get('BitsStored') or 0)}-bit"
    return DicomImage(
        pixels=_resize(unit, config.image_size, config.channels), width=columns, height=rows, mode=mode,
        modality=modality, case_id=case_id, site=site, instance=_instance(ds, pseudonyms),
    )  # fmt: skip

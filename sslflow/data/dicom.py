"""One DICOM file's bytes -> its frames as (frames, channels, size, size) uint8, plus pseudonymised identity.

Detected by content: the ``DICM`` magic at byte offset 128 (has_dicom_preamble), whatever the file is
called. Read by pydicom; compressed transfer syntaxes through its own decoders (RLE, deflate) and the
pylibjpeg plugins (JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000).

Pixel policy (README "Medical data"), by pydicom's own pixel pipeline:
- colour: YBR_* converted to RGB by pydicom when decoding, PALETTE COLOR through apply_color_lut;
  scaled by the full scale of their bit depth (2**BitsStored - 1; 8 or 16 bits for a palette);
- MONOCHROME1/2: apply_modality_lut, then a window (IngestConfig.dicom_window), per frame with the
  functional groups of Enhanced objects: sslflow/data/dicom_pixels.py;
- one channel: colour to grey by ITU-R 601-2 luma (as Pillow's "L"); three: grey repeated;
- resized per frame and channel to size x size, bilinear, in float, rounded once;
- multi-frame objects: IngestConfig.dicom_frames ("all": one image per frame, same case).
Identity (sslflow/data/dicom_identity.py): the case from IssuerOfPatientID (else InstitutionName) +
PatientID, falling back to StudyInstanceUID then SeriesInstanceUID, always pseudonymised; the site,
pseudonymised unless IngestConfig.dicom_site_names; the Modality; the SOPInstanceUID's pseudonym and
whether the pixels are lossless (one SOPInstanceUID is one image: the join keeps the lossless copy). No
other header value leaves this module: messages name the file, the SOP class and the transfer syntax,
and any text from pydicom is scrubbed of the file's identifying values first. pydicom's own log output
is limited to errors (its warnings can quote header values).

Held back (HeldBackImage, unless IngestConfig.dicom_burned_in): BurnedInAnnotation YES. Refused
(UndecodableImageError, quarantinable): a JPEG, JPEG-LS or JPEG 2000 frame that does not end with its
end marker (FF D9: EOI / EOC), which the decoders would otherwise fill in silently.
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
from pydicom.encaps import generate_frames
from pydicom.uid import JPEG2000, UID, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSNearLossless

from sslflow.config import IngestConfig
from sslflow.data.decode import check_pixel_count
from sslflow.data.dicom_identity import case_identity, site_identity
from sslflow.data.dicom_pixels import to_unit_range
from sslflow.data.pseudonyms import Pseudonyms
from sslflow.data.types import UndecodableImageError

DICOM_MAGIC_OFFSET, DICOM_MAGIC = 128, b"DICM"
PREAMBLE_BYTES = DICOM_MAGIC_OFFSET + len(DICOM_MAGIC)
HEADER_PROBE_BYTES = 64 * 2**10  # bytes of a file read to find its NumberOfFrames (frames_in_header)
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# transfer syntaxes whose frames end with an EOI (JPEG, JPEG-LS) or EOC (JPEG 2000, HTJ2K) marker: FF D9
MARKED_SYNTAXES = (
    "1.2.840.10008.1.2.4.5",
    "1.2.840.10008.1.2.4.7",
    "1.2.840.10008.1.2.4.8",
    "1.2.840.10008.1.2.4.9",
    "1.2.840.10008.1.2.4.20",
)
END_OF_IMAGE = b"\xff\xd9"
LOSSY_SYNTAXES = (JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSNearLossless, JPEG2000, UID("1.2.840.10008.1.2.4.203"))
# values never to be shown, even inside a decoder's message (PS3.15 basic profile, the usual suspects)
IDENTIFYING_KEYWORDS = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "PatientAge",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientMotherBirthName",
    "IssuerOfPatientID",
    "AccessionNumber",
    "StudyID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "NameOfPhysiciansReadingStudy",
    "RequestingPhysician",
    "InstitutionAddress",
    "StudyDate",
    "StudyTime",
    "AcquisitionDateTime",
    "ContentDate",
    "DeviceSerialNumber",
    "MedicalRecordLocator",
    "EthnicGroup",
    "Occupation",
    "AdditionalPatientHistory",
)
logging.getLogger("pydicom").setLevel(logging.ERROR)


class HeldBackImage(Exception):
    """An image not to be learnt from by default (BurnedInAnnotation YES); ``reason`` names why, for the summary."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


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
    case_level: str = ""  # where case_id came from: "patient", "study", "series" ("" none)
    lossless: bool = True  # False: lossy compressed, now or before (LossyImageCompression 01)


def has_dicom_preamble(head: bytes) -> bool:
    """Whether a file's first PREAMBLE_BYTES bytes hold the DICOM magic ``DICM`` at offset 128."""
    return head[DICOM_MAGIC_OFFSET:PREAMBLE_BYTES] == DICOM_MAGIC


def frames_in_header(head: bytes) -> int:
    """NumberOfFrames of the DICOM object whose first bytes are ``head`` (its header: the plan reads
    HEADER_PROBE_BYTES of large objects, sslflow/data/chunks.py); 1 when it has none or the header is not whole in
    ``head`` (counted as one image: its chunk is cut by its bytes alone)."""
    try:
        ds = pydicom.dcmread(io.BytesIO(head), stop_before_pixels=True, specific_tags=["NumberOfFrames"])
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except Exception:  # pydicom raises many types for a cut or bad header; the chunk that decodes it refuses it
        return 1


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
        raise UndecodableImageError(
            f"{name}: not a readable DICOM file, truncated or corrupt ({type(error).__name__}: "
            f"{_scrub(str(error), None)})"
        ) from error


def _check_image_object(ds: Dataset, name: str) -> None:
    """NonImageObject for an object without an image; UndecodableImageError for an image SOP class without pixels."""
    sop_class = _sop_class(ds)
    has_pixels = any(keyword in ds for keyword in PIXEL_KEYWORDS)
    if has_pixels and (not sop_class or "Image" in sop_class):
        return
    if not has_pixels and "Image Storage" in sop_class:
        raise UndecodableImageError(
            f"{name}: a {sop_class} object without pixel data (no (7FE0,0010) element); the file is incomplete"
        )
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


def _resize(unit: np.ndarray, size: int, channels: int) -> np.ndarray:
    """(F, R, C, S) floats in [0, 255] -> (F, channels, size, size) uint8: luma or repeat, bilinear, rounded once."""
    if unit.shape[-1] == 3 and channels == 1:
        unit = (unit[..., 0] * 299 + unit[..., 1] * 587 + unit[..., 2] * 114)[..., None] / 1000
    planes = [
        [
            np.asarray(
                Image.fromarray(frame[..., sample].astype(np.float32), mode="F").resize(
                    (size, size), Image.Resampling.BILINEAR
                )
            )
            for sample in range(frame.shape[-1])
        ]
        for frame in unit
    ]
    pixels = np.clip(np.round(np.array(planes, dtype=np.float64)), 0, 255).astype(np.uint8)
    if pixels.shape[1] == 1 and channels == 3:
        pixels = np.repeat(pixels, 3, axis=1)
    return np.ascontiguousarray(pixels)


def _instance(ds: Dataset, pseudonyms: Pseudonyms) -> str:
    uid = _text(ds, "SOPInstanceUID")
    return pseudonyms.pseudonym("instance", uid) if uid else ""


def _check_burned_in(ds: Dataset, name: str, config: IngestConfig) -> None:
    """HeldBackImage for BurnedInAnnotation YES, unless config.dicom_burned_in opts in."""
    if _text(ds, "BurnedInAnnotation").upper() == "YES" and not config.dicom_burned_in:
        raise HeldBackImage(
            f"{name}: held back: BurnedInAnnotation (0028,0301) is YES, the pixels carry text (often a name); "
            "remove the file, or set IngestConfig.dicom_burned_in=True once the pixels are cleaned",
            "burned_in_annotation",
        )


def _syntax(ds: Dataset) -> str:
    return str(ds.file_meta.get("TransferSyntaxUID") or "") if hasattr(ds, "file_meta") else ""


def _check_frames_complete(ds: Dataset, name: str) -> None:
    """UndecodableImageError naming the frame when a JPEG / JPEG-LS / JPEG 2000 frame lacks its end marker (FF D9).

    A frame cut short still decodes (the decoder fills in the rest), so the marker is checked first.
    """
    if not _syntax(ds).startswith(MARKED_SYNTAXES) or "PixelData" not in ds:
        return
    count = int(ds.get("NumberOfFrames") or 1)
    try:
        frames = list(generate_frames(ds.PixelData, number_of_frames=count))
    except Exception as error:  # broken encapsulation (item tags, offsets): refused by name
        raise UndecodableImageError(
            f"{name}: the encapsulated pixel data is broken ({type(error).__name__}: {_scrub(str(error), ds)})"
        ) from error
    for index, frame in enumerate(frames):
        if END_OF_IMAGE not in frame[-4:]:  # the marker, then at most 2 padding bytes (00 or FF, as encoders write)
            raise UndecodableImageError(
                f"{name}: frame {index + 1} of {len(frames)} is incomplete: its compressed data "
                f"({_transfer_syntax(ds)}) does not end "
                "with the end-of-image marker FF D9, so it was cut short or corrupted; export the file again"
            )


def _lossless(ds: Dataset) -> bool:
    """Whether the pixels were never lossy compressed (transfer syntax, and LossyImageCompression for earlier steps)."""
    return _syntax(ds) not in LOSSY_SYNTAXES and _text(ds, "LossyImageCompression") != "01"


def decode_dicom(data: bytes, name: str, config: IngestConfig, pseudonyms: Pseudonyms) -> DicomImage:
    """Decode one DICOM file's bytes by the module's policy; ``name`` (path or URL) is used in messages.

    Raises NonImageObject for an object without an image, HeldBackImage for BurnedInAnnotation YES (unless
    config.dicom_burned_in), UndecodableImageError for a file that is not readable DICOM, an image without
    pixel data, pixel data no installed decoder handles (the transfer syntax is named), a compressed frame
    without its end marker, truncated or inconsistent pixel data, or more than config.max_image_pixels pixels.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warnings can quote header values
        ds = _read_dataset(data, name)
        _check_image_object(ds, name)
        _check_burned_in(ds, name, config)
        rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        indices = _frame_indices(ds, config.dicom_frames)
        count = int(ds.get("NumberOfFrames") or 1)
        check_pixel_count(columns, rows * (len(indices) if indices else count), config.max_image_pixels, name)
        _check_frames_complete(ds, name)
        frames = _decoded_frames(ds, name, indices)
        try:
            unit = to_unit_range(frames, ds, config.dicom_window, indices or list(range(len(frames))))
        except Exception as error:  # a LUT or window the header describes inconsistently
            raise UndecodableImageError(
                f"{name}: the pixel values cannot be mapped to 8 bits ({type(error).__name__}: "
                f"{_scrub(str(error), ds)})"
            ) from error
    case_id, level = case_identity(ds, config.dicom_case_level, pseudonyms)
    modality = _text(ds, "Modality") or "OT"
    mode = f"DICOM {modality} {_text(ds, 'PhotometricInterpretation') or '?'} {int(ds.get('BitsStored') or 0)}-bit"
    return DicomImage(
        pixels=_resize(unit, config.image_size, config.channels),
        width=columns,
        height=rows,
        mode=mode,
        modality=modality,
        case_id=case_id,
        site=site_identity(ds, config, pseudonyms),
        instance=_instance(ds, pseudonyms),
        case_level=level,
        lossless=_lossless(ds),
    )

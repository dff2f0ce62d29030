"""Decoded DICOM frames -> floats in [0, 255]: modality LUT, window, inversion, colour (policy: sslflow/data/dicom.py).

Each frame is mapped with its own header: the top-level attributes, overridden by the Shared and then the
Per-frame Functional Groups of Enhanced multi-frame objects (Pixel Value Transformation: RescaleSlope,
RescaleIntercept; Frame VOI LUT: WindowCenter, WindowWidth), so an Enhanced CT keeps Hounsfield units.

The window (IngestConfig.dicom_window), grey images only:
- "header": the frame's first window, else the header's VOI LUT; without either, CT gets DEFAULT_CT_WINDOW
  (soft tissue, W400/L40, in HU after RescaleSlope/Intercept) and any other modality the ROBUST_PERCENTILES
  of the object's values (all its decoded frames): a 16-bit MR using 0-2000 fills 0-255 instead of 0-8;
- a CT preset (CT_PRESETS) for CT images; other modalities as "header";
- "full-range": the range pydicom's windowing maps into (the modality LUT of the BitsStored /
  PixelRepresentation range), nothing clipped.
MONOCHROME1 is inverted afterwards (255 - v), so bright always means dense.
"""

from __future__ import annotations

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, apply_windowing

CT_PRESETS = {
    "ct-soft-tissue": (40.0, 400.0),
    "ct-lung": (-600.0, 1500.0),
    "ct-bone": (400.0, 1800.0),
    "ct-brain": (40.0, 80.0),
}
DEFAULT_CT_WINDOW = CT_PRESETS["ct-soft-tissue"]
ROBUST_PERCENTILES = (0.5, 99.5)
FRAME_KEYWORDS = (
    "PhotometricInterpretation",
    "BitsStored",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    "ModalityLUTSequence",
    "VOILUTFunction",
    "VOILUTSequence",
    "WindowCenter",
    "WindowWidth",
)
GROUP_SEQUENCES = ("PixelValueTransformationSequence", "FrameVOILUTSequence")


def _first(value) -> float:
    return float(value[0] if isinstance(value, pydicom.multival.MultiValue) else value)


def frame_header(ds: Dataset, frame: int) -> Dataset:
    """What mapping frame ``frame`` needs: top-level attributes, then shared, then per-frame functional groups."""
    header = Dataset()
    for keyword in FRAME_KEYWORDS:
        if keyword in ds:
            setattr(header, keyword, ds.get(keyword))
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    groups = [
        *(ds.get("SharedFunctionalGroupsSequence") or [])[:1],
        *([per_frame[frame]] if frame < len(per_frame) else []),
    ]
    for group in groups:
        for sequence in GROUP_SEQUENCES:
            for item in group.get(sequence) or []:
                for keyword in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth", "VOILUTFunction"):
                    if keyword in item:
                        setattr(header, keyword, item.get(keyword))
    return header


def _center_width(header: Dataset, modality: str, window: str) -> tuple[float, float] | None:
    """The (center, width) to apply to one frame; None: a VOI LUT, robust percentiles or the full range."""
    if window in CT_PRESETS and modality == "CT":
        return CT_PRESETS[window]
    if window != "full-range" and "WindowCenter" in header and "WindowWidth" in header:
        center_width = (_first(header.WindowCenter), _first(header.WindowWidth))
        if center_width[1] >= 1:
            return center_width
    if window != "full-range" and modality == "CT" and not header.get("VOILUTSequence"):
        return DEFAULT_CT_WINDOW
    return None


def _output_range(header: Dataset) -> tuple[float, float]:
    """The range pydicom's apply_windowing maps into: the modality LUT of the stored range (its y_min, y_max)."""
    if header.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(header.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    bits = int(header.BitsStored)
    low, high = (
        (0.0, 2.0**bits - 1)
        if int(header.get("PixelRepresentation", 0)) == 0
        else (-(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1)
    )
    if "RescaleSlope" in header and "RescaleIntercept" in header:
        slope, intercept = float(header.RescaleSlope), float(header.RescaleIntercept)
        low, high = sorted((low * slope + intercept, high * slope + intercept))
    return low, high


def _scaled(values: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.clip((values - low) * (255.0 / (high - low)), 0.0, 255.0) if high > low else np.zeros_like(values)


def _frame_to_unit(
    values: np.ndarray, header: Dataset, modality: str, window: str, robust: tuple[float, float]
) -> np.ndarray:
    """One frame's modality-LUT output (R, C, 1) -> floats in [0, 255] by the module's window policy."""
    center_width = _center_width(header, modality, window)
    if center_width:
        header.WindowCenter, header.WindowWidth = center_width
        return _scaled(apply_windowing(values, header), *_output_range(header))
    if window != "full-range" and header.get("VOILUTSequence"):
        mapped = apply_voi_lut(values, header, prefer_lut=True).astype(np.float64)
        return _scaled(mapped, 0.0, float(2 ** int(header.VOILUTSequence[0].LUTDescriptor[2]) - 1))
    return _scaled(values, *(robust if window != "full-range" else _output_range(header)))


def monochrome_to_unit(frames: np.ndarray, ds: Dataset, window: str, numbers: list[int]) -> np.ndarray:
    """MONOCHROME1/2 frames (F, R, C, 1), the object's frames ``numbers`` -> floats in [0, 255]."""
    headers = [frame_header(ds, number) for number in numbers]
    values = [apply_modality_lut(frame, header).astype(np.float64) for frame, header in zip(frames, headers)]
    low, high = (float(v) for v in np.percentile(np.stack(values), ROBUST_PERCENTILES))
    modality = str(ds.get("Modality") or "")
    unit = np.stack(
        [_frame_to_unit(value, header, modality, window, (low, high)) for value, header in zip(values, headers)]
    )
    return 255.0 - unit if str(ds.get("PhotometricInterpretation")) == "MONOCHROME1" else unit


def to_unit_range(frames: np.ndarray, ds: Dataset, window: str, numbers: list[int]) -> np.ndarray:
    """Decoded frames (F, R, C, S) -> floats in [0, 255], (F, R, C, 1) grey or (F, R, C, 3) RGB."""
    photometric = str(ds.get("PhotometricInterpretation") or "")
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(frames[..., 0], ds)
        return rgb.astype(np.float64) * (255.0 / (255 if rgb.dtype == np.uint8 else 65535))
    if frames.shape[-1] == 3:
        return np.clip(frames.astype(np.float64) * (255.0 / (2 ** int(ds.BitsStored) - 1)), 0.0, 255.0)
    return monochrome_to_unit(frames, ds, window, numbers)

"""What every source reader returns and raises: the bottom of sslflow.data (imports only sslflow.errors)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sslflow.errors import Refusal

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
DICOM_SUFFIXES = (
    ".dcm",
    ".dicom",
)  # listed by name; DICOM files without them are found by content (sslflow/data/listing.py)


@dataclass
class SourceImages:
    """Images of one source before splitting. pixels: (N, C, H, W) uint8; the lists have N entries."""

    pixels: np.ndarray
    source_paths: list[str]
    labels: list[str | None]
    case_ids: list[str] | None  # None: the source has no cases
    sites: list[str]
    size_bytes: list[int]
    modes: list[str]
    widths: list[int]
    heights: list[int]
    # skipped files: {"source_path", "problem" (naming the path), "image_key", "public_problem" (naming the key),
    # "held_back"}
    quarantined: list[dict] = field(default_factory=list)
    read_stats: dict = field(default_factory=dict)  # listed / decoded / decode_cache_hits / bytes_read
    modalities: list[str | None] = field(default_factory=list)  # DICOM Modality per image (None: not DICOM); [] = none
    skipped: dict[str, int] = field(default_factory=dict)  # non-image DICOM objects skipped, by SOP class
    # what the dataset knows an image by (source_paths never leave ingest): "file-" + HMAC of the path; [] = the paths
    # themselves (built-in data sets, whose paths name no one)
    image_keys: list[str] = field(default_factory=list)
    case_sources: list[str] = field(
        default_factory=list
    )  # per image: "metadata", "patient", "study", "series", "none"; [] = unknown
    instances: list[str] = field(
        default_factory=list
    )  # per image: SOPInstanceUID pseudonym (+ "#frame=<n>"), "" for none
    lossless: list[bool] = field(default_factory=list)  # per image: False when its pixels were lossy compressed
    held_back: dict[str, int] = field(default_factory=dict)  # images held back by reason (e.g. burned_in_annotation)


class SourceError(Refusal, ValueError):
    """A source that cannot be read; the message names the file or field and the problem."""


class UndecodableImageError(SourceError):
    """Image files that cannot be decoded (zero bytes, truncated, not an image, too many pixels).

    Unlike other SourceErrors these can be quarantined: IngestConfig.max_bad_fraction.
    """

"""Frozen configuration dataclasses of the tasks that ssl_models does not already define.

Defaults run the whole pipeline on a 2-core laptop; cluster-scale numbers live in launch plans. The checks of the run's
seeds and label fractions, made before anything runs, are here too (no great-expectations needed for them).
PretrainConfig, FinetuneConfig and AugmentConfig come from ssl_models.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field

from sslflow.errors import Refusal


class SeedsError(Refusal, ValueError):
    """The pipeline's ``seeds`` are not a non-empty list of distinct integers."""


def check_seeds(seeds: Sequence[int]) -> None:
    """SeedsError unless ``seeds`` is a non-empty list of distinct integers (one ablation per seed)."""
    if (
        len(seeds) == 0
        or len(set(seeds)) != len(seeds)
        or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds)
    ):
        raise SeedsError(f"seeds = {list(seeds)!r}: give a non-empty list of distinct integers, e.g. [0] or [0, 1, 2]")


class LabelFractionError(Refusal, ValueError):
    """A label fraction outside (0, 1]."""


def check_label_fractions(label_fractions: Sequence[float]) -> None:
    """LabelFractionError (a ValueError) naming the offending entry unless every fraction f is a number with 0 < f <= 1.

    A label fraction is the share of the training labels one fine-tune uses (1.0: all of them); an
    empty list (no fine-tuning) is fine.
    """
    for index, fraction in enumerate(label_fractions):
        if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 < fraction <= 1:
            raise LabelFractionError(
                f"label_fractions[{index}] = {fraction!r} is not a fraction in (0, 1]: each is the share of the "
                "training labels one fine-tune uses, so it must be above 0 and at most 1 (e.g. [0.01, 0.1, 1.0])"
            )


UNLISTED_FILES_CHOICES = ("warn", "refuse")
DICOM_CHOICES = {
    "dicom_window": ("header", "full-range", "ct-soft-tissue", "ct-lung", "ct-bone", "ct-brain"),
    "dicom_frames": ("all", "first", "middle"),
    "dicom_case_level": ("patient", "study", "series"),
    "dicom_site": ("institution", "scanner"),
}


@dataclass(frozen=True)
class IngestConfig:
    """How a source becomes a dataset.

    image_size, channels: every image is converted to (channels, image_size, image_size) uint8.
    train_fraction, val_fraction, gate_fraction: case-grouped split by a hash of case_id; the rest is
        test. val chooses (probe regularisation, the registered model), gate decides promotion
        (sslflow/registry/gate.py), test is only reported: no decision reads it.
    all_test: the whole source is an evaluation set (a shift set such as optdigits): gate_fraction of
        its cases are the gate split, the rest test.
    max_images: keep a deterministic subset of this many images (0 keeps all).
    proxy_cases: when the source has no case ids, group images into PROXY cases by pixel
        neighbours (ssl_models.proxy_cases) instead of one case per image.
    max_bad_fraction: fraction of a source's image files that may be undecodable (zero bytes,
        truncated, not an image, over max_image_pixels or max_file_bytes, values beyond bits_stored,
        NaN or infinite float pixels); they are quarantined (skipped and listed in
        the ingest summary). 0.0: any undecodable file stops the run. Above it the run stops, naming them.
    max_image_pixels: width x height above which an image is refused as a decompression bomb.
    max_file_bytes: a file larger than this (its size from the listing) is refused before it is read,
        like an undecodable file (quarantinable under max_bad_fraction).
    bits_stored: the bit depth of the data in 16-bit and 32-bit integer images (mode I;16, I), for
        scaling to 8 bits: N (8 to 16) scales by 255 / (2**N - 1) and refuses an image with a value
        above 2**N - 1; 0 infers it PER IMAGE from the image's maximum (the smallest of 8, 10, 12, 14,
        16 bits that holds it), so a dark 16-bit image comes out brighter than with bits_stored=16.
        A dataset of known depth should set it (12 for 12-bit CT/MR stored in 16-bit files, 16 for
        full-range 16-bit). 8-bit and float images are not affected.
    DICOM files (sslflow/data/dicom.py; README "Medical data"):
    dicom_window: "header" (the header's first window or VOI LUT; without one, CT gets ct-soft-tissue
        and other modalities the 0.5 and 99.5 percentiles of the object's values), "full-range" (the
        whole range the header declares, never windowed), or a CT preset applied to CT images (others: "header"):
        "ct-soft-tissue" (W400/L40), "ct-lung" (W1500/L-600), "ct-bone" (W1800/L400), "ct-brain" (W80/L40).
    dicom_frames: multi-frame objects become "all" frames (one image each, same case), the "first" or the "middle" one.
    dicom_case_level: case_id from the "patient" (IssuerOfPatientID, else InstitutionName, + PatientID),
        "study" (StudyInstanceUID) or "series" (SeriesInstanceUID), always pseudonymised; a file without
        the tag falls back to the next level (marked weaker in the summary).
    dicom_site: site from the "institution" (InstitutionName) or the "scanner" (Manufacturer +
        ManufacturerModelName); a file without it falls back to the other, then "default".
    dicom_site_names: keep the site as written in the header; by default (False) it is pseudonymised
        (``site-`` + HMAC, like the case), since an institution may be named after a person. A
        ``site`` column in metadata.csv (or the parquet list) is a user-supplied mapping, kept as given.
    dicom_burned_in: include images whose BurnedInAnnotation is YES (text burned into the pixels, often
        a name); by default (False) they are held back: quarantined with that reason, counted in the
        summary, never counted against max_bad_fraction.
    chunk_images: about this many images per ingest chunk on average, at most twice as many (one map-task pod;
        its memory grows with it, not with the source: about 150 KiB per 224-px gray image, so the 4,096 default keeps
        the largest chunk near 1.2 GiB at 224 px gray, RGB images hold three times the pixels; ingest_chunk requests 4
        GiB). A chunk whose small multi-frame files hold more frames than that is decoded twice chunk_images images
        at a time, each batch's shards written before the next: sslflow/data/chunks.py. Changing it re-decodes
        everything.
    chunk_megabytes: at most this many megabytes of files (their sizes from the listing) per ingest chunk, whatever
        the number of files: a few large multi-frame DICOM objects (each frame an image, up to max_file_bytes each)
        make a chunk of their own instead of overrunning its pod's memory. A case larger than this is one chunk.
    shard_megabytes: the size of one shard file of the dataset (ssl_models/shards.py); a case is never split.
    unlisted_files: image files (by suffix) in a folder or S3 prefix whose metadata.csv does not list them are not
        used: "warn" counts them in the ingest summary and the validation report, with their keys; "refuse"
        stops ingest naming them.
    """

    image_size: int = 28
    channels: int = 1
    train_fraction: float = 0.7
    val_fraction: float = 0.1
    gate_fraction: float = 0.1
    all_test: bool = False
    max_images: int = 0
    proxy_cases: bool = False
    seed: int = 0
    max_bad_fraction: float = 0.0
    max_image_pixels: int = 100_000_000
    max_file_bytes: int = 512 * 2**20
    bits_stored: int = 0
    dicom_window: str = "header"
    dicom_frames: str = "all"
    dicom_case_level: str = "patient"
    dicom_site: str = "institution"
    dicom_site_names: bool = False
    dicom_burned_in: bool = False
    chunk_images: int = 4096
    chunk_megabytes: int = 1024
    shard_megabytes: int = 128
    unlisted_files: str = "warn"

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"IngestConfig.channels must be 1 or 3, got {self.channels}")
        fractions = (self.train_fraction, self.val_fraction, self.gate_fraction)
        if (
            min(fractions) < 0 or (self.gate_fraction if self.all_test else sum(fractions)) > 1
        ):  # all_test ignores train and val
            raise ValueError(
                f"IngestConfig: train_fraction={self.train_fraction}, val_fraction={self.val_fraction} and "
                f"gate_fraction={self.gate_fraction} must be >= 0 and sum to <= 1"
            )
        if not 0.0 <= self.max_bad_fraction < 1.0:
            raise ValueError(f"IngestConfig.max_bad_fraction must be in [0, 1), got {self.max_bad_fraction}")
        if self.max_image_pixels < 1:
            raise ValueError(f"IngestConfig.max_image_pixels must be positive, got {self.max_image_pixels}")
        if self.max_file_bytes < 1:
            raise ValueError(f"IngestConfig.max_file_bytes must be positive, got {self.max_file_bytes}")
        if self.unlisted_files not in UNLISTED_FILES_CHOICES:
            raise ValueError(
                f"IngestConfig.unlisted_files must be one of {UNLISTED_FILES_CHOICES}, got {self.unlisted_files!r}"
            )
        if min(self.chunk_images, self.chunk_megabytes, self.shard_megabytes) < 1:
            raise ValueError(
                "IngestConfig.chunk_images, chunk_megabytes and shard_megabytes must be positive, "
                f"got {self.chunk_images}, {self.chunk_megabytes}, {self.shard_megabytes}"
            )
        if self.bits_stored != 0 and not 8 <= self.bits_stored <= 16:
            raise ValueError(
                "IngestConfig.bits_stored must be 0 (infer per image) or a bit depth from 8 to 16, got "
                f"{self.bits_stored}"
            )
        for name, allowed in DICOM_CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"IngestConfig.{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class ValidationConfig:
    """What validate requires of a dataset.

    require_labels: every row needs a label (evaluation sets); otherwise labels are optional.
    allowed_labels: the label values a dataset may use (empty: any value without surrounding blanks),
        compared in ingest's spelling (sslflow.data.metadata.canonical_label: "1.0" allows label "1").
    """

    min_image_side: int = 8
    max_image_side: int = 8192
    require_labels: bool = False
    allowed_labels: list[str] = field(default_factory=list)


# The severities ssl_models/corruptions.py defines (its SEVERITIES; that module imports torch, this one must not).
CORRUPTION_SEVERITIES = (1, 2, 3)


@dataclass(frozen=True)
class EvaluationConfig:
    """The corruption suite evaluate runs beside the in-domain test split and the shift set.

    Every corruption of ssl_models/corruptions.py at each of ``severities``, on (at most ``corruption_images`` of) the
    in-domain test split, for every model (Hendrycks & Dietterich 2019, arXiv 1903.12261). On a CPU the suite is most
    of evaluate's time (15 sets by default): fewer severities or images make it cheaper.

    severities: the corruption severities to evaluate, each in CORRUPTION_SEVERITIES (one set per corruption each).
    corruption_images: the in-domain test images each corrupted set holds at most (a fixed random subset).
    """

    severities: tuple[int, ...] = CORRUPTION_SEVERITIES
    corruption_images: int = 256

    def __post_init__(self) -> None:
        severities = list(self.severities)
        if (
            not severities
            or len(set(severities)) != len(severities)
            or not set(severities) <= set(CORRUPTION_SEVERITIES)
        ):
            raise ValueError(
                f"EvaluationConfig.severities must be distinct values of {CORRUPTION_SEVERITIES}, got {severities}"
            )
        if self.corruption_images < 1:
            raise ValueError(f"EvaluationConfig.corruption_images must be positive, got {self.corruption_images}")


@dataclass(frozen=True)
class RegistryConfig:
    """MLflow model registry: the model each run adds a version to, and the promotion gate's thresholds.

    model_name: the registered model; empty (the default): one per domain source, e.g. ``sslflow-mnist-5k``
        for the demo (sslflow/registry/names.py), so a run on other data is never gated against its champion.

    The gate scores the challenger and the champion on the same gate sets (accuracy in [0, 1]):
    non_inferiority_margin: in-domain, the challenger must score above champion - margin. At 0 it must
        be strictly better: a tie keeps the champion, so no model is promoted for being newer.
    max_shift_drop: on the shift set, the challenger may score at most this much below the champion.
        At 0 it must be no worse.
    """

    model_name: str = ""
    non_inferiority_margin: float = 0.0
    max_shift_drop: float = 0.0

    def __post_init__(self) -> None:
        if "'" in self.model_name or self.model_name != self.model_name.strip():
            raise ValueError(
                "RegistryConfig.model_name must be a name without quotes or surrounding blanks (or empty), got "
                f"{self.model_name!r}"
            )
        for name in ("non_inferiority_margin", "max_shift_drop"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"RegistryConfig.{name} is an accuracy difference and must be in [0, 1), got {value}")

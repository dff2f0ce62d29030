"""Reading a listing of image files into SourceImages: through the decode cache, quarantining bad files.

What folder, parquet-list and S3 sources share once they have listed their files as ImageRecords
(sslflow/data/metadata.py): each source passes a function that reads one record's bytes
(``Source.read_bytes``, sslflow/data/sources/). Files listed without an image suffix are candidates
(``ImageRecord.sniff``): decoded here when their bytes start with a DICOM preamble, else skipped and counted.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable

import numpy as np

from sslflow.config import IngestConfig
from sslflow.data.decode import DecodedImage, check_pixel_count, decode_image
from sslflow.data.decode_cache import DecodeCache
from sslflow.data.dicom import (
    PREAMBLE_BYTES,
    DicomImage,
    HeldBackImage,
    NonImageObject,
    decode_dicom,
    has_dicom_preamble,
)
from sslflow.data.metadata import UNKNOWN_SIZE, ImageRecord
from sslflow.data.pseudonyms import Pseudonyms
from sslflow.data.types import DICOM_SUFFIXES, IMAGE_SUFFIXES, SourceError, SourceImages, UndecodableImageError

MAX_LISTED_PROBLEMS = 50


@dataclasses.dataclass(frozen=True)
class ImageRow:
    """One decoded image (a file, or one frame of a multi-frame DICOM object) as ingest's table will hold it.

    pixels: (C, H, W) uint8; image_key: the pseudonymous key (frames: ``<key>#frame=<n>``); case_source: where the
    case came from ("metadata", "patient", "study", "series", "none": the leakage guard); modality: DICOM Modality,
    None when not DICOM; instance: SOPInstanceUID pseudonym (+ frame), "" for none; lossless: False when the pixels
    were lossy compressed; size_bytes, mode, width, height: of the file as read.
    """

    label: str | None
    source_path: str
    image_key: str
    pixels: np.ndarray
    case_id: str | None
    case_source: str
    site: str
    size_bytes: int
    mode: str
    width: int
    height: int
    modality: str | None = None
    instance: str = ""
    lossless: bool = True


def _decode_bytes(
    data: bytes, record: ImageRecord, config: IngestConfig, pseudonyms: Pseudonyms
) -> DecodedImage | DicomImage:
    """One file's bytes decoded: DICOM when its content says so (has_dicom_preamble), else an image format."""
    if has_dicom_preamble(data[:PREAMBLE_BYTES]):
        return decode_dicom(data, record.location, config, pseudonyms)
    if record.source_path.lower().endswith(DICOM_SUFFIXES):
        raise UndecodableImageError(
            f"{record.location}: named like a DICOM file but it has no DICM magic at byte 128 (not DICOM Part 10, or "
            "cut short)"
        )
    return decode_image(
        data,
        record.location,
        config.image_size,
        config.channels,
        config.max_image_pixels,
        bits_stored=config.bits_stored,
    )


def _cached(
    cache: DecodeCache, file_sha256: str, pseudonyms: Pseudonyms, *, dicom: bool | None
) -> DecodedImage | DicomImage | None:
    """The cached decoding of these bytes (dicom None: either kind; DICOM entries are per pseudonym key)."""
    image = cache.get(file_sha256) if not dicom else None
    if image is None and dicom is not False:
        image = cache.get_dicom(file_sha256, pseudonyms.key_id())
    return image


NOT_DICOM = "not DICOM (no image suffix)"
NOT_READ = "not read (no image suffix, over max_file_bytes)"


def _unread(record: ImageRecord, config: IngestConfig) -> None:
    """Refuse a record before it is read: zero bytes, or over config.max_file_bytes (its size from the listing).
    A candidate without an image suffix (``sniff``) is skipped instead (NonImageObject): nothing says it is an image.
    A record of UNKNOWN_SIZE passes: it is checked again once read, with its size then known."""
    if record.size_bytes == UNKNOWN_SIZE:
        return
    if record.size_bytes == 0:
        raise NonImageObject(NOT_DICOM) if record.sniff else UndecodableImageError(f"{record.location}: zero-byte file")
    if record.size_bytes > config.max_file_bytes:
        if record.sniff:
            raise NonImageObject(NOT_READ)
        raise UndecodableImageError(
            f"{record.location}: {record.size_bytes} bytes is over "
            f"IngestConfig.max_file_bytes={config.max_file_bytes}; "
            "not read (raise max_file_bytes if the file is a genuine image)"
        )


def _decode_record(
    record: ImageRecord,
    read_bytes: Callable[[ImageRecord], bytes],
    config: IngestConfig,
    cache: DecodeCache,
    stats: dict,
    pseudonyms: Pseudonyms,
) -> tuple[DecodedImage | DicomImage, ImageRecord]:
    """(decoded pixels of one record, the record with its size known): from the cache when its bytes were decoded
    before, else decoded and cached.

    Refused or skipped before it is read by _unread (a record of UNKNOWN_SIZE once read). A candidate (``sniff``)
    whose bytes do not start with a DICOM preamble raises NonImageObject(NOT_DICOM): skipped, as is a DICOM object
    without an image (not cached: its header is read each time).
    """
    _unread(record, config)
    file_sha256 = cache.sha256_of_version(record.version_key) if record.version_key else None
    image = _cached(cache, file_sha256, pseudonyms, dicom=True if record.sniff else None) if file_sha256 else None
    if image is None:
        data = read_bytes(record)
        if record.size_bytes == UNKNOWN_SIZE:
            record = dataclasses.replace(record, size_bytes=len(data))
            _unread(record, config)
        stats["files_read"] += 1
        stats["bytes_read"] += len(data)
        is_dicom = has_dicom_preamble(data[:PREAMBLE_BYTES])
        if record.sniff and not is_dicom:
            raise NonImageObject(NOT_DICOM)
        file_sha256 = hashlib.sha256(data).hexdigest()
        image = _cached(cache, file_sha256, pseudonyms, dicom=is_dicom)
        if image is None:
            image = _decode_bytes(data, record, config, pseudonyms)
            cache.put_dicom(file_sha256, pseudonyms.key_id(), image) if isinstance(image, DicomImage) else cache.put(
                file_sha256, image
            )
            stats["decoded"] += 1
        else:
            stats["decode_cache_hits"] += 1
        if record.version_key:
            cache.remember_version(record.version_key, file_sha256)
    else:
        stats["decode_cache_hits"] += 1
    check_pixel_count(
        image.width, image.height, config.max_image_pixels, record.location
    )  # cached under a higher limit?
    return image, record


def _rows(record: ImageRecord, key: str, image: DecodedImage | DicomImage) -> list[ImageRow]:
    """The manifest rows one record becomes: one per image, one per frame of a multi-frame DICOM object.

    key: the image's pseudonymous key (image_key). A DICOM file's case and site come from its header unless
    the record's metadata names them (a site of "default" counts as unnamed). Metadata rows keyed by SOPInstanceUID
    are applied by the join (sslflow/data/instance_rows.py: the same precedence, to every frame of the object). Frames
    are ``<path or key>#frame=<n>``; case_source says where the case came from (the leakage guard).
    """
    file = {"size_bytes": record.size_bytes, "mode": image.mode, "width": image.width, "height": image.height}
    if isinstance(image, DecodedImage):
        case_source = "metadata" if record.case_id else "none"
        return [
            ImageRow(
                record.label, record.source_path, key, image.pixels, record.case_id, case_source, record.site, **file
            )
        ]
    frames = len(image.pixels)

    def frame(text: str, index: int) -> str:
        return text if frames == 1 or not text else f"{text}#frame={index}"

    return [
        ImageRow(
            label=record.label,
            source_path=frame(record.source_path, index),
            image_key=frame(key, index),
            pixels=pixels,
            case_id=record.case_id or image.case_id,
            case_source="metadata" if record.case_id else image.case_level or "none",
            site=record.site if record.site != "default" else image.site,
            modality=image.modality,
            instance=frame(image.instance, index),
            lossless=image.lossless,
            **file,
        )
        for index, pixels in enumerate(image.pixels)
    ]


def _quarantined(record: ImageRecord, key: str, error: Exception, held_back: str | None = None) -> dict:
    """A skipped file: its path and message (for refusals on ingest's console), and the same message naming the key."""
    problem = str(error)
    public = problem.replace(record.location, key).replace(record.source_path, key)
    return {
        "source_path": record.source_path,
        "problem": problem,
        "image_key": key,
        "public_problem": public,
        "held_back": held_back,
    }


def refuse_unmatched(source: str, unmatched: list[str], *, count: int | None = None) -> None:
    """SourceError naming the metadata rows (their "where") whose SOPInstanceUID no DICOM image of the source has;
    count: how many there are, when ``unmatched`` names the first MAX_LISTED_PROBLEMS alone."""
    if unmatched:
        raise SourceError(
            f"source {source}: {count or len(unmatched)} metadata row(s) name a SOPInstanceUID that no DICOM image "
            "here has "
            f"(a file missing, or a non-image object): {'; '.join(unmatched[:MAX_LISTED_PROBLEMS])}. "
            "Add the DICOM files these rows name, or remove the rows"
        )


def _refuse_bad(source: str, quarantined: list[dict], listed: int, config: IngestConfig, *, none_left: bool) -> None:
    """UndecodableImageError naming the bad files when they are more than config.max_bad_fraction allows, or nothing
    else is left. Images held back (BurnedInAnnotation) are not bad files: they do not count."""
    quarantined = [item for item in quarantined if not item.get("held_back")]
    allowed = int(config.max_bad_fraction * listed + 1e-9)
    if len(quarantined) > allowed or (none_left and quarantined):
        problems = [item["problem"] for item in quarantined]
        more = f"\n  ... and {len(problems) - MAX_LISTED_PROBLEMS} more" if len(problems) > MAX_LISTED_PROBLEMS else ""
        raise UndecodableImageError(
            f"source {source}: {len(quarantined)} of {listed} image files cannot be decoded "
            f"(IngestConfig.max_bad_fraction={config.max_bad_fraction} allows {allowed}):\n  "
            + "\n  ".join(problems[:MAX_LISTED_PROBLEMS])
            + more
            + "\nReplace or remove these files, or raise IngestConfig.max_bad_fraction to quarantine them (skipped and "
            "reported)"
        )


def refuse_empty(source: str) -> None:
    raise SourceError(
        f"source {source} is empty: it lists no images (no metadata rows, or no files ending in "
        f"{', '.join(IMAGE_SUFFIXES + DICOM_SUFFIXES)} nor DICOM files found by content); point the source at the "
        "folder or prefix that holds the images, or list them in metadata.csv"
    )


def refuse_no_images(source: str, skipped: dict[str, int], held_back: dict[str, int]) -> None:
    """SourceError for a source none of whose chunks decoded an image: empty when every file it listed without an
    image suffix turned out not to be DICOM, else naming what was left out (skipped by kind, held back by reason)."""
    if not held_back and set(skipped) <= {NOT_DICOM, NOT_READ}:
        refuse_empty(source)
    left_out = [f"{n} {k}" for k, n in sorted(skipped.items())] + [
        f"{n} held back ({k})" for k, n in sorted(held_back.items())
    ]
    raise SourceError(
        f"source {source} holds no images to learn from: {', '.join(left_out)}; add image files, or see docs/dicom.md "
        "for what is held back and why"
    )


class ListingReader:
    """Decodes the records of a listing one at a time (``decode``), turns decoded files into image rows (``rows``)
    and gathers what is reported about the files across calls (``files``): ``read`` reads a listing in one piece,
    sslflow/data/sub_batches.py a chunk a sub-batch at a time, with the same counts and quarantine.

    read_bytes: reads one record's file (only called for bytes the cache cannot vouch for).
    pseudonyms: for DICOM identities and image keys (the HMAC of each path; default: the key from the environment
    or key file). Metadata keyed by SOPInstanceUID is never read here: the join applies it
    (sslflow/data/instance_rows.py).
    """

    def __init__(
        self,
        read_bytes: Callable[[ImageRecord], bytes],
        config: IngestConfig,
        cache: DecodeCache,
        source: str,
        pseudonyms: Pseudonyms | None = None,
    ):
        self.read_bytes, self.config, self.cache, self.source = read_bytes, config, cache, source
        self.pseudonyms = pseudonyms or Pseudonyms()
        self.stats = {"listed": 0, "decoded": 0, "decode_cache_hits": 0, "files_read": 0, "bytes_read": 0}
        self.quarantined: list[dict] = []
        self.skipped: dict[str, int] = {}  # non-image objects, by SOP class
        self.held_back: dict[str, int] = {}  # images held back, by reason
        self.images = 0  # image rows made

    def decode(self, record: ImageRecord) -> tuple[ImageRecord, str, DecodedImage | DicomImage] | None:
        """(the record with its size known, its image key, its decoded image), or None for a file quarantined, held
        back or skipped (counted)."""
        self.stats["listed"] += 1
        key = self.pseudonyms.pseudonym("file", record.source_path)
        try:
            image, record = _decode_record(
                record, self.read_bytes, self.config, self.cache, self.stats, self.pseudonyms
            )
            return record, key, image
        except NonImageObject as error:
            self.skipped[error.sop_class] = self.skipped.get(error.sop_class, 0) + 1
        except HeldBackImage as error:
            self.quarantined.append(_quarantined(record, key, error, error.reason))
            self.held_back[error.reason] = self.held_back.get(error.reason, 0) + 1
        except UndecodableImageError as error:
            self.quarantined.append(_quarantined(record, key, error))
        return None

    def rows(self, decoded: list[tuple[ImageRecord, str, DecodedImage | DicomImage]]) -> list[ImageRow]:
        """The image rows of ``decoded`` (``decode``'s results)."""
        rows = [row for record, key, image in decoded for row in _rows(record, key, image)]
        self.images += len(rows)
        return rows

    def files(self) -> dict:
        """The SourceImages fields about the files read so far (quarantined, read_stats, skipped, held_back), once
        every record is decoded; UndecodableImageError when the bad
        files are more than config.max_bad_fraction of those listed allows, or no image is left (_refuse_bad)."""
        stats = dict(self.stats)
        # candidates that turned out not to be images
        stats["listed"] -= self.skipped.get(NOT_DICOM, 0) + self.skipped.get(NOT_READ, 0)
        _refuse_bad(self.source, self.quarantined, stats["listed"], self.config, none_left=not self.images)
        return {
            "quarantined": self.quarantined,
            "read_stats": stats,
            "skipped": self.skipped,
            "held_back": self.held_back,
        }

    def source_images(self, rows: list[ImageRow], **files) -> SourceImages:
        """``rows`` as SourceImages (pixels (N, C, H, W), (0, C, H, W) for none); files: ``files()``, or nothing for
        a part of the listing."""
        return _source_images(rows, (self.config.channels, self.config.image_size, self.config.image_size), **files)

    def read(self, records: list[ImageRecord]) -> SourceImages:
        """Decode every record into SourceImages; quarantine up to config.max_bad_fraction undecodable ones.

        Non-image DICOM objects are skipped and counted by SOP class, and so are candidates without an image suffix
        that are not DICOM (NOT_DICOM, NOT_READ: not counted as listed); images with BurnedInAnnotation YES are held
        back (listed with the quarantined, not counted against max_bad_fraction). The records may be a chunk whose
        files were all skipped or held back: it has no images (``pixels`` (0, C, H, W)), and the join refuses a
        source none of whose chunks has any (refuse_no_images). Raises SourceError for an empty listing,
        UndecodableImageError naming every bad file when there are more than the allowed fraction (or no image is
        left).
        """
        if not records:
            refuse_empty(self.source)
        decoded = [item for item in map(self.decode, records) if item is not None]
        rows = self.rows(decoded)
        del decoded  # the rows hold the pixels
        return self.source_images(rows, **self.files())


def image_count(image: DecodedImage | DicomImage) -> int:
    """The images one decoded file becomes: its frames (DICOM), else 1."""
    return len(image.pixels) if isinstance(image, DicomImage) else 1


def _source_images(rows: list[ImageRow], shape: tuple[int, int, int], **files) -> SourceImages:
    """rows as SourceImages; shape: (C, H, W) of an image, for the (0, C, H, W) pixels of a chunk without any; files:
    the SourceImages fields about the files rather than the images (quarantined, read_stats, skipped, held_back)."""

    def column(name: str) -> list:
        return [getattr(row, name) for row in rows]

    has_cases = any(row.case_id for row in rows)
    return SourceImages(
        pixels=np.stack(column("pixels")) if rows else np.zeros((0, *shape), dtype=np.uint8),
        source_paths=column("source_path"),
        labels=column("label"),
        case_ids=[row.case_id or f"image-{hashlib.sha256(row.image_key.encode()).hexdigest()[:12]}" for row in rows]
        if has_cases
        else None,
        sites=column("site"),
        size_bytes=column("size_bytes"),
        modes=column("mode"),
        widths=column("width"),
        heights=column("height"),
        modalities=column("modality"),
        image_keys=column("image_key"),
        case_sources=column("case_source"),
        instances=column("instance"),
        lossless=column("lossless"),
        **files,
    )

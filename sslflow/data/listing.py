"""What folder, manifest and S3 sources share: a listing of image files, the rules of their metadata
table, and reading a listing into SourceImages (through the decode cache, quarantining bad files).

Metadata (``metadata.csv`` in a folder or at an S3 prefix, or a ``.parquet`` manifest) has one row per image:
- ``path`` (required): relative to the source root, '/'-separated; not absolute, no '..', listed once;
- ``case_id``, ``site``, ``label`` (optional; blank means unknown). Images of one case_id are two views
  of one patient for MICLe and always land in the same split; an image without a case_id is its own
  case; a blank site is "default".
Other columns are ignored (they do not reach the dataset manifest). With metadata, only the listed
files are read and other files are ignored. Without metadata, every file with an image suffix
(tasks.sources.IMAGE_SUFFIXES) is read, without labels, each image its own case.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tasks.config import IngestConfig
from tasks.decode_cache import DecodeCache
from tasks.image_decode import DecodedImage, check_pixel_count, decode_image
from tasks.sources import IMAGE_SUFFIXES, SourceError, SourceImages, UndecodableImageError

METADATA_FILE = "metadata.csv"
MAX_LISTED_PROBLEMS = 50


@dataclass(frozen=True)
class ImageRecord:
    """One image file a source lists.

    source_path: relative to the source root (the manifest's ``source_path``);
    location: full path or s3:// URL, for messages and for reading;
    size_bytes: from the file system or the S3 listing (0: the file is refused without reading it);
    version_key: names these exact bytes without reading them (S3: URL + ETag + size); "" if unknown.
    """

    source_path: str
    location: str
    size_bytes: int
    case_id: str | None = None
    site: str = "default"
    label: str | None = None
    version_key: str = ""


def check_relative_path(relative: str, where: str) -> str:
    """``relative`` without empty or '.' parts, or SourceError if it is empty, absolute or has a '..' part."""
    if not relative or relative.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", relative):
        raise SourceError(f"{where}: {relative!r} is empty or absolute; paths must be relative to the source root")
    if ".." in re.split(r"[/\\]", relative):
        raise SourceError(f"{where}: {relative!r} contains '..'; paths must stay inside the source root")
    return "/".join(part for part in relative.split("/") if part not in ("", "."))


def parse_metadata_csv(data: bytes, where: str) -> pd.DataFrame:
    """The bytes of a metadata.csv as a table of strings; SourceError if it is not CSV."""
    try:
        return pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, skipinitialspace=True, encoding="utf-8")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as error:
        raise SourceError(
            f"{where}: not parseable as CSV ({type(error).__name__}: {error}); "
            "expected UTF-8 text with a header row such as path,case_id,site,label"
        ) from error


def _text(value) -> str | None:
    """A metadata cell as a stripped string, None when blank or missing (ints stay ints: 3.0 -> '3')."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


def metadata_rows(table: pd.DataFrame, where: str, first_row: int) -> list[dict]:
    """Rows of a metadata table as dicts (path, case_id, site, label, where), paths checked.

    first_row: the number the message gives the first data row (2 for a CSV: its line number).
    """
    table = table.rename(columns=lambda column: str(column).strip())
    if "path" not in table.columns:
        raise SourceError(
            f"{where}: missing required column 'path' (columns found: {list(table.columns)}); "
            "expected path,case_id,site,label with paths relative to the source root"
        )
    rows, first_seen = [], {}
    for index, record in enumerate(table.to_dict("records")):
        row_where = f"{where} row {first_row + index}, column 'path'"
        path = check_relative_path(_text(record["path"]) or "", row_where)
        if path in first_seen:
            raise SourceError(f"{row_where}: {path!r} is listed twice (also row {first_seen[path]})")
        first_seen[path] = first_row + index
        rows.append(
            {
                "path": path,
                "case_id": _text(record.get("case_id")),
                "site": _text(record.get("site")) or "default",
                "label": _text(record.get("label")),
                "where": row_where,
            }
        )
    return rows


def _decode_record(record: ImageRecord, read_bytes: Callable[[ImageRecord], bytes], config: IngestConfig, cache: DecodeCache, stats: dict) -> DecodedImage:
    """Decoded pixels of one record: from the cache when its bytes were decoded before, else decoded and cached."""
    if record.size_bytes == 0:
        raise UndecodableImageError(f"{record.location}: zero-byte file")
    file_sha256 = cache.sha256_of_version(record.version_key) if record.version_key else None
    image = cache.get(file_sha256) if file_sha256 else None
    if image is None:
        data = read_bytes(record)
        stats["files_read"] += 1
        stats["bytes_read"] += len(data)
        file_sha256 = hashlib.sha256(data).hexdigest()
        image = cache.get(file_sha256)
        if image is None:
            image = decode_image(data, record.location, config.image_size, config.channels, config.max_image_pixels)
            cache.put(file_sha256, image)
            stats["decoded"] += 1
        else:
            stats["decode_cache_hits"] += 1
        if record.version_key:
            cache.remember_version(record.version_key, file_sha256)
    else:
        stats["decode_cache_hits"] += 1
    check_pixel_count(image.width, image.height, config.max_image_pixels, record.location)  # cached under a higher limit?
    return image


def read_listing(
    records: list[ImageRecord], read_bytes: Callable[[ImageRecord], bytes], config: IngestConfig, cache: DecodeCache, source: str
) -> SourceImages:
    """Decode every record into SourceImages; quarantine up to config.max_bad_fraction undecodable ones.

    read_bytes: reads one record's file (only called for bytes the cache cannot vouch for).
    Raises SourceError for an empty listing, UndecodableImageError naming every bad file when there
    are more than the allowed fraction (or no image is left).
    """
    if not records:
        raise SourceError(
            f"source {source} is empty: it lists no images (no metadata rows, or no files ending in {', '.join(IMAGE_SUFFIXES)})"
        )
    stats = {"listed": len(records), "decoded": 0, "decode_cache_hits": 0, "files_read": 0, "bytes_read": 0}
    kept: list[tuple[ImageRecord, DecodedImage]] = []
    quarantined: list[dict] = []
    for record in records:
        try:
            kept.append((record, _decode_record(record, read_bytes, config, cache, stats)))
        except UndecodableImageError as error:
            quarantined.append({"source_path": record.source_path, "problem": str(error)})
    allowed = int(config.max_bad_fraction * len(records) + 1e-9)
    if len(quarantined) > allowed or not kept:
        problems = [item["problem"] for item in quarantined]
        more = f"\n  ... and {len(problems) - MAX_LISTED_PROBLEMS} more" if len(problems) > MAX_LISTED_PROBLEMS else ""
        raise UndecodableImageError(
            f"source {source}: {len(quarantined)} of {len(records)} image files cannot be decoded "
            f"(IngestConfig.max_bad_fraction={config.max_bad_fraction} allows {allowed}); fix or remove them, "
            "or raise max_bad_fraction to quarantine them:\n  " + "\n  ".join(problems[:MAX_LISTED_PROBLEMS]) + more
        )
    has_cases = any(record.case_id for record, _ in kept)
    return SourceImages(
        pixels=np.stack([image.pixels for _, image in kept]),
        source_paths=[record.source_path for record, _ in kept],
        labels=[record.label for record, _ in kept],
        case_ids=[record.case_id or f"image-{hashlib.sha256(record.source_path.encode()).hexdigest()[:12]}" for record, _ in kept]
        if has_cases
        else None,
        sites=[record.site for record, _ in kept],
        size_bytes=[record.size_bytes for record, _ in kept],
        modes=[image.mode for _, image in kept],
        widths=[image.width for _, image in kept],
        heights=[image.height for _, image in kept],
        quarantined=quarantined,
        read_stats=stats,
    )

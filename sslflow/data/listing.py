"""Reading a listing of image files into SourceImages: through the decode cache, quarantining bad files.

What folder, parquet-list and S3 sources share once they have listed their files as ImageRecords
(sslflow/data/metadata.py): each source passes a function that reads one record's bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np

from sslflow.config import IngestConfig
from sslflow.data.decode import DecodedImage, check_pixel_count, decode_image
from sslflow.data.decode_cache import DecodeCache
from sslflow.data.metadata import ImageRecord
from sslflow.data.types import IMAGE_SUFFIXES, SourceError, SourceImages, UndecodableImageError

MAX_LISTED_PROBLEMS = 50


def _decode_record(record: ImageRecord, read_bytes: Callable[[ImageRecord], bytes], config: IngestConfig, cache: DecodeCache, stats: dict) -> DecodedImage:
    """Decoded pixels of one record: from the cache when its bytes were decoded before, else decoded and cached.

    A record of zero bytes or over config.max_file_bytes (its size from the listing) is refused before it is read.
    """
    if record.size_bytes == 0:
        raise UndecodableImageError(f"{record.location}: zero-byte file")
    if record.size_bytes > config.max_file_bytes:
        raise UndecodableImageError(
            f"{record.location}: {record.size_bytes} bytes is over IngestConfig.max_file_bytes={config.max_file_bytes}; "
            "not read (raise max_file_bytes if the file is a genuine image)"
        )
    file_sha256 = cache.sha256_of_version(record.version_key) if record.version_key else None
    image = cache.get(file_sha256) if file_sha256 else None
    if image is None:
        data = read_bytes(record)
        stats["files_read"] += 1
        stats["bytes_read"] += len(data)
        file_sha256 = hashlib.sha256(data).hexdigest()
        image = cache.get(file_sha256)
        if image is None:
            image = decode_image(
                data, record.location, config.image_size, config.channels, config.max_image_pixels, bits_stored=config.bits_stored
            )
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

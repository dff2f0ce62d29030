"""A local folder of images, with an optional ``metadata.csv`` (rules: sslflow/data/metadata.py).

Every file read must lie inside the folder: metadata paths with '..' or absolute paths are refused,
and so is any path (listed or found) that resolves outside the folder through a symlink. Files are
only ever opened for reading.
"""

from __future__ import annotations

from pathlib import Path

from sslflow.config import IngestConfig
from sslflow.data.decode_cache import DecodeCache
from sslflow.data.listing import read_listing
from sslflow.data.metadata import METADATA_FILE, ImageRecord, metadata_rows, parse_metadata_csv
from sslflow.data.types import IMAGE_SUFFIXES, SourceError, SourceImages


def resolve_inside(root: Path, relative: str, where: str) -> Path:
    """root / relative as an existing file inside root (after following symlinks), else SourceError."""
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise SourceError(f"{where}: {relative!r} resolves outside the source folder {root} (a symlink?); copy the file into the folder")
    if not path.is_file():
        raise SourceError(f"{where}: {relative!r} does not exist in {root}")
    return path


def local_records(root: Path, rows: list[dict]) -> list[ImageRecord]:
    """Metadata rows (sslflow.data.metadata.metadata_rows) of files under ``root`` as ImageRecords."""
    records = []
    for row in rows:
        path = resolve_inside(root, row["path"], row["where"])
        records.append(
            ImageRecord(
                source_path=row["path"], location=str(path), size_bytes=path.stat().st_size,
                case_id=row["case_id"], site=row["site"], label=row["label"],
            )  # fmt: skip
        )
    return records


def list_folder(root: Path) -> list[ImageRecord]:
    """The images of a folder: the rows of its metadata.csv, or else every file with an image suffix."""
    if not root.is_dir():
        raise SourceError(f"source folder {root} does not exist")
    metadata = root / METADATA_FILE
    if metadata.is_file():
        return local_records(root, metadata_rows(parse_metadata_csv(metadata.read_bytes(), str(metadata)), str(metadata), first_row=2))
    found = sorted(path for path in root.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES and not path.is_dir())
    rows = [{"path": path.relative_to(root).as_posix(), "case_id": None, "site": "default", "label": None, "where": str(path)} for path in found]
    return local_records(root, rows)


def read_folder(root: Path, config: IngestConfig, cache: DecodeCache) -> SourceImages:
    return read_listing(list_folder(root), lambda record: Path(record.location).read_bytes(), config, cache, str(root))

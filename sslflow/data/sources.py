"""The dispatcher: a source string -> its kind, name, fingerprint and images. The top of sslflow.data.

A source is one of:
- a built-in data set (``fashion-mnist``, ``mnist-5k``, ``optdigits``: sslflow/data/builtin.py);
- ``s3://bucket/prefix``: the objects under an S3 prefix (sslflow/data/s3.py);
- ``something.parquet``: a parquet image list with columns path, case_id, site, label, paths relative
  to its folder (sslflow/data/parquet_list.py);
- otherwise a local folder, optionally with ``metadata.csv`` (sslflow/data/folder.py).
The metadata rules the last three share are in sslflow/data/metadata.py.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from sslflow.config import IngestConfig
from sslflow.data.builtin import BUILTIN_SOURCES, builtin_files, read_builtin
from sslflow.data.decode_cache import DecodeCache
from sslflow.data.folder import read_folder
from sslflow.data.parquet_list import read_parquet_list
from sslflow.data.s3 import fingerprint_s3, read_s3
from sslflow.data.types import SourceError, SourceImages


def source_kind(source: str) -> str:
    """"builtin", "s3", "parquet" (a .parquet image list) or "folder"."""
    if source in BUILTIN_SOURCES:
        return "builtin"
    if source.startswith("s3://"):
        return "s3"
    if source.endswith(".parquet"):
        return "parquet"
    return "folder"


def source_name(source: str) -> str:
    """A short name for a source, safe as a file name: the folder or list name, bucket-prefix for S3."""
    kind = source_kind(source)
    if kind == "builtin":
        return source
    if kind == "s3":
        name = source.removeprefix("s3://").strip("/")
    elif kind == "parquet":
        name = Path(source).stem
    else:
        name = Path(source).resolve().name
    return "".join(char if char.isalnum() or char in "-_." else "-" for char in name) or "source"


def source_files(source: str) -> list[Path]:
    """The files whose bytes define a local source: what its fingerprint hashes."""
    kind = source_kind(source)
    if kind == "builtin":
        return builtin_files(source)
    if kind == "parquet":
        if not Path(source).is_file():
            raise SourceError(f"parquet image list {source!r} does not exist")
        return sorted(path for path in Path(source).parent.rglob("*") if path.is_file())
    root = Path(source)
    if not root.is_dir():
        raise SourceError(
            f"source {source!r} is neither a built-in source {BUILTIN_SOURCES}, an s3://bucket/prefix, "
            "a .parquet image list nor an existing folder"
        )
    return sorted(path for path in root.rglob("*") if path.is_file())


def fingerprint_source(source: str) -> str:
    """The cache key of ingest: a sha256 that changes whenever the source's content does.

    Local sources: the relative names and bytes of every file (for a parquet list, of every file in
    its folder). S3: the listing's keys, ETags and sizes (no object is downloaded).
    """
    kind = source_kind(source)
    if kind == "s3":
        return fingerprint_s3(source)
    digest = hashlib.sha256(source.encode())
    base = Path(source) if kind == "folder" else Path(source).parent if kind == "parquet" else None
    for path in source_files(source):
        digest.update(str(path.relative_to(base) if base else path.name).encode())
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def read_source(source: str, config: IngestConfig) -> SourceImages:
    """Every image of ``source`` as (N, config.channels, config.image_size, config.image_size) uint8.

    Listed sources (folder, parquet list, S3) decode through the decode cache
    (sslflow/data/decode_cache.py), so re-reading a source with a few new files decodes only those.
    Raises SourceError naming the file, row or key when the source is unusable, UndecodableImageError
    when more than config.max_bad_fraction of its images cannot be decoded.
    """
    kind = source_kind(source)
    if kind == "builtin":
        return read_builtin(source, config.image_size, config.channels)
    cache = DecodeCache.for_config(config)
    if kind == "s3":
        return read_s3(source, config, cache)
    if kind == "parquet":
        return read_parquet_list(Path(source), config, cache)
    return read_folder(Path(source), config, cache)

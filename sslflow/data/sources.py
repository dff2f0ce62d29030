"""The dispatcher: a source string -> its kind, name, folder and fingerprint. Ingest reads a source in chunks
(sslflow/data/chunks.py).

A source is one of:
- a built-in data set (``fashion-mnist``, ``mnist-5k``, ``optdigits``: sslflow/data/builtin.py);
- ``s3://bucket/prefix``: the objects under an S3 prefix (sslflow/data/s3.py);
- ``something.parquet``: a parquet image list with columns path, case_id, site, label, paths relative
  to its folder (sslflow/data/parquet_list.py);
- otherwise a local folder, optionally with ``metadata.csv`` (sslflow/data/folder.py).
The metadata rules the last three share are in sslflow/data/metadata.py; the fingerprint (Flyte's
cache key of ingest) is in sslflow/data/fingerprint.py.
"""

from __future__ import annotations

from pathlib import Path

from sslflow.data.builtin import BUILTIN_SOURCES
from sslflow.data.fingerprint import fingerprint_builtin, fingerprint_folder, fingerprint_parquet_list, fingerprint_s3
from sslflow.data.types import SourceError


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


def source_folder(source: str) -> Path:
    """A folder source as a Path; SourceError listing what a source can be when it names no folder."""
    root = Path(source)
    if not root.is_dir():
        raise SourceError(
            f"source {source!r} is neither a built-in source {BUILTIN_SOURCES}, an s3://bucket/prefix, "
            "a .parquet image list nor an existing folder"
        )
    return root


def fingerprint_source(source: str) -> str:
    """The cache key of ingest: a sha256 that changes whenever what ingest reads from the source does.

    Covers exactly the files ingest reads, after the same checks, without re-reading unchanged local
    files; S3: keys, ETags and sizes (no object is downloaded). Encoding and digest cache:
    sslflow/data/fingerprint.py.
    """
    kind = source_kind(source)
    if kind == "builtin":
        return fingerprint_builtin(source)
    if kind == "s3":
        return fingerprint_s3(source)
    if kind == "parquet":
        return fingerprint_parquet_list(source)
    source_folder(source)
    return fingerprint_folder(source)

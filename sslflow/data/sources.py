"""The dispatcher: a source string -> its kind, name, fingerprint and images. The top of sslflow.data.

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

from sslflow.config import IngestConfig
from sslflow.data.builtin import BUILTIN_SOURCES, read_builtin
from sslflow.data.decode_cache import DecodeCache
from sslflow.data.fingerprint import fingerprint_builtin, fingerprint_folder, fingerprint_parquet_list, fingerprint_s3
from sslflow.data.folder import read_folder
from sslflow.data.parquet_list import read_parquet_list
from sslflow.data.pseudonyms import Pseudonyms
from sslflow.data.s3 import read_s3
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


def read_source(source: str, config: IngestConfig, *, pseudonym_key: str | None = None) -> SourceImages:
    """Every image of ``source`` as (N, config.channels, config.image_size, config.image_size) uint8.

    Listed sources (folder, parquet list, S3) decode through the decode cache
    (sslflow/data/decode_cache.py), so re-reading a source with a few new files decodes only those.
    Raises SourceError naming the file, row or key when the source is unusable, UndecodableImageError
    when more than config.max_bad_fraction of its images cannot be decoded. DICOM identities are
    pseudonymised with ``pseudonym_key``, else the key of the environment or key file
    (sslflow/data/pseudonyms.py), resolved only when a DICOM file is read.
    """
    kind = source_kind(source)
    if kind == "builtin":
        return read_builtin(source, config.image_size, config.channels)
    cache, pseudonyms = DecodeCache.for_config(config), Pseudonyms(pseudonym_key)
    if kind == "s3":
        return read_s3(source, config, cache, pseudonyms)
    if kind == "parquet":
        return read_parquet_list(Path(source), config, cache, pseudonyms)
    return read_folder(source_folder(source), config, cache, pseudonyms)

"""The sources ingest reads, one module per kind behind one protocol: ``open_source(uri)`` is the only place
that tells the kinds apart. Ingest cuts a source's records into chunks (sslflow/data/chunks.py).

A source is one of:
- a built-in data set (``fashion-mnist``, ``mnist-5k``, ``optdigits``: sslflow/data/sources/builtin.py);
- ``s3://bucket/prefix``: the objects under an S3 prefix (sslflow/data/sources/s3.py);
- ``dicomweb+https://host/dicom-web?ModalitiesInStudy=CT``: the instances a DICOMweb archive's QIDO-RS query
  selects, retrieved by WADO-RS (sslflow/data/sources/dicomweb.py);
- ``something.parquet``: a parquet image list with columns path, case_id, site, label, paths relative
  to its folder (sslflow/data/sources/parquet_list.py);
- otherwise a local folder, optionally with ``metadata.csv`` (sslflow/data/sources/folder.py).
The metadata rules the last three share are in sslflow/data/metadata.py; the fingerprint's encoding and
digest cache (Flyte's cache key of ingest) in sslflow/data/fingerprint.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from sslflow.data.instance_metadata import InstanceMetadata
from sslflow.data.metadata import ImageRecord
from sslflow.data.sources.builtin import BUILTIN_SOURCES, BuiltinSource
from sslflow.data.sources.dicomweb import DicomwebSource
from sslflow.data.sources.folder import FolderSource
from sslflow.data.sources.parquet_list import ParquetListSource
from sslflow.data.sources.s3 import S3Source
from sslflow.data.types import SourceError, SourceImages


class Source(Protocol):
    """One source of images. Nothing is read when it is opened; each method reads what it says.

    kind: "builtin", "s3", "dicomweb", "parquet" or "folder"; uri: as the user gave it; name: short, safe as a file
    name; display_name: the name the model registry knows the source by (sslflow/registry/names.py): ``name``, and
    for data that is not built in 8 hex of where it lives, so two folders named alike are two models.
    claims(uri): whether ``uri`` names a source of this kind (nothing is read): the dispatcher asks each kind in
        SOURCE_KINDS in turn.
    records(): (position in the source's listing, record, content digest) of every file ingest reads, streamed in
        case order (case_id, else the path; then the path): sorted by path without metadata, and the metadata
        rows sorted by case with it. The digest is the file's sha256 (S3: endpoint, URL, ETag and size; DICOMweb: the
        instance count of its series). Files without an image suffix come as candidates (``ImageRecord.sniff``):
        nothing looks at their content here.
    packaged_images(image_size, channels): every image as arrays when the source is a packaged data set, not files
        (ingest cuts it by index ranges, sslflow/data/chunks.py); None for a source of files (ingest lists them).
    without_server(fields, digest): a listed record (ImageRecord fields, content digest) as the chunk's identity
        sees it, without the address of the server that answered (a replica, a proxy): the files are the same;
        uri_without_server: the uri so.
    fingerprint(): the cache key of ingest (sslflow/data/fingerprint.py): changes whenever what ingest reads does.
    read_bytes(record): the bytes of one listed file; read_head(record, count): its first ``count`` bytes (b"" where
        a file's bytes cannot be read in part: DICOMweb, built-in).
    instance_rows(): the metadata file keyed by SOPInstanceUID (InstanceMetadata: read in batches), or None.
    unlisted(): the paths of image files (by suffix) under the source's root that its metadata.csv does not list,
        streamed in path order (ingest does not read them: it counts them); none without such metadata.
    check_service(timeout_s): one request, no retry, to the service that holds the source (S3 endpoint, archive):
        sslflow.errors.ServiceUnavailable when it does not answer within timeout_s seconds; nothing for local files.
    """

    kind: str
    uri: str

    @staticmethod
    def claims(uri: str) -> bool: ...

    @property
    def name(self) -> str: ...

    @property
    def display_name(self) -> str: ...

    def records(self) -> Iterator[tuple[int, ImageRecord, str]]: ...

    def packaged_images(self, image_size: int, channels: int) -> SourceImages | None: ...

    def without_server(self, fields: dict, digest: str) -> tuple[dict, str]: ...

    @property
    def uri_without_server(self) -> str: ...

    def fingerprint(self) -> str: ...

    def read_bytes(self, record: ImageRecord) -> bytes: ...

    def read_head(self, record: ImageRecord, count: int) -> bytes: ...

    def instance_rows(self) -> InstanceMetadata | None: ...

    def unlisted(self) -> Iterator[str]: ...

    def check_service(self, timeout_s: float) -> None: ...


# The source kinds, asked in this order whether they claim a URI; a URI none claims is a local folder. A new kind:
# its module in this package and one line here.
SOURCE_KINDS: list[type] = [BuiltinSource, S3Source, DicomwebSource, ParquetListSource]


def _source_class(uri: str) -> type:
    return next((kind for kind in SOURCE_KINDS if kind.claims(uri)), FolderSource)


def _what_a_source_can_be(uri: str) -> str:
    return (
        f"source {uri!r} is neither a built-in source {BUILTIN_SOURCES}, an s3://bucket/prefix, "
        "a dicomweb+https://host/dicom-web?query archive, a .parquet image list nor an existing folder; "
        "pass one of these"
    )


def open_source(uri: str) -> Source:
    """The source ``uri`` names (see the module docstring); SourceError listing what a source can be when it names none
    (another URL scheme, or a path that is no folder)."""
    source_class = _source_class(uri)
    if source_class is FolderSource and ("://" in uri or not Path(uri).is_dir()):
        raise SourceError(_what_a_source_can_be(uri))
    return source_class(uri)


def named_source(uri: str) -> Source:
    """The source ``uri`` names, for its names and identities only: nothing is read and nothing checked to exist
    (``open_source`` checks)."""
    return _source_class(uri)(uri)


def source_name(uri: str) -> str:
    """A short name for a source, safe as a file name: the folder or list name, bucket-prefix for S3, host-path-hash for
    DICOMweb (nothing is read)."""
    return named_source(uri).name


def source_display_name(uri: str) -> str:
    """The name the model registry knows the source by (``Source.display_name``; nothing is read)."""
    return named_source(uri).display_name


def fingerprint_source(uri: str) -> str:
    """The cache key of ingest: a sha256 that changes whenever what ingest reads from the source does.

    Covers the files ingest reads, after the same checks, without re-reading unchanged local files; S3: keys, ETags and
    sizes (no object is downloaded); DICOMweb: the QIDO-RS listing (no instance is retrieved). Encoding and digest
    cache: sslflow/data/fingerprint.py."""
    return open_source(uri).fingerprint()

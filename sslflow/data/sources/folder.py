"""A local folder of images, with an optional ``metadata.csv`` (rules: sslflow/data/metadata.py).

Every file read must lie inside the folder: metadata paths with '..' or absolute paths are refused,
and so is any path (listed or found) that resolves outside the folder through a symlink. Only
regular files are read: a FIFO, socket or device (or a symlink to one) is refused after an
``os.stat``, without ever being opened, so a special file can neither block ingest nor feed it.
A case variant of the metadata file name (``Metadata.csv``, ``METADATA.CSV``) is refused, not
ignored. Files are only ever opened for reading.

Without metadata the files are walked in path order and streamed (each folder is sorted when the walk
reaches it). A metadata.csv naming files by path is read a batch of rows at a time into a sqlite file on disk with
the file each row names (sslflow/data/metadata_catalog.py, as for an S3 prefix), so the plan holds neither its rows
nor the files. Files without an image or DICOM suffix are listed as candidates, unread: the chunk that
reads them decodes those that start with a DICOM preamble and skips the others (sslflow/data/listing.py).
The fingerprint (sslflow/data/fingerprint.py) lists a folder with these same functions and checks; it
reads the first bytes of each candidate and covers those that are DICOM, the files ingest decodes.
"""

from __future__ import annotations

import functools
import itertools
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from sslflow.data.dicom import PREAMBLE_BYTES, has_dicom_preamble
from sslflow.data.fingerprint import FileDigests, digested, digested_entries, encode_sorted_fingerprint
from sslflow.data.instance_metadata import InstanceMetadata
from sslflow.data.metadata import (
    METADATA_FILE,
    ROWS_NAMED,
    ImageRecord,
    keyed_by_instance,
    located_name,
    metadata_file_name,
    missing_file,
    refuse_rows,
    safe_name,
)
from sslflow.data.metadata_catalog import MetadataCatalog, metadata_header
from sslflow.data.regular_files import stat_regular_file
from sslflow.data.sources.local_files import LocalFiles
from sslflow.data.types import DICOM_SUFFIXES, IMAGE_SUFFIXES, SourceError


class _Resolver:
    """Resolves paths below one source folder, remembering the real path of each folder on the way.

    realpath(folder/name) is realpath(folder)/name unless name is a symlink, so a folder of 10^5 files
    costs one lstat per file instead of one per path component (os.path.realpath).
    """

    def __init__(self, root: Path):
        self.root = root
        self.root_text = os.fspath(root)
        self.real_root = os.path.realpath(root)
        self.real_folders: dict[str, str] = {}

    def regular_file_inside(self, relative: str, where: str, *, missing: str = "") -> tuple[str, os.stat_result]:
        """(real path, os.stat) of root/relative, a regular file inside root; else SourceError. Never opens it."""
        folder, name = os.path.split(os.path.join(self.root_text, relative))
        try:
            if folder not in self.real_folders:
                self.real_folders[folder] = os.path.realpath(folder)
            path = os.path.join(self.real_folders[folder], name)
            if os.path.islink(path):
                path = str(Path(path).resolve())  # Path.resolve, not realpath: it raises on a symlink loop
        except (OSError, RuntimeError) as error:  # Python 3.11 raises RuntimeError for a symlink loop
            raise SourceError(
                f"{where}: {relative!r} cannot be resolved ({error}); a symlink loop? Replace the symlink with the file"
            ) from error
        if not path.startswith(os.path.join(self.real_root, "")):
            raise SourceError(
                f"{where}: {relative!r} resolves outside the source folder {self.root} (a symlink?); copy the file "
                "into the folder"
            )
        return path, stat_regular_file(path, where, relative, missing=missing or f"does not exist in {self.root}")


def resolve_inside(root: Path, relative: str, where: str) -> Path:
    """root / relative as a regular file inside root (after following symlinks), else SourceError.

    The file is never opened: a symlink out of the folder, a FIFO, socket or device is refused first.
    """
    return Path(_Resolver(root).regular_file_inside(relative, where)[0])


def folder_metadata_file(root: Path) -> Path | None:
    """The folder's metadata.csv (resolved, checked inside the folder and regular), None if it has none."""
    if not root.is_dir():
        raise SourceError(f"source folder {root} does not exist; check the path")
    if metadata_file_name(set(os.listdir(root)), str(root)) is None:
        return None
    return resolve_inside(root, METADATA_FILE, str(root / METADATA_FILE))


def _row_files(root: Path, rows: Iterable[dict]) -> Iterator[tuple[dict, tuple[str, os.stat_result] | SourceError]]:
    """(row, (real path, os.stat) of the file it names under ``root``, or the SourceError refusing the row: the file
    is missing, outside the folder or not a regular file) of each metadata row, streamed in the rows' order."""
    resolver = _Resolver(root)
    for row in rows:
        try:
            found = resolver.regular_file_inside(
                row["path"], row["where"], missing=missing_file(row["path"], str(root))
            )
        except SourceError as problem:
            found = problem
        yield row, found


def add_local_files(catalog: MetadataCatalog, root: Path, what: str) -> MetadataCatalog:
    """``catalog`` (metadata rows of files under ``root``) with the file each row names as its object (real path, size
    in bytes, no version), the rows read from it in file order, a batch at a time; SourceError naming the first rows (of
    ``what``, the metadata file) whose file is missing or refused, and how many (as local_records)."""
    problems, failing = [], 0

    def files() -> Iterator[tuple[str, str, int, str]]:
        nonlocal failing
        for row, found in _row_files(root, catalog.rows()):
            if isinstance(found, SourceError):
                failing += 1
                problems.extend([found] if len(problems) < ROWS_NAMED else [])
            else:
                yield row["path"], found[0], found[1].st_size, ""

    catalog.add_objects(files())
    refuse_rows(problems, what, count=failing)
    return catalog


def catalog_records(catalog: MetadataCatalog, *, in_path_order: bool = False) -> Iterator[tuple[int, ImageRecord]]:
    """(row position, record) of the files a catalog's rows name (add_local_files), in case order (or by path),
    streamed from it."""
    rows = catalog.rows_in_path_order() if in_path_order else catalog.rows_in_case_order()
    for position, row, (location, size, _) in rows:
        yield (
            position,
            ImageRecord(
                source_path=row["path"],
                location=location,
                size_bytes=size,
                case_id=row["case_id"],
                site=row["site"],
                label=row["label"],
            ),
        )


def digested_records(listed: Iterable[tuple[int, ImageRecord]]) -> Iterator[tuple[int, ImageRecord, str]]:
    """(row position, record, sha256 of its file) of local records, in their order, streamed (digested)."""
    positions, records = itertools.tee(listed)
    for (position, _), (record, sha256) in zip(positions, digested(record for _, record in records)):
        yield position, record, sha256


def _has_dicom_content(path: str) -> bool:
    """Whether the regular file ``path`` (already checked inside the folder) starts with a DICOM preamble.

    Reads PREAMBLE_BYTES bytes, opened non-blocking and checked again with fstat. Anything else is not DICOM: False.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    with os.fdopen(descriptor, "rb") as handle:
        return stat.S_ISREG(os.fstat(descriptor).st_mode) and has_dicom_preamble(handle.read(PREAMBLE_BYTES))


def walk_files(root: Path) -> Iterator[str]:
    """'/'-separated paths of the files below ``root`` (every entry but folders), streamed in path (string) order:
    each folder is listed and sorted when the walk reaches it. Symlinks to folders are not followed; a folder that
    cannot be listed is a SourceError."""

    def below(folder: str, prefix: str) -> Iterator[str]:
        entries = []
        try:
            with os.scandir(folder) as scan:
                for entry in scan:
                    try:
                        is_folder = entry.is_dir()
                    except OSError:
                        is_folder = False
                    if not (is_folder and entry.is_symlink()):
                        entries.append(
                            (entry.name + "/" if is_folder else entry.name, entry.path, is_folder)
                        )  # "a/x" sorts before "a0"
        except OSError as error:
            raise SourceError(
                f"{error.filename}: cannot list this folder of source {root} ({error.strerror}); check its permissions"
            ) from error
        for name, path, is_folder in sorted(entries):
            yield from below(path, prefix + name) if is_folder else [prefix + name]

    yield from below(os.fspath(root), "")


def found_files(root: Path) -> Iterator[ImageRecord]:
    """The files of a folder without metadata, streamed in path order: every file with an image or DICOM suffix
    (refused unless it is a regular file inside the folder), and as candidates (``sniff``) the other regular files
    inside the folder but metadata.csv (DICOM files often have no suffix): ingest decodes those that are DICOM."""
    resolver = _Resolver(root)
    for relative in walk_files(root):
        by_name = os.path.splitext(relative)[1].lower() in IMAGE_SUFFIXES + DICOM_SUFFIXES
        if not by_name and relative == METADATA_FILE:
            continue
        try:
            path, status = resolver.regular_file_inside(relative, os.path.join(root, relative))
        except SourceError:
            if by_name:
                raise
            continue  # a special file, or a symlink out of the folder, without an image suffix: not a candidate
        yield ImageRecord(source_path=relative, location=path, size_bytes=status.st_size, sniff=not by_name)


class FolderSource(LocalFiles):
    """A local folder as a Source (sslflow/data/sources/__init__.py; rules: the module docstring)."""

    kind = "folder"

    def __init__(self, uri: str):
        self.uri, self.root = uri, Path(uri)

    @staticmethod
    def claims(uri: str) -> bool:
        """Any URI without a scheme: the dispatcher's last resort, it checks that the folder exists."""
        return "://" not in uri

    @property
    def name(self) -> str:
        return safe_name(self.root.resolve().name)

    @property
    def display_name(self) -> str:
        """The folder's name and 8 hex of its absolute path."""
        return located_name(self.name, str(self.root.resolve()))

    @property
    def _where(self) -> str:
        return str(self.root / METADATA_FILE)

    @functools.cached_property
    def _metadata_file(self) -> Path | None:
        """The folder's metadata.csv (resolved, checked: folder_metadata_file), None if it has none."""
        return folder_metadata_file(self.root)

    @functools.cached_property
    def _catalog(self) -> MetadataCatalog | None:
        """metadata.csv's rows on disk, read a batch at a time and checked (sslflow/data/metadata_catalog.py), when it
        names files by path; None without metadata or with metadata keyed by SOPInstanceUID (its header alone is read:
        InstanceMetadata reads the rows in batches). The file is opened once."""
        if self._metadata_file is None:
            return None
        with self._metadata_file.open("rb") as file:
            if keyed_by_instance(metadata_header(file, self._where)):
                return None
            file.seek(0)
            return MetadataCatalog.from_csv(file, self._where)

    @functools.cached_property
    def _listed_files(self) -> MetadataCatalog | None:
        """_catalog with the file each row names, each checked once (add_local_files); None as _catalog."""
        return None if self._catalog is None else add_local_files(self._catalog, self.root, self._where)

    def _listed(self, *, in_path_order: bool = False) -> Iterator[tuple[int, ImageRecord]] | None:
        """(row position, record) of the files metadata.csv lists, in case order (or by path), streamed from its
        catalog; None without metadata naming paths. Every row's file is checked before the first comes."""
        if self._listed_files is None:
            return None
        return catalog_records(self._listed_files, in_path_order=in_path_order)

    def records(self) -> Iterator[tuple[int, ImageRecord, str]]:
        """The rows of metadata.csv in case order, or else (no metadata, or metadata keyed by SOPInstanceUID) the
        folder's files (found_files) in path order; each with its sha256 (sslflow/data/fingerprint.py), streamed."""
        listed = self._listed()
        yield from digested_records(enumerate(found_files(self.root)) if listed is None else listed)

    def fingerprint(self) -> str:
        """metadata.csv and the files ingest decodes: those it lists, or every file with an image suffix and every
        candidate that starts with a DICOM preamble (ingest skips the others, so they change nothing). The files are
        hashed as they stream in path order (the catalog's, or the walk's), never all held."""
        listed = self._listed(in_path_order=True)
        records = (
            (record for _, record in listed)
            if listed is not None
            else (
                record for record in found_files(self.root) if not record.sniff or _has_dicom_content(record.location)
            )
        )
        with FileDigests() as digests:
            metadata = self._metadata_file
            listing = digests.record(METADATA_FILE, metadata, str(metadata)) if metadata is not None else None
        unlisted = list(self.unlisted())  # by name only: the summary counts them, ingest reads none
        files = (entry for _, entry in digested_entries(records))
        return encode_sorted_fingerprint("folder", self.uri, [listing, unlisted] if unlisted else listing, files)

    def instance_rows(self) -> InstanceMetadata | None:
        """metadata.csv when it names DICOM files by SOPInstanceUID (its header alone is read here), else None."""
        path = self._metadata_file
        if path is None or not keyed_by_instance(metadata_header(path, self._where)):
            return None
        return InstanceMetadata(path, self._where)

    def unlisted(self) -> Iterator[str]:
        """The image files (by suffix) in the folder that its metadata.csv does not list, in path order (none without
        metadata naming paths): each file looked up in the catalog of its rows."""
        if self._catalog is None:
            return
        suffixes = IMAGE_SUFFIXES + DICOM_SUFFIXES
        yield from (
            path
            for path in walk_files(self.root)
            if os.path.splitext(path)[1].lower() in suffixes and not self._catalog.names(path)
        )

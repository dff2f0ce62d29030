"""A local folder of images, with an optional ``metadata.csv`` (rules: sslflow/data/metadata.py).

Every file read must lie inside the folder: metadata paths with '..' or absolute paths are refused,
and so is any path (listed or found) that resolves outside the folder through a symlink. Only
regular files are read: a FIFO, socket or device (or a symlink to one) is refused after an
``os.stat``, without ever being opened, so a special file can neither block ingest nor feed it.
A case variant of the metadata file name (``Metadata.csv``, ``METADATA.CSV``) is refused, not
ignored. Files are only ever opened for reading.

The fingerprint (sslflow/data/fingerprint.py) lists a folder with these same functions, so it hashes
exactly the files ingest reads, after the same checks.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sslflow.data.dicom import PREAMBLE_BYTES, has_dicom_preamble
from sslflow.data.metadata import METADATA_FILE, ImageRecord, instance_rows, keyed_by_instance, metadata_file_name, metadata_rows, parse_metadata_csv
from sslflow.data.types import DICOM_SUFFIXES, IMAGE_SUFFIXES, SourceError


def file_kind(mode: int) -> str:
    """What an ``st_mode`` describes, for messages: "a regular file", "a FIFO (named pipe)", ..."""
    kinds = [
        (stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
    ]  # fmt: skip
    return next((kind for test, kind in kinds if test(mode)), "a special file")


def check_regular_file(status: os.stat_result, where: str, name: str) -> os.stat_result:
    """``status`` (an os.stat / os.fstat result) if it is a regular file's, else SourceError naming the file."""
    if not stat.S_ISREG(status.st_mode):
        raise SourceError(
            f"{where}: {name!r} is not a regular file but {file_kind(status.st_mode)}; "
            "sources are read from regular files only: replace it with the file itself"
        )
    return status


def stat_regular_file(path: str | Path, where: str, name: str, *, missing: str) -> os.stat_result:
    """``os.stat(path)`` (following symlinks, never opening the file); SourceError unless it is a regular file.

    where, name: the file as the message names it ("<where>: '<name>' ..."); missing: the end of the
    message when there is no such file (e.g. "does not exist in /data/scans").
    """
    try:
        status = os.stat(path)
    except FileNotFoundError as error:
        raise SourceError(f"{where}: {name!r} {missing}") from error
    except OSError as error:
        raise SourceError(f"{where}: {name!r} cannot be examined ({error.strerror}); check its permissions") from error
    return check_regular_file(status, where, name)


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

    def regular_file_inside(self, relative: str, where: str) -> tuple[str, os.stat_result]:
        """(real path, os.stat) of root/relative, a regular file inside root; else SourceError. Never opens it."""
        folder, name = os.path.split(os.path.join(self.root_text, relative))
        try:
            if folder not in self.real_folders:
                self.real_folders[folder] = os.path.realpath(folder)
            path = os.path.join(self.real_folders[folder], name)
            if os.path.islink(path):
                path = str(Path(path).resolve())  # Path.resolve, not realpath: it raises on a symlink loop
        except (OSError, RuntimeError) as error:  # Python 3.11 raises RuntimeError for a symlink loop
            raise SourceError(f"{where}: {relative!r} cannot be resolved ({error}); a symlink loop?") from error
        if not path.startswith(os.path.join(self.real_root, "")):
            raise SourceError(f"{where}: {relative!r} resolves outside the source folder {self.root} (a symlink?); copy the file into the folder")
        return path, stat_regular_file(path, where, relative, missing=f"does not exist in {self.root}")


def resolve_inside(root: Path, relative: str, where: str) -> Path:
    """root / relative as a regular file inside root (after following symlinks), else SourceError.

    The file is never opened: a symlink out of the folder, a FIFO, socket or device is refused first.
    """
    return Path(_Resolver(root).regular_file_inside(relative, where)[0])


def folder_metadata_file(root: Path) -> Path | None:
    """The folder's metadata.csv (resolved, checked inside the folder and regular), None if it has none."""
    if not root.is_dir():
        raise SourceError(f"source folder {root} does not exist")
    if metadata_file_name(set(os.listdir(root)), str(root)) is None:
        return None
    return resolve_inside(root, METADATA_FILE, str(root / METADATA_FILE))


def local_records(root: Path, rows: list[dict]) -> list[ImageRecord]:
    """Metadata rows (sslflow.data.metadata.metadata_rows) of files under ``root`` as ImageRecords."""
    resolver = _Resolver(root)
    records = []
    for row in rows:
        path, status = resolver.regular_file_inside(row["path"], row["where"])
        records.append(
            ImageRecord(
                source_path=row["path"], location=path, size_bytes=status.st_size,
                case_id=row["case_id"], site=row["site"], label=row["label"],
            )  # fmt: skip
        )
    return records


def _has_dicom_content(resolver: _Resolver, relative: str) -> bool:
    """Whether root/relative is a regular file inside the folder whose first bytes are a DICOM preamble.

    Reads PREAMBLE_BYTES bytes, and only after the checks ingest makes (inside the folder, a regular
    file; opened non-blocking and checked again with fstat). Anything else is not DICOM: False.
    """
    try:
        path, _ = resolver.regular_file_inside(relative, relative)
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except (SourceError, OSError):
        return False
    with os.fdopen(descriptor, "rb") as handle:
        return stat.S_ISREG(os.fstat(descriptor).st_mode) and has_dicom_preamble(handle.read(PREAMBLE_BYTES))


def image_files(root: Path) -> list[str]:
    """'/'-separated paths below ``root`` of the files ingest reads, in path order: every non-folder entry
    with an image or DICOM suffix, and every other regular file inside the folder (other than metadata.csv)
    that starts with a DICOM preamble (DICOM files often have no extension).

    Symlinks to folders are not followed; a folder that cannot be listed is a SourceError.
    """

    def refuse(error: OSError) -> None:
        raise SourceError(f"{error.filename}: cannot list this folder of source {root} ({error.strerror})")

    resolver, found = _Resolver(root), []
    for folder, _, names in os.walk(root, onerror=refuse):
        below = os.path.relpath(folder, root).replace(os.sep, "/")
        prefix = "" if below == "." else below + "/"
        for name in names:
            by_name = os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES + DICOM_SUFFIXES
            if by_name or (prefix + name != METADATA_FILE and _has_dicom_content(resolver, prefix + name)):
                found.append(prefix + name)
    return sorted(found, key=lambda path: path.split("/"))


def list_folder(root: Path) -> list[ImageRecord]:
    """The images of a folder: the rows of its metadata.csv, or else (no metadata, or metadata keyed by
    SOPInstanceUID: folder_instance_rows) every image file (image_files)."""
    metadata = folder_metadata_file(root)
    if metadata is not None:
        where = str(root / METADATA_FILE)
        table = parse_metadata_csv(metadata.read_bytes(), where)
        if not keyed_by_instance(table):
            return local_records(root, metadata_rows(table, where, first_row=2))
    rows = [{"path": path, "case_id": None, "site": "default", "label": None, "where": os.path.join(root, path)} for path in image_files(root)]
    return local_records(root, rows)


def folder_instance_rows(root: Path) -> list[dict] | None:
    """The rows of a folder's metadata.csv when it names DICOM files by SOPInstanceUID, else None."""
    metadata = folder_metadata_file(root)
    if metadata is None:
        return None
    where = str(root / METADATA_FILE)
    table = parse_metadata_csv(metadata.read_bytes(), where)
    return instance_rows(table, where, first_row=2) if keyed_by_instance(table) else None

"""The cache key of ingest: a sha256 over exactly what ingest reads, re-reading only changed files.

Flyte keys ingest's cache on this fingerprint (computed by the uncached first task of a run, in a pod:
tasks/ingest.py source_fingerprint; the plan takes it as an input), so it must change whenever ingest's
output could, and stay cheap: it is computed in every run.

What it covers, listed by the same functions and checks as ingest so that both agree on the file set (each
source's ``fingerprint()`` in sslflow/data/sources/ computes it with the helpers of this module):
- folder: metadata.csv and the files it lists, or without metadata every file with an image suffix and every
  other file that starts with a DICOM preamble (sslflow/data/sources/folder.py); ingest also reads the other
  files without an image suffix, to find out they are not DICOM, but those add no image;
- parquet image list: the list file and the files it lists, not the rest of its folder
  (sslflow/data/sources/parquet_list.py);
- built-in data set: the package files it is read from (sslflow/data/sources/builtin.py: builtin_files);
- S3 prefix: every object under the prefix, by key, ETag and size; nothing is downloaded;
- DICOMweb archive query: ``listing`` is [metadata file sha256 or null, number of instances, sha256 of the sorted
  "<study>/<series>/<instance> UIDs <series instance count>" lines from QIDO-RS] and ``files`` is empty: the listing
  streams through a file on disk, never whole in memory; nothing is retrieved (sslflow/data/sources/dicomweb.py).
A local file is hashed only after it is known to be a regular file inside the source root (symlinks
followed), so a symlink out of the folder or a FIFO, socket or device is refused without being opened.

Encoding: the sha256 of one JSON document (sorted keys, ASCII, no spaces)::

    {"format": "sslflow-source-fingerprint", "version": 3, "kind": "folder", "source": "<as given>",
     "listing": ["metadata.csv", size, sha256] or null,
     "files": [[relative path, size, sha256], ...]}           # sorted; S3: [relative key, size, ETag]

Every name is a quoted JSON string, so two different listings never encode alike (the previous
fingerprint concatenated names and bytes, and ``a.png`` holding C hashed like ``a.pn`` holding "g"+C).
An empty listing has a fingerprint too: the cache misses and ingest refuses the source as empty.

Digest cache: the sha256 of each local file is remembered in the sqlite database ``file-digests.sqlite`` in the ingest
cache folder (sslflow/data/decode_cache.py: ingest_cache_dir), keyed by the sha256 of the absolute path (a path can name
a patient: it is never stored) and checked against (size, mtime_ns, ctime_ns, inode, device); a file whose stat differs
is read again. A digest is not remembered for a file modified less than RECENT_SECONDS before it was hashed (a same-size
rewrite within one coarse file-system timestamp tick would otherwise go unseen), nor when the file changed while it was
read. Concurrent processes share the database (sqlite locking, with a timeout); any error of the database is logged and
only costs re-reading. Deleting the database is always safe. With SSLFLOW_INGEST_CACHE=off (the task images) there is no
database and every file is read. Files not remembered are hashed on one thread per core."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path

from sslflow.data.decode_cache import ingest_cache_dir
from sslflow.data.metadata import ImageRecord
from sslflow.data.regular_files import check_regular_file, stat_regular_file
from sslflow.data.types import SourceError

FINGERPRINT_VERSION = 3  # bump when the encoding or the file set of a kind changes
DIGEST_DATABASE = "file-digests.sqlite"
SQLITE_TIMEOUT_SECONDS = 30
HASH_THREADS = max(1, len(os.sched_getaffinity(0)))  # reading and hashing files: one thread per core
HASH_BATCH = 256  # files per thread task: one future per file costs more than hashing a small file
RECENT_SECONDS = 2  # coarser than any file-system timestamp tick (FAT: 2 s; ext3, HFS+: 1 s)

log = logging.getLogger(__name__)


def encode_fingerprint(kind: str, source: str, listing: list | None, files: list[list]) -> str:
    """sha256 of the JSON document described in the module docstring."""
    document = {
        "format": "sslflow-source-fingerprint",
        "version": FINGERPRINT_VERSION,
        "kind": kind,
        "source": source,
        "listing": listing,
        "files": sorted(files),
    }
    return hashlib.sha256(
        json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    ).hexdigest()


def encode_sorted_fingerprint(kind: str, source: str, listing: list | None, files: Iterable[list]) -> str:
    """encode_fingerprint of ``files`` that come sorted by name (an S3 listing: keys in UTF-8 byte order, which is
    Python's str order), hashed as they stream: the same sha256, in memory one entry at a time, whatever the number
    of files. ValueError for a name out of order."""
    rest = {
        "format": "sslflow-source-fingerprint",
        "version": FINGERPRINT_VERSION,
        "kind": kind,
        "source": source,
        "listing": listing,
    }
    digest, previous = hashlib.sha256(b'{"files":['), None
    for entry in files:
        if previous is not None and entry[0] <= previous:
            raise ValueError(f"the listing of {source} is not sorted by name: {entry[0]!r} after {previous!r}")
        digest.update(
            (b"," if previous is not None else b"")
            + json.dumps(entry, separators=(",", ":"), ensure_ascii=True).encode()
        )
        previous = entry[0]
    # sorted keys: "files" comes first, then the others in the order sort_keys gives them
    digest.update(b"]," + json.dumps(rest, sort_keys=True, separators=(",", ":"), ensure_ascii=True)[1:].encode())
    return digest.hexdigest()


def sha256_of_regular_file(path: str | Path, where: str, name: str) -> tuple[str, os.stat_result]:
    """sha256 of a regular file's bytes and its os.fstat after reading; SourceError naming it otherwise.

    Opened non-blocking and checked with fstat before any read, so a file swapped for a FIFO or device
    after the caller's os.stat is refused instead of blocking.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(descriptor, "rb") as handle:
            check_regular_file(os.fstat(descriptor), where, name)
            digest = hashlib.file_digest(handle, "sha256")
            return digest.hexdigest(), os.fstat(descriptor)
    except OSError as error:
        raise SourceError(f"{where}: {name!r} cannot be read ({error.strerror}); check its permissions") from error


def path_key(path: str | Path) -> bytes:
    """What the digest cache knows a file by: the sha256 of its absolute path (a path can name a patient)."""
    return hashlib.sha256(os.fsencode(os.path.abspath(path))).digest()


def _version(status: os.stat_result) -> str:
    """What must be unchanged for a remembered digest to hold."""
    return f"{status.st_size} {status.st_mtime_ns} {status.st_ctime_ns} {status.st_ino} {status.st_dev}"


class FileDigests:
    """sha256s of local files, remembered in sqlite by absolute path and stat (see the module docstring).

    A context manager: digests found on the way are written in one transaction on a clean exit.
    """

    def __init__(self, database: Path | None = None):
        cache = ingest_cache_dir()
        self.database = database or (
            cache / DIGEST_DATABASE if cache is not None else None
        )  # None: off, read every file
        self.connection: sqlite3.Connection | None = None
        self.new_rows: list[tuple[bytes, str, str]] = []

    def __enter__(self) -> FileDigests:
        if self.database is None:
            return self
        try:
            self.database.parent.mkdir(parents=True, exist_ok=True)
            self.connection = sqlite3.connect(self.database, timeout=SQLITE_TIMEOUT_SECONDS)
            with self.connection:
                self.connection.execute(
                    "CREATE TABLE IF NOT EXISTS digests_by_path_hash (path_sha256 BLOB PRIMARY KEY, version TEXT NOT "
                    "NULL, sha256 TEXT NOT NULL)"
                )
        except (OSError, sqlite3.Error) as error:
            self._give_up(f"cannot be opened ({error})")
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        if self.connection is None:
            return
        try:
            if error_type is None and self.new_rows:
                with self.connection:
                    self.connection.executemany(
                        "INSERT OR REPLACE INTO digests_by_path_hash VALUES (?, ?, ?)", self.new_rows
                    )
        except sqlite3.Error as write_error:
            log.warning(
                "file digest cache %s: digests not saved (%s); the next fingerprint reads those files again",
                self.database,
                write_error,
            )
        finally:
            self.connection.close()

    def _give_up(self, problem: str) -> None:
        log.warning("file digest cache %s %s; fingerprinting reads every file instead", self.database, problem)
        if self.connection is not None:
            self.connection.close()
        self.connection = None

    def _remembered(self, key: bytes, version: str) -> str | None:
        if self.connection is None:
            return None
        try:
            rows = self.connection.execute(
                "SELECT version, sha256 FROM digests_by_path_hash WHERE path_sha256 = ?", (key,)
            ).fetchall()
        except sqlite3.Error as error:
            self._give_up(f"cannot be read ({error})")
            return None
        return rows[0][1] if rows and rows[0][0] == version else None  # fetchall: the read lock is released at once

    def record(self, name: str, path: str | Path, where: str) -> list:
        """[name, size, sha256] of the regular file ``path``; its bytes are read only if not remembered.

        name: the file's path relative to the source root; where: the file or row, for messages.
        """
        return self.records([(name, path, where)])[0]

    def records(self, files: list[tuple[str, str | Path, str]]) -> list[list]:
        """record() of each (name, path, where), in order; the files not remembered are read by HASH_THREADS
        threads at once (hashlib releases the GIL while it hashes, so a listing is hashed on every core)."""
        known = []
        for name, path, where in files:
            status = stat_regular_file(path, where, name, missing="no longer exists")
            key = path_key(path)
            known.append((name, path, where, status, key, self._remembered(key, _version(status))))
        batches = [known[start : start + HASH_BATCH] for start in range(0, len(known), HASH_BATCH)]
        with ThreadPoolExecutor(HASH_THREADS) as pool:
            return [
                record
                for batch in pool.map(lambda batch: [self._hashed(*item) for item in batch], batches)
                for record in batch
            ]

    def _hashed(
        self, name: str, path: str | Path, where: str, status: os.stat_result, key: bytes, sha256: str | None
    ) -> list:
        if sha256 is None:
            started_ns = time.time_ns()
            sha256, after = sha256_of_regular_file(path, where, name)
            settled = started_ns - status.st_mtime_ns >= RECENT_SECONDS * 10**9
            # without a cache (off, or given up) nothing is kept: memory does not grow with the files
            if settled and _version(after) == _version(status) and self.connection is not None:
                self.new_rows.append((key, _version(status), sha256))  # list.append is atomic under the GIL
            status = after
        return [name, status.st_size, sha256]


def digested_entries(records: Iterable[ImageRecord]) -> Iterator[tuple[ImageRecord, list]]:
    """(record, its fingerprint entry [source path, size, sha256 of its file]) for local records, in their order, hashed
    HASH_BATCH x 16 at a time: a listing streams through in bounded memory. Through the digest cache (FileDigests),
    saved once every record is through."""
    records = iter(records)
    with FileDigests() as digests:
        while batch := list(islice(records, HASH_BATCH * 16)):
            yield from zip(
                batch, digests.records([(record.source_path, record.location, record.location) for record in batch])
            )


def digested(records: Iterable[ImageRecord]) -> Iterator[tuple[ImageRecord, str]]:
    """(record, sha256 of its file) for local records, in their order, streamed (digested_entries)."""
    return ((record, sha256) for record, (_, _, sha256) in digested_entries(records))

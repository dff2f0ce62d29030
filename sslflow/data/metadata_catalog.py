"""Metadata that names files by path, joined with a source's listing on disk: memory bounded by a batch.

An S3 prefix or a folder of 10^6 files with a metadata.csv of 10^6 rows, or a parquet image list of 10^6 rows, would
otherwise be held whole by the plan (the rows, the listed objects, a sort by case). Here the metadata is read ROW_BATCH
rows at a time (a CSV: csv_tables; a parquet list: sslflow/data/sources/parquet_list.py) and each row checked by the
rules of sslflow/data/metadata.py (metadata_rows: path checked, listed once) into a sqlite table on the local disk;
the listing (an S3 prefix's objects; a folder's or a list's files that the rows name, each checked) goes into a second
table; the rows come back in case order (in_case_order's order: case_id, else the path; then the path: sqlite's BINARY
collation is Python's str order) joined with their objects.
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import pandas as pd

from sslflow.data.metadata import ROWS_NAMED, check_path_column, listed_twice, path_row, refuse_rows
from sslflow.data.types import SourceError

CSV_FIRST_ROW = 2  # the number a CSV's messages give its first data row: its line
ROW_BATCH = 10_000  # metadata rows parsed at a time
OBJECT_BATCH = 10_000  # listed objects inserted at a time
ROW_COLUMNS = ("path", "case_id", "site", "label", "where")


class MetadataCatalog:
    """The rows of metadata naming files by path and a listing, in a sqlite file in a temporary folder of its own.

    ``rows``: position (among the valid rows, in file order), number (the row's number in messages: a CSV's line), the
    row's fields and its case key; ``objects``: path and what the listing says of it (a JSON-free tuple: key, size,
    version).

    tables: the metadata a table at a time, in file order (the first may be empty: a header alone, whose columns are
    checked even when no row follows); where: the metadata file, for messages; first_row: the number messages give its
    first data row (CSV_FIRST_ROW for a CSV, 0 for a parquet list)."""

    def __init__(self, tables: Iterable[pd.DataFrame], where: str, *, first_row: int):
        self.where = where
        self._folder = tempfile.TemporaryDirectory(prefix="sslflow-metadata-")
        self.database = sqlite3.connect(Path(self._folder.name) / "catalog.sqlite")
        self.database.execute(
            "CREATE TABLE rows (position INTEGER PRIMARY KEY, number INTEGER NOT NULL, path TEXT NOT NULL, "
            "case_id TEXT, site TEXT NOT NULL, label TEXT, row_where TEXT NOT NULL, case_key TEXT NOT NULL)"
        )
        self.database.execute("CREATE UNIQUE INDEX rows_by_path ON rows (path)")
        self.database.execute(
            "CREATE TABLE objects (path TEXT PRIMARY KEY, key TEXT NOT NULL, size INTEGER NOT NULL, version TEXT NOT "
            "NULL)"
        )
        self._load_rows(tables, first_row)

    @classmethod
    def from_csv(cls, csv_file: Path | BinaryIO, where: str) -> MetadataCatalog:
        """The catalog of a metadata.csv (a path or an open binary file), read ROW_BATCH rows at a time."""
        return cls(csv_tables(csv_file, where), where, first_row=CSV_FIRST_ROW)

    def close(self) -> None:
        self.database.close()
        self._folder.cleanup()

    def _load_rows(self, tables: Iterable[pd.DataFrame], first_row: int) -> None:
        """Every row checked (SourceError naming the first failing rows, and how many fail) into ``rows``."""
        problems, failing, position, number = [], 0, 0, first_row
        for table in tables:
            table = check_path_column(table, self.where)
            for record in table.to_dict("records"):
                try:
                    row = path_row(record, f"{self.where} row {number}, column 'path'")
                    seen = self.database.execute("SELECT number FROM rows WHERE path = ?", (row["path"],)).fetchone()
                    if seen is not None:
                        raise listed_twice(row, seen[0])
                except SourceError as problem:
                    failing += 1
                    problems.extend([problem] if len(problems) < ROWS_NAMED else [])
                else:
                    values = (position, number, *(row[name] for name in ROW_COLUMNS), row["case_id"] or row["path"])
                    self.database.execute("INSERT INTO rows VALUES (?, ?, ?, ?, ?, ?, ?, ?)", values)
                    position += 1
                number += 1
        refuse_rows(problems, self.where, count=failing)

    def add_objects(self, objects: Iterable[tuple[str, str, int, str]]) -> None:
        """Record the listing: (path below the source's root, key or location, size in bytes, version) per object."""
        objects = iter(objects)
        while batch := [item for _, item in zip(range(OBJECT_BATCH), objects)]:
            self.database.executemany("INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?)", batch)

    def missing(self) -> tuple[list[dict], int]:
        """(the first ROWS_NAMED rows naming no listed object, in file order; how many there are)."""
        query = "FROM rows LEFT JOIN objects ON objects.path = rows.path WHERE objects.path IS NULL"
        first = self.database.execute(
            f"SELECT rows.path, rows.row_where {query} ORDER BY rows.position LIMIT ?", (ROWS_NAMED,)
        ).fetchall()
        count = self.database.execute(f"SELECT COUNT(*) {query}").fetchone()[0]
        return [{"path": path, "where": where} for path, where in first], count

    def rows_in_case_order(self) -> Iterator[tuple[int, dict, tuple[str, int, str]]]:
        """(position, row, (key, size, version) of its object) of every row with an object, in case order, streamed."""
        return self._rows_with_objects("rows.case_key, rows.path")

    def rows_in_path_order(self) -> Iterator[tuple[int, dict, tuple[str, int, str]]]:
        """rows_in_case_order's rows in path order (a fingerprint's: sslflow/data/fingerprint.py), streamed."""
        return self._rows_with_objects("rows.path")

    def _rows_with_objects(self, order: str) -> Iterator[tuple[int, dict, tuple[str, int, str]]]:
        query = (
            "SELECT rows.position, rows.path, rows.case_id, rows.site, rows.label, rows.row_where, objects.key, "
            f"objects.size, objects.version FROM rows JOIN objects ON objects.path = rows.path ORDER BY {order}"
        )
        for position, *fields, key, size, version in self.database.execute(query):
            yield position, dict(zip(ROW_COLUMNS, fields)), (key, size, version)

    def rows(self) -> Iterator[dict]:
        """Every row (path, case_id, site, label, where), in file order, streamed."""
        query = "SELECT path, case_id, site, label, row_where FROM rows ORDER BY position"
        for fields in self.database.execute(query):
            yield dict(zip(ROW_COLUMNS, fields))

    def names(self, path: str) -> bool:
        """Whether a row names ``path``."""
        return self.database.execute("SELECT 1 FROM rows WHERE path = ?", (path,)).fetchone() is not None

    def unlisted(self) -> Iterator[str]:
        """Paths of listed objects that no row names, in path order, streamed."""
        query = (
            "SELECT objects.path FROM objects LEFT JOIN rows ON rows.path = objects.path "
            "WHERE rows.path IS NULL ORDER BY objects.path"
        )
        for (path,) in self.database.execute(query):
            yield path


def csv_tables(csv_file: Path | BinaryIO, where: str) -> Iterator[pd.DataFrame]:
    """A metadata.csv as MetadataCatalog reads it: its header (as an empty table), then its rows ROW_BATCH at a time;
    an open file is read from its start again after its header."""
    yield metadata_header(csv_file, where)
    if not isinstance(csv_file, Path):
        csv_file.seek(0)
    yield from csv_batches(csv_file, where, rows=ROW_BATCH)


def metadata_header(csv_file: Path | BinaryIO, where: str) -> pd.DataFrame:
    """The CSV's header as an empty table (its columns); SourceError if it is not CSV. csv_file: a path or an open
    binary file."""
    return next(csv_batches(csv_file, where, rows=0))


def csv_batches(csv_file: Path | BinaryIO, where: str, rows: int) -> Iterator[pd.DataFrame]:
    """The CSV's rows as tables of strings, ``rows`` at a time (0: its header alone, as one empty table); SourceError
    if it is not CSV (as parse_metadata_csv)."""
    settings = dict(dtype=str, keep_default_na=False, skipinitialspace=True, encoding="utf-8")
    try:
        if rows == 0:
            yield pd.read_csv(csv_file, nrows=0, **settings)
        else:
            yield from pd.read_csv(csv_file, chunksize=rows, **settings)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as error:
        raise SourceError(
            f"{where}: not parseable as CSV ({type(error).__name__}: {error}); "
            "save it as UTF-8 CSV text with a header row such as path,case_id,site,label"
        ) from error

"""The rows of a metadata.csv keyed by SOPInstanceUID as the join applies them to the decoded images.

A chunk never reads the file (sslflow/data/instance_metadata.py): its table holds each DICOM image's header case and
site, no label, and its object's UID pseudonym (``instance``). The join streams the file once, a batch at a time,
into a sqlite table of its scratch file, keyed by the 16-byte digest of each UID's pseudonym (``object_digest``), and
looks up the rows of the images of one chunk table or one manifest batch at a time: memory holds a batch of rows and
the images being looked up, never the file. Each row applies to every image (every frame) of its object with the
precedence a chunk used when it read the file itself: the row's label replaces the image's (a row without one leaves
the image unlabelled), its case_id, when given, replaces the case (case_source "metadata"), its site, unless
"default", replaces the site. ``matched`` records the rows an image had, so that the join can refuse the others.
"""

from __future__ import annotations

import itertools
import sqlite3

import pandas as pd

from sslflow.data.instance_metadata import InstanceMetadata, object_digest
from sslflow.data.metadata_catalog import ROW_BATCH
from sslflow.data.pseudonyms import Pseudonyms

ROWS_TABLE = (
    "CREATE TABLE instance_rows (digest BLOB PRIMARY KEY, case_id TEXT, site TEXT NOT NULL, label TEXT, "
    "position INTEGER NOT NULL, matched INTEGER NOT NULL DEFAULT 0)"
)
LOOKUP_BATCH = 500  # digests looked up in one statement (under sqlite's limit of bound parameters)
APPLIED_COLUMNS = ("instance", "label", "case_id", "case_source", "site")  # the chunk-table columns ``apply`` reads


class InstanceRows:
    """The rows of ``metadata`` in table ``instance_rows`` of ``database`` (the join's sqlite file): digest
    (object_digest of the UID's pseudonym under ``pseudonyms``), case_id, site, label, position (0 for the first
    row) and matched (1 once an image of its object was applied with ``mark``)."""

    def __init__(self, database: sqlite3.Connection, metadata: InstanceMetadata, pseudonyms: Pseudonyms):
        self.database, self.metadata = database, metadata
        database.execute(ROWS_TABLE)
        rows = metadata.rows(pseudonyms)
        while batch := list(itertools.islice(rows, ROW_BATCH)):
            database.executemany(
                "INSERT INTO instance_rows (digest, case_id, site, label, position) VALUES (?, ?, ?, ?, ?)", batch
            )

    def _found(self, digests: set[bytes], *, mark: bool) -> dict[bytes, tuple[str | None, str, str | None]]:
        """{digest: (case_id, site, label)} of the rows of ``digests`` that the file has; mark: set their matched."""
        found, wanted = {}, sorted(digests)
        for start in range(0, len(wanted), LOOKUP_BATCH):
            part = wanted[start : start + LOOKUP_BATCH]
            marks = ", ".join("?" * len(part))
            query = f"SELECT digest, case_id, site, label FROM instance_rows WHERE digest IN ({marks})"
            found.update(
                (digest, (case, site, label)) for digest, case, site, label in self.database.execute(query, part)
            )
            if mark:
                self.database.execute(f"UPDATE instance_rows SET matched = 1 WHERE digest IN ({marks})", part)
        return found

    def apply(self, table: pd.DataFrame, *, mark: bool = False) -> pd.DataFrame:
        """``table`` (chunk-table rows with APPLIED_COLUMNS) with the row of each image's object applied (module
        docstring); mark: record the rows applied as matched. Changes ``table`` in place and returns it."""
        digests = [object_digest(instance) if instance else None for instance in table["instance"]]
        found = self._found({digest for digest in digests if digest is not None}, mark=mark)
        if not found:
            return table
        listed = [found.get(digest) for digest in digests]
        table["label"] = pd.array(
            [row[2] if row else label for row, label in zip(listed, table["label"])], dtype="string"
        )
        table["case_source"] = [
            "metadata" if row and row[0] else source for row, source in zip(listed, table["case_source"])
        ]
        table["case_id"] = [row[0] if row and row[0] else case for row, case in zip(listed, table["case_id"])]
        table["site"] = [row[1] if row and row[1] != "default" else site for row, site in zip(listed, table["site"])]
        return table

    def unmatched(self, limit: int) -> tuple[int, list[str]]:
        """(how many rows no image matched, how messages name the first ``limit`` of them: row_where)."""
        (count,) = self.database.execute("SELECT count(*) FROM instance_rows WHERE NOT matched").fetchone()
        first = self.database.execute(
            "SELECT position FROM instance_rows WHERE NOT matched ORDER BY position LIMIT ?", (limit,)
        )
        return count, [self.metadata.row_where(position) for (position,) in first]

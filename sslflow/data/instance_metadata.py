"""A metadata.csv keyed by SOPInstanceUID, read from its file in batches: memory bounded by a batch, not the rows.

Rows (a ``sop_instance_uid`` column, no ``path``; ``case_id``, ``site``, ``label`` as in sslflow/data/metadata.py)
name DICOM objects by their SOPInstanceUID, which only decoding a file reveals. So:

- the plan checks the file once (``check``: every UID given, none twice; a sqlite file on the local disk remembers
  the UIDs seen, as sslflow/data/metadata_catalog.py does the paths) and names it in each chunk document by its
  sha256 (``sha256``: hashed in blocks);
- a chunk, once it has decoded its files, reads the file again a batch at a time and keeps only the rows whose
  UID's pseudonym is one of its images' (``matching``): it holds its own rows, never the file's;
- the join names the rows no chunk matched by position (``row_where``).

The UID identifies a study of a person: messages name the row, never the value, and only the UID's pseudonym
leaves this module.
"""

from __future__ import annotations

import hashlib
import sqlite3
import tempfile
from pathlib import Path

from sslflow.data.metadata import INSTANCE_COLUMN, canonical_label, cell_text
from sslflow.data.metadata_catalog import ROW_BATCH, csv_batches
from sslflow.data.pseudonyms import Pseudonyms
from sslflow.data.types import SourceError

FIRST_ROW = 2  # the CSV line of the first row (after the header)


class InstanceMetadata:
    """The metadata.csv keyed by SOPInstanceUID at ``path`` (a local file); ``where`` names it in messages."""

    def __init__(self, path: Path, where: str):
        self.path, self.where = Path(path), where

    def sha256(self) -> str:
        """sha256 of the file's bytes, read in blocks."""
        with self.path.open("rb") as stream:
            return hashlib.file_digest(stream, "sha256").hexdigest()

    def row_where(self, position: int) -> str:
        """How a message names the row at ``position`` (0 for the first)."""
        return f"{self.where} row {FIRST_ROW + position}, column '{INSTANCE_COLUMN}'"

    def _uids(self):
        """(position, UID) of every row, streamed a batch at a time; SourceError naming a row without a UID."""
        position = 0
        for batch in csv_batches(self.path, self.where, rows=ROW_BATCH):
            batch = batch.rename(columns=lambda column: str(column).strip())
            for record in batch.to_dict("records"):
                uid = cell_text(record[INSTANCE_COLUMN])
                if not uid:
                    raise SourceError(
                        f"{self.row_where(position)}: empty; each row names the SOPInstanceUID (0008,0018) of one "
                        "DICOM file: fill it in or remove the row"
                    )
                yield position, uid, record
                position += 1

    def row_count(self) -> int:
        """The number of rows (SourceError naming a row without a UID)."""
        return sum(1 for _ in self._uids())

    def check(self) -> int:
        """The number of rows; SourceError naming the first row without a UID or with the UID of an earlier row."""
        with tempfile.TemporaryDirectory(prefix="sslflow-instance-metadata-") as folder:
            database = sqlite3.connect(Path(folder) / "uids.sqlite")
            try:
                database.execute("CREATE TABLE uids (uid TEXT PRIMARY KEY, position INTEGER NOT NULL)")
                count = 0
                for position, uid, _ in self._uids():
                    try:
                        database.execute("INSERT INTO uids VALUES (?, ?)", (uid, position))
                    except sqlite3.IntegrityError:
                        (first,) = database.execute("SELECT position FROM uids WHERE uid = ?", (uid,)).fetchone()
                        raise SourceError(
                            f"{self.row_where(position)}: the same SOPInstanceUID as row {FIRST_ROW + first}; list "
                            "each DICOM object once"
                        ) from None
                    count += 1
            finally:
                database.close()
        return count

    def matching(self, pseudonyms: Pseudonyms, wanted: set[str]) -> tuple[dict[str, dict], int]:
        """({UID pseudonym: row (case_id, site, label, where, position)} of the rows whose UID's pseudonym is in
        ``wanted``, the number of rows): the file read a batch at a time, each UID pseudonymised with
        ``pseudonyms``."""
        matched, count = {}, 0
        for position, uid, record in self._uids():
            count += 1
            pseudonym = pseudonyms.pseudonym("instance", uid)
            if pseudonym in wanted:
                matched[pseudonym] = {
                    "case_id": cell_text(record.get("case_id")),
                    "site": cell_text(record.get("site")) or "default",
                    "label": canonical_label(record.get("label")),
                    "where": self.row_where(position),
                    "position": position,
                }
        return matched, count

"""A metadata.csv keyed by SOPInstanceUID, read from its file in batches: memory bounded by a batch (and, in the plan,
the labelled rows' digests), not the rows.

Rows (a ``sop_instance_uid`` column, no ``path``; ``case_id``, ``site``, ``label`` as in sslflow/data/metadata.py)
name DICOM objects by their SOPInstanceUID, which only decoding a file reveals. So:

- the plan checks the file once (``check``: every UID given, none twice; a sqlite file on the local disk remembers
  the UIDs seen, as sslflow/data/metadata_catalog.py does the paths), names it in each chunk document by its sha256
  (``sha256``: hashed in blocks) and puts there the digests of the labelled rows' UID pseudonyms (``check``'s
  result: LABELLED_DIGEST_BYTES each, sorted, as one hex string): the plan holds those, 16 hex characters a
  labelled row, and a batch;
- a chunk never opens the file: an image whose UID pseudonym's digest is among its document's labelled ones
  (``listed_labelled``) counts as labelled when its shards are cut, so labelled cases stay in shards apart;
- the join reads the file once more, a batch at a time, into a sqlite table keyed by the digest of each UID's
  pseudonym (sslflow/data/instance_rows.py), applies each row to the images of its object and names the rows that
  no image matched by position (``row_where``).

The UID identifies a study of a person: messages name the row, never the value, and only the UID's pseudonym (and
digests of it) leaves this module.
"""

from __future__ import annotations

import hashlib
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from sslflow.data.metadata import INSTANCE_COLUMN, canonical_label, cell_text
from sslflow.data.metadata_catalog import ROW_BATCH, csv_batches
from sslflow.data.pseudonyms import Pseudonyms
from sslflow.data.types import SourceError

FIRST_ROW = 2  # the CSV line of the first row (after the header)
FRAME_MARK = "#frame="  # a frame's instance is "<its object's UID pseudonym>#frame=<n>" (sslflow/data/listing.py)
# A labelled row is named in the chunk documents by the first 8 bytes of the BLAKE2b digest of its UID's pseudonym
# (16 hex characters of one string: 16 bytes of JSON a labelled row). An unlabelled image taken for a labelled one
# (and put in a labelled shard) between 10^6 images and 10^5 labelled rows has a chance of about
# 10^6 x 10^5 / 2^64, 5 x 10^-9. A Bloom filter of 10 bits a row would put ~1% of the unlabelled images in labelled
# shards, 10^4 of 10^6, which every fine-tuning pod would then download.
LABELLED_DIGEST_BYTES = 8


def object_digest(instance: str) -> bytes:
    """The 16-byte BLAKE2b digest of a DICOM object's SOPInstanceUID pseudonym, from an image's ``instance`` (a
    frame's "<pseudonym>#frame=<n>" gives its object's); the first LABELLED_DIGEST_BYTES name a labelled row."""
    return hashlib.blake2b(instance.split(FRAME_MARK)[0].encode(), digest_size=16).digest()


def _numbers(digests: bytes) -> np.ndarray:
    """(N,) uint64 (native byte order): LABELLED_DIGEST_BYTES-byte digests one after another, each read big-endian (so
    their order is that of their hex)."""
    return np.frombuffer(digests, dtype=">u8").astype(np.uint64)


def listed_labelled(instances: list[str], labelled: str) -> np.ndarray:
    """(N,) bool: the object of each image (``instances``: its UID pseudonym, "" for none) has a labelled row;
    ``labelled``: InstanceMetadata.check's result (LABELLED_DIGEST_BYTES-byte digests, as hex)."""
    listed = _numbers(bytes.fromhex(labelled))
    digests = b"".join(
        object_digest(instance)[:LABELLED_DIGEST_BYTES] if instance else bytes(LABELLED_DIGEST_BYTES)
        for instance in instances
    )
    named = np.array([bool(instance) for instance in instances], dtype=bool)
    return named & np.isin(_numbers(digests), listed)


class InstanceMetadata:
    """The metadata.csv keyed by SOPInstanceUID at ``path`` (a local file); ``where`` names it in messages. owner: what
    keeps the file (a source that downloaded it into a temporary folder it removes when it is let go), held as long
    as this is."""

    def __init__(self, path: Path, where: str, *, owner: object = None):
        self.path, self.where, self.owner = Path(path), where, owner

    def sha256(self) -> str:
        """sha256 of the file's bytes, read in blocks."""
        with self.path.open("rb") as stream:
            return hashlib.file_digest(stream, "sha256").hexdigest()

    def row_where(self, position: int) -> str:
        """How a message names the row at ``position`` (0 for the first)."""
        return f"{self.where} row {FIRST_ROW + position}, column '{INSTANCE_COLUMN}'"

    def _uids(self) -> Iterator[tuple[int, str, dict]]:
        """(position, UID, row) of every row, streamed a batch at a time; SourceError naming a row without a UID."""
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

    def check(self, pseudonyms: Pseudonyms) -> str:
        """The digests of the labelled rows' UID pseudonyms (``pseudonyms``): the first LABELLED_DIGEST_BYTES of
        each object_digest, sorted, as one hex string (the only thing held beyond a batch: 8 bytes a labelled row,
        then 16 hex characters); SourceError
        naming the first row without a UID or with the UID of an earlier row."""
        labelled = bytearray()
        with tempfile.TemporaryDirectory(prefix="sslflow-instance-metadata-") as folder:
            database = sqlite3.connect(Path(folder) / "uids.sqlite")
            try:
                database.execute("CREATE TABLE uids (uid TEXT PRIMARY KEY, position INTEGER NOT NULL)")
                for position, uid, record in self._uids():
                    try:
                        database.execute("INSERT INTO uids VALUES (?, ?)", (uid, position))
                    except sqlite3.IntegrityError:
                        (first,) = database.execute("SELECT position FROM uids WHERE uid = ?", (uid,)).fetchone()
                        raise SourceError(
                            f"{self.row_where(position)}: the same SOPInstanceUID as row {FIRST_ROW + first}; list "
                            "each DICOM object once"
                        ) from None
                    if canonical_label(record.get("label")) is not None:
                        labelled += object_digest(pseudonyms.pseudonym("instance", uid))[:LABELLED_DIGEST_BYTES]
            finally:
                database.close()
        return np.sort(_numbers(bytes(labelled))).astype(">u8").tobytes().hex()

    def rows(self, pseudonyms: Pseudonyms) -> Iterator[tuple[bytes, str | None, str, str | None, int]]:
        """(object_digest of the UID's pseudonym, case_id, site ("default" when blank), label, position) of every
        row, streamed a batch at a time, each UID pseudonymised with ``pseudonyms``."""
        for position, uid, record in self._uids():
            yield (
                object_digest(pseudonyms.pseudonym("instance", uid)),
                cell_text(record.get("case_id")),
                cell_text(record.get("site")) or "default",
                canonical_label(record.get("label")),
                position,
            )

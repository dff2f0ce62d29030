"""The dataset manifest of many chunk tables, streamed: finish_manifest's decisions over every chunk of an ingest
(sslflow/data/chunks.py) without holding the joined table, nor anything per image, in memory.

finish_manifest (sslflow/data/manifest.py) deduplicates, subsamples, names cases and draws splits on one table in
memory: about 2 KB an image as pandas objects, which a join of 10^6 images cannot hold. Here:

1. ``image_facts`` reads each chunk table in turn into a sqlite file on the local disk (``JoinFacts``: per image, its
   chunk and row, the first 16 bytes of its sha256, a 16-byte BLAKE2b digest of its SOPInstanceUID pseudonym,
   lossless, a label code, whether it has a case), numbered in listing order by sqlite's sort; metadata keyed by
   SOPInstanceUID is streamed into the same file first (sslflow/data/instance_rows.py) and its rows applied to
   each chunk table's rows as they are read (and again to each batch ``write_manifest`` takes);
2. ``kept_rows`` makes the decisions of finish_manifest in SQL (one_per_instance, deduplicate: window functions
   over the facts), with the same rows kept in the same order, and the same refusal of identical images with
   different labels; the max_images draw takes the kept images' numbers (8 bytes each) for numpy's draw;
3. ``write_manifest`` writes the kept rows to manifest.parquet in listing order, BATCH_ROWS at a time as sqlite
   returns them, each batch taken from the chunk tables it needs (read again, the last TABLES_KEPT of them kept),
   naming cases and drawing splits as finish_manifest does; the summary's counts are summed as the batches pass.

Memory: sqlite's page cache (CACHE_KIB) and sorter, one batch and TABLES_KEPT chunk tables, whatever the number of
images (and, with max_images, 8 bytes per kept image for the draw). Disk: about 100 bytes per image in the
temporary folder (a pod's ephemeral storage), removed when the join ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import sqlite3
import tempfile
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from sslflow.config import IngestConfig
from sslflow.data.dicom_identity import deidentification
from sslflow.data.instance_metadata import InstanceMetadata
from sslflow.data.instance_rows import APPLIED_COLUMNS, InstanceRows
from sslflow.data.leakage import case_id_sources, leakage_warnings
from sslflow.data.manifest import MANIFEST_COLUMNS, refuse_label_conflicts, with_cases_and_splits
from sslflow.data.pseudonyms import Pseudonyms

BATCH_ROWS = 8192  # manifest rows written at a time
TABLES_KEPT = 2  # chunk tables held while the manifest is written (the batches of a listing order the chunks share)
FACT_COLUMNS = ("listing_position", "sha256", "instance", "lossless", "label", "case_id", "shard")
DUPLICATE_EXAMPLES = 20
CACHE_KIB = 1024  # sqlite's page cache for the facts (its sorter spills to temporary files beyond it)
LISTED_TABLE = (
    "CREATE TABLE listed (position INTEGER NOT NULL, chunk INTEGER NOT NULL, row INTEGER NOT NULL, sha256 BLOB NOT "
    "NULL, instance BLOB, lossless INTEGER NOT NULL, label INTEGER NOT NULL, has_case INTEGER NOT NULL)"
)
FACTS_TABLE = (
    "CREATE TABLE facts (image INTEGER PRIMARY KEY, chunk INTEGER NOT NULL, row INTEGER NOT NULL, sha256 BLOB NOT "
    "NULL, instance BLOB, lossless INTEGER NOT NULL, label INTEGER NOT NULL, has_case INTEGER NOT NULL)"
)
# a scratch file: no journal, no sync; sorts spill to temporary files once the page cache is full
PRAGMAS = ("journal_mode = OFF", "synchronous = OFF", f"cache_size = -{CACHE_KIB}", "temp_store = FILE")


@dataclasses.dataclass
class JoinFacts:
    """The facts of every image of the chunk tables, in a sqlite file (``database``). Table ``facts``: image (1, 2,
    ...: listing order, stable: the frames of an object keep theirs), chunk and row (where its row is), sha256 (16
    bytes: the first 128 bits of the decoded pixels' sha256, which tell images apart as surely as all 256), instance
    (16 bytes: BLAKE2b of its SOPInstanceUID pseudonym, NULL for none), lossless, label (a code: -1 for none),
    has_case (label and has_case with the metadata rows keyed by SOPInstanceUID applied). shards: every shard a chunk
    table names. images_per_chunk: rows of each chunk table. instance_rows: those metadata rows (table
    ``instance_rows`` of the same file), None without."""

    database: sqlite3.Connection
    shards: dict[int, list[str]]
    images_per_chunk: list[int]
    instance_rows: InstanceRows | None = None

    def applied(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Chunk-table rows with the metadata rows keyed by SOPInstanceUID of their objects applied (InstanceRows)."""
        return rows if self.instance_rows is None else self.instance_rows.apply(rows)

    @property
    def images(self) -> int:
        return sum(self.images_per_chunk)

    def located(self, images: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(chunk, row) of each of ``images`` (numbers in ``facts``), (len(images),) int64 arrays."""
        found = [
            self.database.execute("SELECT chunk, row FROM facts WHERE image = ?", (image,)).fetchone()
            for image in images
        ]
        located = np.array(found, dtype=np.int64).reshape(-1, 2)
        return located[:, 0], located[:, 1]


@contextlib.contextmanager
def image_facts(
    table_files: list[Path], metadata: InstanceMetadata | None = None, pseudonyms: Pseudonyms | None = None
) -> Iterator[JoinFacts]:
    """The JoinFacts of the chunk tables at ``table_files`` (chunk.parquet each), read one at a time into a sqlite
    file in a temporary folder of its own (removed on exit), then numbered in listing order. metadata: the source's
    metadata keyed by SOPInstanceUID (its UIDs pseudonymised with ``pseudonyms``), applied to every image and its
    rows marked as matched (InstanceRows)."""
    with tempfile.TemporaryDirectory(prefix="sslflow-join-") as folder:
        database = sqlite3.connect(Path(folder) / "facts.sqlite")
        try:
            for pragma in PRAGMAS:
                database.execute(f"PRAGMA {pragma}")
            database.execute(LISTED_TABLE)
            rows = InstanceRows(database, metadata, pseudonyms or Pseudonyms()) if metadata is not None else None
            columns = list(dict.fromkeys(FACT_COLUMNS + APPLIED_COLUMNS)) if rows is not None else list(FACT_COLUMNS)
            codes: dict[str, int] = {}
            shards, counts = {}, []
            for index, path in enumerate(table_files):
                table = read_chunk_table(path, columns).to_pandas()
                if rows is not None:
                    rows.apply(table, mark=True)
                shards[index] = sorted(table["shard"].unique())
                counts.append(len(table))
                database.executemany(
                    "INSERT INTO listed VALUES (?, ?, ?, ?, ?, ?, ?, ?)", _facts_of(table, index, codes)
                )
                del table
            database.execute(FACTS_TABLE)
            database.execute(
                "INSERT INTO facts (chunk, row, sha256, instance, lossless, label, has_case) SELECT chunk, row, "
                "sha256, instance, lossless, label, has_case FROM listed ORDER BY position, chunk, row"
            )
            database.execute("DROP TABLE listed")
            yield JoinFacts(database, shards=shards, images_per_chunk=counts, instance_rows=rows)
        finally:
            database.close()


def _facts_of(table: pd.DataFrame, chunk: int, codes: dict[str, int]) -> Iterator[tuple]:
    """The ``listed`` rows of one chunk table's rows (chunk number ``chunk``); ``codes`` (label -> code) grows with
    the labels met."""
    for row, (position, digest, instance, lossless, label, case) in enumerate(
        zip(*(table[name] for name in FACT_COLUMNS[:6]))
    ):
        yield (
            int(position),
            chunk,
            row,
            bytes.fromhex(digest[:32]),
            hashlib.blake2b(instance.encode(), digest_size=16).digest() if instance else None,
            bool(lossless),
            -1 if pd.isna(label) else codes.setdefault(str(label), len(codes)),
            case is not None and not pd.isna(case),
        )


def read_chunk_table(path: Path, columns: list[str] | None = None) -> pa.Table:
    """A chunk table (or its ``columns``) read in this thread, without pre-buffering: read through pyarrow's thread
    pools, every table read left about 2 MiB resident after it was freed, which grows with the chunks the join reads
    (23 tables of 13,000 rows: +35 MiB; one thread: +2 MiB)."""
    return pq.read_table(path, columns=columns, use_threads=False, pre_buffer=False, use_pandas_metadata=True)


@contextlib.contextmanager
def returning_memory_pool() -> Iterator[None]:
    """pyarrow allocates from jemalloc, which returns freed pages at once (decay 0), while this runs (from the C
    library's allocator where pyarrow is built without jemalloc), then from the pool it used before. The join reads
    its chunk tables one after another: reading 20 of them (TABLES_KEPT held) grew the resident set by 18 MiB with
    the C library's allocator, 90 MiB with pyarrow's default pool (mimalloc), and not at all with jemalloc."""
    previous = pa.default_memory_pool()
    try:
        pool = pa.jemalloc_memory_pool()
        pa.jemalloc_set_decay_ms(0)
    except NotImplementedError:  # a pyarrow built without jemalloc
        pool = pa.system_memory_pool()
    pa.set_memory_pool(pool)
    try:
        yield
    finally:
        pa.set_memory_pool(previous)


# one_per_instance: per SOPInstanceUID, the first lossless copy, else the first labelled one, else the first; every
# image without one
CANDIDATES = """
CREATE TABLE candidates AS
SELECT image, sha256, label FROM facts WHERE instance IS NULL
UNION ALL
SELECT image, sha256, label FROM (
    SELECT image, sha256, label,
        row_number() OVER (PARTITION BY instance ORDER BY lossless DESC, label < 0, image) AS place
    FROM facts WHERE instance IS NOT NULL
) WHERE place = 1
"""
# deduplicate: per image content, its first labelled copy (else its first) heads the copies; a labelled copy with
# another label than the head's clashes (ordered by the copies' first image, then its own). The candidates carry
# what it reads: no lookup into ``facts`` in an order other than its own, which would read a page per image.
COPIES = """
CREATE TABLE copies AS
SELECT image, label, place, first_value(label) OVER content AS head_label, first_value(image) OVER content AS head,
    min(image) OVER (PARTITION BY sha256) AS first_seen
FROM (SELECT image, sha256, label, row_number() OVER content AS place FROM candidates
      WINDOW content AS (PARTITION BY sha256 ORDER BY label < 0, image))
WINDOW content AS (PARTITION BY sha256 ORDER BY place)
"""


def kept_rows(facts: JoinFacts, config: IngestConfig, values: Callable) -> dict:
    """finish_manifest's images kept (table ``kept`` of the facts' database: image numbers) and its summary counts of
    dropped images; ``values(images, column)``: a chunk-table column's values of ``images`` (to name images in
    messages). SourceError naming identical images with different labels (as manifest.deduplicate)."""
    database = facts.database
    database.execute(CANDIDATES)
    database.execute(COPIES)
    clashes = database.execute(
        "SELECT head, image FROM copies WHERE label >= 0 AND label != head_label ORDER BY first_seen, image"
    ).fetchall()
    if clashes:
        images = [head for head, _ in clashes] + [image for _, image in clashes]
        keys, labels = values(images, "image_key"), values(images, "label")
        count = len(clashes)
        refuse_label_conflicts(
            [
                f"{keys[i]} (label {labels[i]!r}) and {keys[count + i]} (label {labels[count + i]!r})"
                for i in range(count)
            ]
        )
    database.execute("CREATE TABLE kept (image INTEGER PRIMARY KEY)")
    database.execute("INSERT INTO kept SELECT image FROM copies WHERE place = 1 ORDER BY image")
    kept = database.execute("SELECT count(*) FROM kept").fetchone()[0]
    if config.max_images and kept > config.max_images:
        _draw(database, config)
    (candidates,) = database.execute("SELECT count(*) FROM candidates").fetchone()
    examples = database.execute(
        "SELECT image FROM copies WHERE place > 1 ORDER BY image LIMIT ?", (DUPLICATE_EXAMPLES,)
    )
    return {
        "duplicates_dropped": candidates - kept,
        "duplicate_examples": values([image for (image,) in examples.fetchall()], "image_key"),
        "instance_copies_dropped": facts.images - candidates,
    }


def _draw(database: sqlite3.Connection, config: IngestConfig) -> None:
    """Keep config.max_images of the ``kept`` images, drawn as finish_manifest draws them (numpy's choice with
    config.seed over the kept images in listing order): 8 bytes per kept image while it draws."""
    kept = np.fromiter((image for (image,) in database.execute("SELECT image FROM kept ORDER BY image")), np.int64)
    drawn = np.sort(np.random.default_rng(config.seed).choice(kept, config.max_images, replace=False))
    del kept
    database.execute("DELETE FROM kept")
    database.executemany("INSERT INTO kept VALUES (?)", ((int(image),) for image in drawn))


class ChunkTables:
    """The chunk tables (chunk.parquet files), read when a row of one is needed, the last TABLES_KEPT kept as arrow
    tables: only the rows taken become pandas rows, so a batch costs the same whatever the size of the chunks it
    comes from."""

    def __init__(self, files: list[Path]):
        self.files = files
        self._kept: OrderedDict[int, pa.Table] = OrderedDict()

    def _table(self, index: int) -> pa.Table:
        if index not in self._kept:
            self._kept[index] = read_chunk_table(self.files[index])
            while len(self._kept) > TABLES_KEPT:
                self._kept.popitem(last=False)
        self._kept.move_to_end(index)
        return self._kept[index]

    def rows(self, chunks: np.ndarray, within: np.ndarray) -> pd.DataFrame:
        """The rows ``within`` (their numbers in their chunk tables) of the chunk tables ``chunks``, in that order."""
        pieces, places = [], []
        for chunk in dict.fromkeys(chunks.tolist()):  # each chunk once, in the order the rows first need it
            where = np.flatnonzero(chunks == chunk)
            pieces.append(self._table(chunk).take(within[where]).to_pandas(use_threads=False))
            places.append(where)
        joined = pd.concat(pieces, ignore_index=True)
        return joined.iloc[np.argsort(np.concatenate(places), kind="stable")].reset_index(drop=True)

    def values(self, facts: JoinFacts, images: list[int], column: str) -> list:
        """A column's values (None for a missing one) of the images ``images`` (numbers in ``facts``)."""
        if not images:
            return []
        return [None if pd.isna(value) else value for value in facts.applied(self.rows(*facts.located(images)))[column]]


def _finished(batch: pd.DataFrame, has_cases: bool, config: IngestConfig) -> pd.DataFrame:
    """Chunk-table rows as manifest rows (MANIFEST_COLUMNS): finish_manifest's case names for the images without
    a case (``has_cases``: whether any kept image has one) and its splits (with_cases_and_splits)."""
    return with_cases_and_splits(batch, has_cases, config)[list(MANIFEST_COLUMNS)]


@dataclasses.dataclass
class ManifestCounts:
    """What finish_manifest's summary says of the manifest, summed over its batches."""

    images: int = 0
    case_digests: list[np.ndarray] = dataclasses.field(default_factory=list)
    proxy: bool = False
    case_sources: Counter = dataclasses.field(default_factory=Counter)
    splits: Counter = dataclasses.field(default_factory=Counter)
    labelled: int = 0
    sites: Counter = dataclasses.field(default_factory=Counter)
    modalities: Counter = dataclasses.field(default_factory=Counter)
    shards: set[str] = dataclasses.field(default_factory=set)

    def add(self, batch: pd.DataFrame, case_sources: pd.Series) -> None:
        self.images += len(batch)
        self.case_digests.append(
            np.unique(
                np.array([hashlib.blake2b(case.encode(), digest_size=16).digest() for case in batch["case_id"]], "S16")
            )
        )
        self.proxy = self.proxy or bool(batch["case_id_is_proxy"].any())
        self.case_sources.update(case_sources.tolist())
        self.splits.update(batch["split"].tolist())
        self.labelled += int(batch["label"].notna().sum())
        self.sites.update(str(site) for site in batch["site"])
        self.modalities.update(str(modality) for modality in batch["modality"].dropna())
        self.shards.update(batch["shard"].unique())

    def summary(self, config: IngestConfig) -> dict:
        """finish_manifest's summary keys that describe the manifest."""
        sources = case_id_sources(self.case_sources)
        cases = np.unique(np.concatenate(self.case_digests)) if self.case_digests else []
        return {
            "images": self.images,
            "cases": len(cases),
            "case_ids_are_proxy": self.proxy,
            "case_ids": sources,
            "warnings": leakage_warnings(sources, self.images),
            "split_counts": dict(self.splits.most_common()),
            "labelled": self.labelled,
            "sites": dict(sorted(self.sites.items())),
            "modalities": dict(sorted(self.modalities.items())),
            "deidentification": {
                "image_keys": "file- + HMAC-SHA256(project key, path in the source); no path is kept",
                "dicom": deidentification(config) if self.modalities else None,
            },
        }


def write_manifest(facts: JoinFacts, config: IngestConfig, tables: ChunkTables, path: Path) -> ManifestCounts:
    """Write the images ``kept`` (kept_rows' table in ``facts``) as the manifest (MANIFEST_COLUMNS) at ``path``, in
    listing order, BATCH_ROWS rows at a time; returns their counts."""
    (has_cases,) = facts.database.execute(
        "SELECT EXISTS (SELECT 1 FROM kept JOIN facts USING (image) WHERE has_case)"
    ).fetchone()
    located = facts.database.execute("SELECT chunk, row FROM kept JOIN facts USING (image) ORDER BY image")
    counts, writer = ManifestCounts(), None
    try:
        while batch := located.fetchmany(BATCH_ROWS):
            where = np.array(batch, dtype=np.int64)
            rows = facts.applied(tables.rows(where[:, 0], where[:, 1]))
            finished = _finished(rows, bool(has_cases), config)
            counts.add(finished, rows["case_source"])
            arrow = pa.Table.from_pandas(
                finished, schema=None if writer is None else writer.schema, preserve_index=False, nthreads=1
            )
            writer = writer or pq.ParquetWriter(path, arrow.schema)
            writer.write_table(arrow)
    finally:
        if writer is not None:
            writer.close()
    return counts

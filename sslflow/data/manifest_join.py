"""The dataset manifest of many chunk tables, streamed: finish_manifest's decisions over every chunk of an ingest
(sslflow/data/chunks.py) without holding the joined table.

finish_manifest (sslflow/data/manifest.py) deduplicates, subsamples, names cases and draws splits on one table in
memory: about 2 KB an image as pandas objects, which a join of 10^6 images cannot hold. Here:

1. ``image_facts`` reads each chunk table in turn and keeps, per image, the few fixed-size numbers the decisions
   need (``ImageFacts``: chunk and row, the first 16 bytes of its sha256, a 16-byte BLAKE2b digest of its
   SOPInstanceUID pseudonym, lossless, a label code, whether it has a case): about 45 bytes an image (and its
   listing position while they are put in order);
2. ``kept_rows`` makes the decisions of finish_manifest on those arrays (one_per_instance, deduplicate, the
   max_images draw), with the same rows kept in the same order, and the same refusal of identical images with
   different labels;
3. ``write_manifest`` writes the kept rows to manifest.parquet in listing order, BATCH_ROWS at a time, each batch
   taken from the chunk tables it needs (read again, the last TABLES_KEPT of them kept), naming cases and drawing
   splits as finish_manifest does; the summary's counts are summed as the batches pass.

Memory: the facts, one batch and TABLES_KEPT chunk tables, whatever the number of images.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from sslflow.config import IngestConfig
from sslflow.data.dicom_identity import deidentification
from sslflow.data.leakage import case_id_sources, leakage_warnings
from sslflow.data.manifest import MANIFEST_COLUMNS, refuse_label_conflicts, with_cases_and_splits

BATCH_ROWS = 8192  # manifest rows written at a time
TABLES_KEPT = 2  # chunk tables held while the manifest is written (the batches of a listing order the chunks share)
FACT_COLUMNS = ("listing_position", "sha256", "instance", "lossless", "label", "case_id", "shard")
DUPLICATE_EXAMPLES = 20


@dataclasses.dataclass(frozen=True)
class ImageFacts:
    """Per image of every chunk table, in listing order (stable: the frames of an object keep theirs), (N,) arrays:
    chunk and row (where its row is), sha256 (S16: the first 128 bits of the decoded pixels' sha256, which tell
    images apart as surely as all 256), instance (S16: BLAKE2b of its
    SOPInstanceUID pseudonym, b"" for none), lossless, label (a code: -1 for none), has_case. labels: code -> label.
    shards: every shard a chunk table names. images_per_chunk: rows of each chunk table."""

    chunk: np.ndarray
    row: np.ndarray
    sha256: np.ndarray
    instance: np.ndarray
    lossless: np.ndarray
    label: np.ndarray
    has_case: np.ndarray
    labels: list[str]
    shards: dict[int, list[str]]
    images_per_chunk: list[int]


def image_facts(table_files: list[Path]) -> ImageFacts:
    """The ImageFacts of the chunk tables at ``table_files`` (chunk.parquet each), read one at a time into arrays
    allocated once (their lengths from the files' footers), then put in listing order a column at a time."""
    codes: dict[str, int] = {}
    counts = [pq.ParquetFile(path).metadata.num_rows for path in table_files]
    columns = {name: np.empty(sum(counts), dtype) for name, dtype in FACT_DTYPES.items()}
    shards, start = {}, 0
    for index, path in enumerate(table_files):
        table = pd.read_parquet(path, columns=list(FACT_COLUMNS))
        stop = start + len(table)
        shards[index] = sorted(table["shard"].unique())
        columns["position"][start:stop] = table["listing_position"].to_numpy(dtype=np.int64)
        columns["chunk"][start:stop] = index
        columns["row"][start:stop] = np.arange(len(table))
        for name, values in _facts_of(table, codes).items():
            columns[name][start:stop] = values
        start = stop
        del table
    order = np.argsort(columns.pop("position"), kind="stable")
    for name in list(columns):  # one column at a time: the facts are held once, and one column twice
        columns[name] = columns.pop(name)[order]
    return ImageFacts(**columns, labels=list(codes), shards=shards, images_per_chunk=counts)


FACT_DTYPES = {
    "position": np.int64,
    "chunk": np.int32,
    "row": np.int32,
    "sha256": "S16",
    "instance": "S16",
    "lossless": bool,
    "label": np.int32,
    "has_case": bool,
}
FACT_NAMES = ("sha256", "instance", "lossless", "label", "has_case")


def _facts_of(table: pd.DataFrame, codes: dict[str, int]) -> dict[str, np.ndarray]:
    """FACT_NAMES of one chunk table's rows; ``codes`` (label -> code) grows with the labels met."""
    labels = [None if pd.isna(label) else str(label) for label in table["label"]]
    return {
        "sha256": np.array([bytes.fromhex(digest[:32]) for digest in table["sha256"]], dtype="S16"),
        "instance": np.array(
            [
                hashlib.blake2b(instance.encode(), digest_size=16).digest() if instance else b""
                for instance in table["instance"]
            ],
            dtype="S16",
        ),
        "lossless": table["lossless"].to_numpy(dtype=bool),
        "label": np.array([-1 if label is None else codes.setdefault(label, len(codes)) for label in labels], np.int32),
        "has_case": np.array([case is not None and not pd.isna(case) for case in table["case_id"]], dtype=bool),
    }


@contextlib.contextmanager
def system_memory_pool() -> Iterator[None]:
    """pyarrow allocates from the C library's allocator while this runs, then from the pool it used before.
    pyarrow's default pool (mimalloc on Linux) keeps pages of freed buffers: a join that reads its chunk tables one
    after another peaked 61 MiB higher at 22 chunks than at 2 with it, 21 MiB with the system allocator."""
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        yield
    finally:
        pa.set_memory_pool(previous)


def located(facts: ImageFacts) -> ImageFacts:
    """``facts`` with only what write_manifest reads (chunk, row, has_case): the rest is freed before the manifest is
    written."""
    empty = np.zeros(0)
    return dataclasses.replace(facts, sha256=empty, instance=empty, lossless=empty, label=empty)


def _first_of_groups(sorted_keys: np.ndarray) -> np.ndarray:
    """(N,) bool: the element starts a run of equal keys in ``sorted_keys``."""
    return np.r_[True, sorted_keys[1:] != sorted_keys[:-1]] if len(sorted_keys) else np.zeros(0, dtype=bool)


def one_per_instance(facts: ImageFacts) -> np.ndarray:
    """manifest.one_per_instance on the facts: the rows kept (ascending), one per SOPInstanceUID (the first lossless
    copy, else the first labelled one, else the first) and every row without one."""
    rows = np.arange(len(facts.instance))
    with_instance = facts.instance != b""
    candidates = rows[with_instance]
    order = np.lexsort(
        (candidates, facts.label[candidates] < 0, ~facts.lossless[candidates], facts.instance[candidates])
    )
    best = candidates[order][_first_of_groups(facts.instance[candidates][order])]
    return np.sort(np.concatenate([rows[~with_instance], best]))


def deduplicate(facts: ImageFacts, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """manifest.deduplicate on the facts of ``rows`` (ascending): (rows kept, ascending; rows dropped, ascending;
    (first labelled row, row) of each pair of identical images with different labels, in deduplicate's order)."""
    positions = np.arange(len(rows))
    digests, labels = facts.sha256[rows], facts.label[rows]
    order = np.lexsort((positions, labels < 0, digests))  # by image, its labelled rows first, each in listing order
    starts = _first_of_groups(digests[order])
    group = np.cumsum(starts) - 1
    head = order[starts]  # per image: its first labelled row, else its first
    sorted_labels = labels[order]
    clash = (sorted_labels >= 0) & (sorted_labels != labels[head][group])
    group_first_seen = np.minimum.reduceat(positions[order], np.flatnonzero(starts)) if len(order) else positions
    pairs = sorted(
        zip(group_first_seen[group[clash]], positions[order][clash], head[group[clash]]), key=lambda item: item[:2]
    )
    kept = np.zeros(len(rows), dtype=bool)
    kept[head] = True
    return rows[kept], rows[~kept], [(int(rows[first]), int(rows[other])) for _, other, first in pairs]


def kept_rows(facts: ImageFacts, config: IngestConfig, values: Callable) -> tuple[np.ndarray, dict]:
    """finish_manifest's rows kept (indices into ``facts``, ascending) and its summary counts of dropped images;
    ``values(rows, column)``: a chunk-table column's values at ``rows`` (to name images in messages). SourceError
    naming identical images with different labels (as manifest.deduplicate)."""
    instances = one_per_instance(facts)
    keep, dropped, clashes = deduplicate(facts, instances)
    if clashes:
        firsts, others = [first for first, _ in clashes], [other for _, other in clashes]
        keys, labels = values(firsts + others, "image_key"), values(firsts + others, "label")
        count = len(clashes)
        refuse_label_conflicts(
            [
                f"{keys[i]} (label {labels[i]!r}) and {keys[count + i]} (label {labels[count + i]!r})"
                for i in range(count)
            ]
        )
    if config.max_images and len(keep) > config.max_images:
        keep = np.sort(np.random.default_rng(config.seed).choice(keep, config.max_images, replace=False))
    return keep, {
        "duplicates_dropped": len(dropped),
        "duplicate_examples": values(dropped[:DUPLICATE_EXAMPLES].tolist(), "image_key"),
        "instance_copies_dropped": len(facts.instance) - len(instances),
    }


class ChunkTables:
    """The chunk tables (chunk.parquet files), read when a row of one is needed, the last TABLES_KEPT kept."""

    def __init__(self, files: list[Path]):
        self.files = files
        self._kept: OrderedDict[int, pd.DataFrame] = OrderedDict()

    def _table(self, index: int) -> pd.DataFrame:
        if index not in self._kept:
            self._kept[index] = pd.read_parquet(self.files[index])
            while len(self._kept) > TABLES_KEPT:
                self._kept.popitem(last=False)
        self._kept.move_to_end(index)
        return self._kept[index]

    def rows(self, facts: ImageFacts, rows: np.ndarray) -> pd.DataFrame:
        """The chunk-table rows of the images ``rows`` (indices into ``facts``), in that order."""
        chunks, within = facts.chunk[rows], facts.row[rows]
        pieces, places = [], []
        for chunk in dict.fromkeys(chunks.tolist()):  # each chunk once, in the order the rows first need it
            where = np.flatnonzero(chunks == chunk)
            pieces.append(self._table(chunk).iloc[within[where]])
            places.append(where)
        joined = pd.concat(pieces, ignore_index=True)
        return joined.iloc[np.argsort(np.concatenate(places), kind="stable")].reset_index(drop=True)

    def values(self, facts: ImageFacts, rows: list[int], column: str) -> list:
        """A column's values (None for a missing one) at the images ``rows`` (indices into ``facts``)."""
        if not rows:
            return []
        return [None if pd.isna(value) else value for value in self.rows(facts, np.asarray(rows))[column]]


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


def write_manifest(
    facts: ImageFacts, keep: np.ndarray, config: IngestConfig, tables: ChunkTables, path: Path
) -> ManifestCounts:
    """Write the images ``keep`` (indices into ``facts``, ascending: listing order) as the manifest (MANIFEST_COLUMNS)
    at ``path``, BATCH_ROWS rows at a time; returns their counts."""
    has_cases = bool(facts.has_case[keep].any())
    counts, writer = ManifestCounts(), None
    try:
        for start in range(0, len(keep), BATCH_ROWS):
            rows = tables.rows(facts, keep[start : start + BATCH_ROWS])
            batch = _finished(rows, has_cases, config)
            counts.add(batch, rows["case_source"])
            arrow = pa.Table.from_pandas(batch, schema=None if writer is None else writer.schema, preserve_index=False)
            writer = writer or pq.ParquetWriter(path, arrow.schema)
            writer.write_table(arrow)
    finally:
        if writer is not None:
            writer.close()
    return counts

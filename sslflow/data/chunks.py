"""Ingest in chunks: list a source (no decoding), cut the listing into chunks, decode each chunk into shards,
join the chunks' tables into one dataset. The Flyte ingest workflow (workflows/ingest.py) runs the
decoding as a map task; ``ingest_source`` runs the same three steps in one process (or a process pool).

- **Chunks that stay put.** A chunk is a JSON document: the decode settings and its files, each with its content sha256
  (S3: key, ETag and size). The plan writes each to a file (plan_to_files) and the Flyte plan returns references to
  them, with the document's sha256 as Flyte's cache hash: a chunk whose files are unchanged is a cache hit, and the
  plan's literal grows with the number of chunks, not files. Records are ordered by case (the file path when there is
  none) and a chunk ends before a case whose key hashes to 0 modulo ``IngestConfig.chunk_images`` (content-defined
  boundaries), so adding files changes only the chunks they fall into; it also ends before a case that would take its
  files over ``IngestConfig.chunk_megabytes`` (sizes from the listing) or its images over MAX_CHUNK_FACTOR x
  chunk_images (a multi-frame object is one file of many images: the plan reads the header of each file of
  FRAME_PROBE_BYTES or more without an image suffix, DICOM by suffix or not, for its NumberOfFrames).
  The images of one case are in one chunk, and so in one shard. Built-in sources (in-memory arrays) are cut by index
  ranges. ``plan_to_files`` writes each chunk to a file as it is cut and lists the largest chunks first: the map task
  and the process pool start them in that order.
- **Bounded memory, tables only.** ``plan_chunks`` cuts while the source (sslflow/data/sources/: ``open_source``)
  streams its records in case order, so it holds one chunk, not the listing (a metadata table or a parquet image list
  is sorted by case first, through a sqlite file on disk: sslflow/data/metadata_catalog.py); a chunk task holds at
  most about the chunk document's ``batch_images`` decoded images (MAX_CHUNK_FACTOR x chunk_images, or the images the
  plan counted when more) plus one file's frames, whatever its files hold: a file under FRAME_PROBE_BYTES counts as
  one image in the plan but may hold hundreds of frames, so the task decodes its files a sub-batch at a time and
  writes each sub-batch's shards before it decodes the next (sslflow/data/sub_batches.py; chunk.json reports
  ``decoded_at_most``); the join reads only the chunks' tables (chunk.parquet, chunk.json) and writes the
  dataset's tables: its shard table points at the chunks' shards where they were written
  (sslflow/data/dataset.py), no shard is read or copied.
- **Nothing half-written.** A chunk is decoded into a temporary folder renamed on success; the join
  writes the dataset atomically (sslflow/data/dataset.py).
- ``IngestConfig.max_bad_fraction`` applies per chunk (over all its sub-batches); PROXY cases (``proxy_cases``) are
  pixel neighbours within a chunk (within a sub-batch for a chunk decoded in several).
- **DICOM.** A chunk task decodes DICOM with the pseudonym key it is given (the Flyte Secret, never in the
  chunk document); a DICOM case comes from the header, known only after decoding, so the images of one
  patient share a chunk (and a sub-batch) only when their files sort together (as in a PACS export's patient
  folders).
  Files without an image suffix are candidates the chunk reads and skips unless they are DICOM (the plan reads
  none of them).
- **Metadata keyed by SOPInstanceUID** is read twice, never by a chunk. The plan reads it once, a batch at a time
  (sslflow/data/instance_metadata.py): it checks it (every UID given, none twice), pseudonymises each labelled row's
  UID with the key the chunks use and puts in every chunk document the file's sha256 and the sorted 8-byte digests of
  the labelled rows' pseudonyms (``instance_metadata``: one hex string, 16 bytes of JSON a labelled row, a few KB
  for a few hundred labels; beyond a batch, the plan holds that string: O(labelled rows)). A changed metadata.csv
  changes every chunk document, so it re-decodes the chunks and re-runs the join. A chunk counts an image whose
  object's digest is listed as labelled when it cuts its shards (labelled cases in shards apart), and otherwise
  keeps the header's case and site and no label. The join checks the file is the one planned (its sha256), streams
  it into a sqlite table of its scratch file, applies each row to the images of its object and refuses the rows no
  image matched (sslflow/data/instance_rows.py): one GET of the file by the plan and one by the join, none by the
  chunks.
- **Files metadata.csv does not list.** The plan counts the image files it leaves out (``Source.unlisted``) and
  refuses them under ``IngestConfig.unlisted_files="refuse"``; otherwise the first chunk document carries the count
  and the first UNLISTED_NAMED paths, its task reports them by key, and the join puts them in the summary
  (``unlisted_files``) with a warning the validation report repeats.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import multiprocessing
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TypedDict, TypeVar

import numpy as np
import pandas as pd

from ssl_models.shards import SHARD_SUFFIX
from sslflow.config import IngestConfig
from sslflow.data.dataset import labelled_cases, read_manifest, write_case_shards, write_dataset
from sslflow.data.decode_cache import DecodeCache
from sslflow.data.dicom import HEADER_PROBE_BYTES, frames_in_header
from sslflow.data.instance_metadata import InstanceMetadata, listed_labelled
from sslflow.data.listing import (
    MAX_LISTED_PROBLEMS,
    ListingReader,
    refuse_empty,
    refuse_no_images,
    refuse_unmatched,
)
from sslflow.data.manifest import decoded_table, public_quarantined
from sslflow.data.manifest_join import ChunkTables, JoinFacts, image_facts, kept_rows, returning_memory_pool
from sslflow.data.manifest_join import write_manifest as write_manifest_streamed
from sslflow.data.metadata import METADATA_FILE, UNLISTED_NAMED, ImageRecord
from sslflow.data.pseudonyms import Pseudonyms
from sslflow.data.sources import Source, named_source, open_source
from sslflow.data.sub_batches import OneBatch, SubBatches
from sslflow.data.types import IMAGE_SUFFIXES, SourceError, SourceImages

CHUNK_TABLE, CHUNK_REPORT, SHARDS = "chunk.parquet", "chunk.json", "shards"
CHUNKS = "chunks"  # where ingest_source's dataset keeps its chunk folders
# The largest chunk, in chunk_images: a chunk pod's memory is sized for it (the cuts give chunk_images on average)
MAX_CHUNK_FACTOR = 2
# Files of at least this many bytes that may be multi-frame DICOM: the plan reads the first HEADER_PROBE_BYTES of each
# for its NumberOfFrames (a ranged GET on S3), so that a chunk of multi-frame objects holds at most MAX_CHUNK_FACTOR x
# chunk_images images; a smaller file counts as one image (1 MiB holds 16 frames of 256 x 256 at 8 bits, compressed
# many more): its chunk task decodes in sub-batches when the files hold more (sslflow/data/sub_batches.py).
FRAME_PROBE_BYTES = 2**20
DECODE_SETTINGS = (
    "image_size",
    "channels",
    "max_bad_fraction",
    "max_image_pixels",
    "max_file_bytes",
    "bits_stored",
    "proxy_cases",
    "seed",
    "shard_megabytes",
    "dicom_window",
    "dicom_frames",
    "dicom_case_level",
    "dicom_site",
    "dicom_site_names",
    "dicom_burned_in",
)
T = TypeVar("T")


class ChunkDocument(TypedDict, total=False):
    """A chunk as its file holds it (JSON, plan_to_files); its sha256 (``_chunk_identity``) is the cache key of its
    decoding. Keys a chunk has no value for are absent, not null, so the JSON and its hash stay those of the keys set.

    source, kind: the source's URI and kind (sslflow/data/sources/); decode: the IngestConfig settings decoding uses
    (DECODE_SETTINGS). A source of files: records ([listing position, ImageRecord fields, content digest] each),
    instance_metadata ({"file", "sha256", "labelled"} of metadata keyed by SOPInstanceUID; labelled: the digests of
    its labelled rows' UID pseudonyms, InstanceMetadata.check), unlisted ({"count", "paths"} of the
    image files metadata.csv does not list: the first chunk only). A packaged source (``Source.packaged_images``):
    fingerprint, and start and stop, the index range. proxy_tag: 8 hex of the rest, with IngestConfig.proxy_cases.
    batch_images (a source of files): the most images its task decodes before it writes their shards
    (sslflow/data/sub_batches.py): MAX_CHUNK_FACTOR x IngestConfig.chunk_images, or the images the plan counted in
    the chunk when more (the cut goes over by the rest of a case), so that a chunk holding the images it was cut for
    is decoded in one piece. It says how the task holds the images, not which: it is left out of the document's
    identity and proxy_tag (decoded under another batch_images, a chunk has the same images, its shards cut
    elsewhere when it held more than either).
    """

    source: str
    kind: str
    decode: dict
    records: list[list]
    instance_metadata: dict[str, str]
    unlisted: dict
    fingerprint: str
    start: int
    stop: int
    proxy_tag: str
    batch_images: int


class ChunkReport(TypedDict, total=False):
    """A decoded chunk's chunk.json, read by the join: counts, the quarantined and held-back files by image key, read
    statistics, its chunk document's sha256 (chunk_sha256), the metadata keyed by SOPInstanceUID it was planned with
    (instance_metadata: {"file", "sha256"}, absent without; the join applies it), ``decoding`` (names this decoding), in
    the first chunk only, ``unlisted`` ({"count", "keys"} of the image files metadata.csv does not list), and how it
    held them: ``decoded_at_most`` (the most images held decoded at once: under the chunk document's batch_images
    plus one file's frames, unless a case holds more: it is held whole, with up to batch_images more) in
    ``sub_batches`` (how many times it wrote shards; sslflow/data/sub_batches.py)."""

    source: str
    images: int
    quarantined: list[dict]
    held_back: dict[str, int]
    read: dict[str, int]
    skipped_non_image: dict[str, int]
    chunk_sha256: str
    instance_metadata: dict[str, str]
    decoding: str
    unlisted: dict
    decoded_at_most: int
    sub_batches: int


def _cut(
    items: Iterable[T],
    key: Callable[[T], str],
    identity: Callable[[T], str],
    size: Callable[[T], int],
    images: Callable[[T], int],
    config: IngestConfig,
) -> Iterator[list[T]]:
    """``items`` (in order of ``key``, their case key) in chunks, streamed and content-defined: each item whose
    ``identity`` (its path in the source) hashes to 0 modulo chunk_images ends its chunk at the next case boundary;
    a chunk also ends once it has MAX_CHUNK_FACTOR x chunk_images images, and before a case whose first item's
    ``size`` (bytes, from the listing) would take it over chunk_megabytes, or whose ``images`` (its frames: a
    multi-frame object is one file of many images) would take it over MAX_CHUNK_FACTOR x chunk_images (all only
    between cases: a case larger than that is one chunk). A chunk holds chunk_images files on average whatever the
    number of images per case (a cut decided per case would make it that many times larger), at most chunk_megabytes
    of files and MAX_CHUNK_FACTOR x chunk_images images; adding a file changes its own chunk (and splits it
    when its path is one that cuts; a cut for bytes or images can move the cuts after it until the next
    content-defined one). Holds one chunk."""
    chunk: list[T] = []
    previous, cut_due, chunk_bytes, chunk_images = None, False, 0, 0
    for item in items:
        current, item_bytes, item_images = key(item), max(0, size(item)), max(1, images(item))
        if chunk and current != previous:
            if current < previous:
                raise ValueError(f"the listing is not in case order: {current!r} after {previous!r}")
            full = (
                chunk_images + item_images > MAX_CHUNK_FACTOR * config.chunk_images
                or chunk_bytes + item_bytes > config.chunk_megabytes * 2**20
            )
            if cut_due or full:
                yield chunk
                chunk, cut_due, chunk_bytes, chunk_images = [], False, 0, 0
        chunk.append(item)
        chunk_bytes += item_bytes
        chunk_images += item_images
        cut_due = (
            cut_due or int(hashlib.sha256(identity(item).encode()).hexdigest()[:12], 16) % config.chunk_images == 0
        )
        previous = current
    if chunk:
        yield chunk


def plan_chunks(source: str, config: IngestConfig, *, pseudonym_key: str | None = None) -> Iterator[ChunkDocument]:
    """The chunks of ``source`` as documents, streamed in listing order while the source is listed (see the module
    docstring); SourceError for an empty source. Built-in sources are cut by index ranges. pseudonym_key: the key
    the chunks decode with (else sslflow/data/pseudonyms.py's fallbacks), for the labelled rows of metadata keyed by
    SOPInstanceUID."""
    opened = open_source(source)
    header = ChunkDocument(
        source=source, kind=opened.kind, decode={name: getattr(config, name) for name in DECODE_SETTINGS}
    )
    packaged = opened.packaged_images(config.image_size, config.channels)
    chunks = (
        _listed_chunks(opened, header, config, Pseudonyms(pseudonym_key))
        if packaged is None
        else _index_range_chunks(opened, len(packaged.pixels), header, config)
    )
    for chunk in chunks:
        # PROXY case ids are made per chunk: the tag (from the chunk's own content) keeps those of two chunks apart
        content = json.dumps(_what_it_decodes(chunk), sort_keys=True).encode()
        yield {**chunk, "proxy_tag": hashlib.sha256(content).hexdigest()[:8]} if config.proxy_cases else chunk


def _what_it_decodes(chunk: ChunkDocument) -> dict:
    """The chunk document without batch_images: how its task holds the images, not which it decodes."""
    return {key: value for key, value in chunk.items() if key != "batch_images"}


def _index_range_chunks(
    opened: Source, count: int, header: ChunkDocument, config: IngestConfig
) -> Iterator[ChunkDocument]:
    """A packaged source's ``count`` images (``Source.packaged_images``) in chunks of chunk_images, by index range."""
    fingerprint = opened.fingerprint()
    for start in range(0, count, config.chunk_images):
        stop = min(count, start + config.chunk_images)
        yield ChunkDocument(**header, fingerprint=fingerprint, start=start, stop=stop)


def _unlisted(opened: Source, config: IngestConfig) -> dict | None:
    """{"count", "paths": the first UNLISTED_NAMED} of the image files the source's metadata.csv does not list (None
    for none); SourceError naming them when IngestConfig.unlisted_files is "refuse"."""
    count, first = 0, []
    for path in opened.unlisted():
        count += 1
        if len(first) < UNLISTED_NAMED:
            first.append(path)
    if count and config.unlisted_files == "refuse":
        more = ", ..." if count > len(first) else ""
        raise SourceError(
            f"source {opened.uri}: {count} image file(s) are not listed in its {METADATA_FILE}, so they would not be "
            f"used: {', '.join(repr(path) for path in first)}{more}; add them to {METADATA_FILE}, move them out of "
            "the source, or set IngestConfig.unlisted_files='warn' to go on without them"
        )
    return {"count": count, "paths": first} if count else None


def _listed_chunks(
    opened: Source, header: ChunkDocument, config: IngestConfig, pseudonyms: Pseudonyms
) -> Iterator[ChunkDocument]:
    """Chunks of (listing position, record fields, content digest), cut from the source's records as they stream in.
    Metadata keyed by SOPInstanceUID is named by its sha256, with the digests of its labelled rows' UID pseudonyms
    (under ``pseudonyms``): no chunk reads it, the join does. The first chunk carries the image files metadata.csv
    does not list (``unlisted``: its task reports them by key)."""
    by_instance = opened.instance_rows()
    if by_instance is not None:
        labelled = by_instance.check(pseudonyms)  # every UID given, none twice: refused before any chunk decodes
        metadata = {"file": METADATA_FILE, "sha256": by_instance.sha256(), "labelled": labelled}
        header = ChunkDocument(**header, instance_metadata=metadata)
    unlisted = _unlisted(opened, config)
    empty = True
    case, path, size = (
        lambda item: item[1].case_id or item[1].source_path,
        lambda item: item[1].source_path,
        lambda item: item[1].size_bytes,
    )
    counted: dict[int, int] = {}  # the images of each file of the chunk being cut, by listing position

    def images(item: tuple) -> int:
        counted[item[0]] = max(1, _images_of(opened, config, item[1]))
        return counted[item[0]]

    for chunk in _cut(opened.records(), case, path, size, images, config):
        records = [[position, vars(record), digest] for position, record, digest in chunk]
        batch_images = max(MAX_CHUNK_FACTOR * config.chunk_images, sum(counted.pop(item[0]) for item in chunk))
        first = {"unlisted": unlisted} if empty and unlisted else {}
        yield ChunkDocument(**header, records=records, batch_images=batch_images, **first)
        empty = False
    if empty:
        refuse_empty(opened.uri)


def _images_of(opened: Source, config: IngestConfig, record: ImageRecord) -> int:
    """The images a listed file becomes, as the plan can know it without reading the file: the NumberOfFrames in the
    header of a file that may be DICOM (any but an image suffix's: a chunk decodes a file by its bytes, and a
    metadata.csv lists PACS exports' files without a suffix) of FRAME_PROBE_BYTES or more when every frame is kept
    (IngestConfig.dicom_frames "all"; HEADER_PROBE_BYTES read; 1 for a header without frames), else 1."""
    image = record.source_path.lower().endswith(IMAGE_SUFFIXES)
    if image or config.dicom_frames != "all" or record.size_bytes < FRAME_PROBE_BYTES:
        return 1
    return frames_in_header(opened.read_head(record, HEADER_PROBE_BYTES))


def _chunk_images(chunk: ChunkDocument) -> int:
    """Its listed files, or the length of its index range (a packaged source)."""
    return len(chunk["records"]) if "records" in chunk else chunk["stop"] - chunk["start"]


def _slice(images: SourceImages, start: int, stop: int) -> SourceImages:
    return SourceImages(
        **{
            field.name: value[start:stop]
            if isinstance(value, (list, np.ndarray)) and field.name != "quarantined"
            else value
            for field in dataclasses.fields(SourceImages)
            for value in [getattr(images, field.name)]
        }
    )


def _decoded_batches(chunk: ChunkDocument, config: IngestConfig, pseudonyms: Pseudonyms) -> SubBatches | OneBatch:
    """A chunk's images as sub-batches (SubBatches, sslflow/data/sub_batches.py: at most about the chunk document's
    batch_images decoded at once); a packaged source's index range as one (OneBatch)."""
    opened = open_source(chunk["source"])
    packaged = opened.packaged_images(config.image_size, config.channels)
    if packaged is not None:  # a chunk of a packaged source is an index range
        return OneBatch(_slice(packaged, chunk["start"], chunk["stop"]))
    records = [ImageRecord(**fields) for _, fields, _ in chunk["records"]]
    cache = DecodeCache.for_config(config)
    reader = ListingReader(opened.read_bytes, config, cache, chunk["source"], pseudonyms)
    return SubBatches(records, reader, chunk["batch_images"])


def _listing_positions(chunk: ChunkDocument, images: SourceImages) -> list[int]:
    """Each image's position in the source listing (frames of a DICOM object share it)."""
    if "records" not in chunk:
        return list(range(chunk["start"], chunk["start"] + len(images.pixels)))
    position = {fields["source_path"]: index for index, fields, _ in chunk["records"]}
    return [position[path.split("#frame=")[0]] for path in images.source_paths]


def decode_chunk(chunk_json: str, directory: Path, *, pseudonym_key: str | None = None) -> Path:
    """Decode one chunk (a chunk document, JSON) into ``directory``: chunk.parquet (decoded_table + listing position,
    shard, shard_row), shards/<sha256>.npy, chunk.json (the report: counts, quarantined and held-back files by image
    key, read statistics, the most images held decoded at once, the chunk document's sha256). Metadata keyed by
    SOPInstanceUID is not read: the chunk document's digests of its labelled rows say which images count as labelled
    when the shards are cut, and the join applies the rows. No path is written: the table and the report know images
    by image_key. DICOM identities are pseudonymised with ``pseudonym_key`` (else sslflow/data/pseudonyms.py's
    fallbacks). The files are decoded a sub-batch at a time (sslflow/data/sub_batches.py), each sub-batch's shards
    written before the next is decoded. Written to a temporary folder, renamed on success."""
    chunk: ChunkDocument = json.loads(chunk_json)
    config = IngestConfig(**chunk["decode"])
    pseudonyms = Pseudonyms(pseudonym_key)
    batches = _decoded_batches(chunk, config, pseudonyms)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.partial-", dir=directory.parent))
    try:
        # map, not a loop: no name holds a written sub-batch while the next one is decoded
        tables = list(map(functools.partial(_write_batch, chunk, config, staging / SHARDS), batches))
        table = tables[0] if len(tables) == 1 else pd.concat(tables, ignore_index=True)
        table.to_parquet(staging / CHUNK_TABLE, index=False)
        report = _report(chunk, table, batches.files(), pseudonyms, batches)
        (staging / CHUNK_REPORT).write_text(json.dumps(report))
        shutil.rmtree(directory, ignore_errors=True)
        staging.rename(directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def _write_batch(chunk: ChunkDocument, config: IngestConfig, shards: Path, images: SourceImages) -> pd.DataFrame:
    """Write one sub-batch's images (pixels (n, C, H, W)) as shards into ``shards`` (write_case_shards: a case in one
    shard, labelled cases apart, an image whose metadata row keyed by SOPInstanceUID has a label counting as
    labelled: _has_label); returns its rows of chunk.parquet (decoded_table + listing_position, shard,
    shard_row)."""
    table = decoded_table(images, config)
    if chunk.get("proxy_tag") and table["case_id_is_proxy"].any():
        table["case_id"] = [
            case.replace("proxy-nn-", f"proxy-nn-{chunk['proxy_tag']}-", 1) for case in table["case_id"]
        ]
    case_keys = [case if case is not None else key for case, key in zip(table["case_id"], table["image_key"])]
    labelled = labelled_cases(case_keys, _has_label(chunk, table))
    shard, row = write_case_shards(shards, images.pixels, case_keys, labelled, config.shard_megabytes * 2**20)
    return table.assign(listing_position=_listing_positions(chunk, images), shard=shard, shard_row=row)


def _has_label(chunk: ChunkDocument, table: pd.DataFrame) -> np.ndarray:
    """(n,) bool for a sub-batch's rows (``table``, decoded_table), as its shards are cut: the image has a label, or
    its object has a labelled metadata row keyed by SOPInstanceUID (the chunk document's instance_metadata lists it;
    the join applies the row's label)."""
    has_label = table["label"].notna().to_numpy()
    metadata = chunk.get("instance_metadata")
    if not metadata:
        return has_label
    return has_label | listed_labelled(table["instance"].tolist(), metadata["labelled"])


def _planned_metadata(chunk: ChunkDocument) -> dict[str, str]:
    """{"file", "sha256"} of the metadata keyed by SOPInstanceUID a chunk was planned with: what its report tells the
    join."""
    return {"file": chunk["instance_metadata"]["file"], "sha256": chunk["instance_metadata"]["sha256"]}


def _report(
    chunk: ChunkDocument,
    table: pd.DataFrame,
    files: dict,
    pseudonyms: Pseudonyms,
    batches: SubBatches | OneBatch,
) -> ChunkReport:
    """The chunk's report (ChunkReport); files: the SourceImages fields about the chunk's files (ListingReader.files).
    Files metadata.csv does not list are named by key: their paths stay in the chunk document."""
    unlisted = chunk.get("unlisted") or {"count": 0, "paths": []}
    keys = {"count": unlisted["count"], "keys": [pseudonyms.pseudonym("file", path) for path in unlisted["paths"]]}
    return ChunkReport(
        source=chunk["source"],
        images=len(table),
        quarantined=public_quarantined(files["quarantined"]),
        held_back=files["held_back"],
        read=files["read_stats"],
        skipped_non_image=files["skipped"],
        chunk_sha256=_chunk_identity(chunk),  # the chunk document: its files and their content hashes
        **({"instance_metadata": _planned_metadata(chunk)} if chunk.get("instance_metadata") else {}),
        decoding=uuid.uuid4().hex,
        **({"unlisted": keys} if keys["count"] else {}),
        decoded_at_most=batches.decoded_at_most,
        sub_batches=batches.count,
    )


@dataclasses.dataclass(frozen=True)
class DecodedChunk:
    """A decoded chunk as the join sees it. tables: a local folder holding its chunk.parquet and chunk.json; shards:
    where its shards/ folder is (a URI, an absolute path, or a path relative to the dataset folder), which the
    dataset's shard table points into. The join reads the tables, never the shards."""

    tables: Path
    shards: str


def _summed(counts: list[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for count in counts:
        for key, value in count.items():
            total[key] = total.get(key, 0) + value
    return dict(sorted(total.items()))


def _planned_instance_metadata(reports: list[ChunkReport]) -> InstanceMetadata | None:
    """The source's metadata keyed by SOPInstanceUID that the chunks were planned with (their reports'
    instance_metadata), None without; SourceError if it changed or went away since the plan (its sha256 differs)."""
    planned = {json.dumps(report["instance_metadata"]) for report in reports if report.get("instance_metadata")}
    if not planned:
        return None
    source, expected = reports[0]["source"], json.loads(min(planned))
    found = open_source(source).instance_rows()
    if len(planned) > 1 or found is None or found.sha256() != expected["sha256"]:
        raise SourceError(
            f"source {source}: {expected['file']} "
            f"{'is no longer keyed by SOPInstanceUID or is gone' if found is None else 'changed'} "
            "since ingest listed the source (its sha256 is in the chunk document); run ingest again"
        )
    return found


def _chunk_identity(chunk: ChunkDocument) -> str:
    """sha256 of a chunk document, S3 version keys without their endpoint and DICOMweb URLs without the archive's
    address: which server (a replica, a proxy) answered does not change the files."""
    source = named_source(chunk["source"])
    identity = {**_what_it_decodes(chunk), "source": source.uri_without_server}
    if "records" in chunk:
        identity["records"] = [
            [index, *source.without_server(fields, digest)] for index, fields, digest in chunk["records"]
        ]
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def chunk_file_sha256(path: Path) -> str:
    """The identity of the chunk document in the file at ``path`` (plan_to_files): Flyte's cache key for its chunk
    task."""
    return _chunk_identity(json.loads(Path(path).read_text()))


def _listing_sha256(reports: list[ChunkReport]) -> str:
    """A hash of every chunk document (every file listed, with its content hash, kept or not): part of the dataset's
    hash."""
    return hashlib.sha256(" ".join(sorted(report["chunk_sha256"] for report in reports)).encode()).hexdigest()


def join_chunks(
    chunks: list[DecodedChunk],
    config: IngestConfig,
    directory: Path,
    *,
    contents: dict[str, Path] | None = None,
    pseudonym_key: str | None = None,
) -> tuple[str, dict]:
    """Join decoded chunks into the dataset at ``directory``: deduplicate, subsample, cases and splits over all of
    them, in source-listing order, streamed (sslflow/data/manifest_join.py: the facts per image in sqlite on the
    local disk; no table held). Reads the chunks' tables, not their shards, and the source's metadata keyed by
    SOPInstanceUID when the chunks were planned with one (its UIDs pseudonymised with ``pseudonym_key``, the key the
    chunks decoded with); the dataset's shard table points at their shards where they are (sslflow/data/dataset.py).
    contents: folders moved into the dataset (write_dataset). Returns (content sha256, summary)."""
    with returning_memory_pool():  # memory pyarrow frees goes back: the join reads every chunk table, one at a time
        return _join(chunks, config, directory, contents, Pseudonyms(pseudonym_key))


def _join(
    chunks: list[DecodedChunk],
    config: IngestConfig,
    directory: Path,
    contents: dict[str, Path] | None,
    pseudonyms: Pseudonyms,
) -> tuple[str, dict]:
    reports: list[ChunkReport] = [json.loads((chunk.tables / CHUNK_REPORT).read_text()) for chunk in chunks]
    tables = ChunkTables([chunk.tables / CHUNK_TABLE for chunk in chunks])
    with image_facts(tables.files, _planned_instance_metadata(reports), pseudonyms) as facts:
        if not facts.images:  # every chunk's files were skipped or held back
            refuse_no_images(
                reports[0]["source"],
                *(_summed([report[name] for report in reports]) for name in ("skipped_non_image", "held_back")),
            )
        locations = {
            shard: f"{chunk.shards.rstrip('/')}/{shard}{SHARD_SUFFIX}"
            for index, chunk in enumerate(chunks)
            for shard in facts.shards[index]
        }
        dropped = kept_rows(facts, config, functools.partial(tables.values, facts))
        if facts.instance_rows is not None:
            count, unmatched = facts.instance_rows.unmatched(MAX_LISTED_PROBLEMS)
            refuse_unmatched(reports[0]["source"], unmatched, count=count)

        def write_manifest(manifest_file: Path) -> tuple[set[str], dict]:
            counts = write_manifest_streamed(facts, config, tables, manifest_file)
            described = counts.summary(config)
            summary = {"images": described.pop("images"), **dropped, **described, **_chunk_summary(reports, facts)}
            summary["shards"] = len(counts.shards)
            if summary["unlisted_files"]["count"]:
                summary["warnings"] = [*summary["warnings"], unlisted_warning(summary["unlisted_files"])]
            return counts.shards, summary

        return write_dataset(directory, write_manifest, locations, contents=contents)


def _chunk_summary(reports: list[ChunkReport], facts: JoinFacts) -> dict:
    """The summary's keys summed over the chunks' reports."""
    read = (
        {key: sum(report["read"].get(key, 0) for report in reports) for key in reports[0]["read"]}
        if reports[0]["read"]
        else {}
    )
    return {
        "unlisted_files": unlisted_files([report["unlisted"] for report in reports if report.get("unlisted")]),
        "quarantined": [item for report in reports for item in report["quarantined"]],
        # DICOM objects without an image, by SOP class
        "skipped_non_image": _summed([report["skipped_non_image"] for report in reports]),
        # images held back, by reason (BurnedInAnnotation YES)
        "held_back": _summed([report["held_back"] for report in reports]),
        "listing_sha256": _listing_sha256(reports),
        "read": read,  # summed over chunks; a chunk served from Flyte's cache reports what it did when it ran
        "chunks": [
            {"decoding": report["decoding"], "images": images}
            for report, images in zip(reports, facts.images_per_chunk)
        ],
    }


def unlisted_files(reported: list[dict]) -> dict:
    """The summary's ``unlisted_files``: {"count", "keys"} of the image files metadata.csv does not list, over the chunk
    reports that carry them."""
    return {
        "count": sum(item["count"] for item in reported),
        "keys": [key for item in reported for key in item["keys"]],
    }


def unlisted_warning(unlisted: dict) -> str:
    """The warning the summary and the validation report give for image files metadata.csv does not list."""
    more = ", ..." if unlisted["count"] > len(unlisted["keys"]) else ""
    return (
        f"{unlisted['count']} image file(s) in the source are not listed in its {METADATA_FILE} and were not used: "
        f"{', '.join(unlisted['keys'])}{more}. `python -m sslflow.data.image_keys <source> <key>...` names their "
        "files (`python -m sslflow.data.image_keys <source> --unlisted` lists all of them); add them to "
        f"{METADATA_FILE} to use them, or set IngestConfig.unlisted_files='refuse' to stop instead"
    )


def chunk_json(chunk: ChunkDocument) -> str:
    """A chunk document as the JSON text its file holds."""
    return json.dumps(chunk, sort_keys=True, separators=(",", ":"))


def plan_to_files(source: str, config: IngestConfig, folder: Path, *, pseudonym_key: str | None = None) -> list[Path]:
    """plan_chunks (with ``pseudonym_key``, the key the chunks decode with), each chunk document written to
    ``folder``/chunk-<its sha256>.json as it comes (never all of them in memory); returns the paths, the chunks with
    the most images first (the map task and the process pool start them in that order), ties in listing order."""
    folder.mkdir(parents=True, exist_ok=True)
    written: list[tuple[int, Path]] = []
    for chunk in plan_chunks(source, config, pseudonym_key=pseudonym_key):
        path = folder / f"chunk-{_chunk_identity(chunk)}.json"
        path.write_text(chunk_json(chunk))
        written.append((_chunk_images(chunk), path))
    return [path for _, path in sorted(written, key=lambda pair: -pair[0])]


def _decode_chunk_file(chunk_file: Path, directory: Path, *, pseudonym_key: str | None = None) -> Path:
    return decode_chunk(chunk_file.read_text(), directory, pseudonym_key=pseudonym_key)


def ingest_source(
    source: str, config: IngestConfig, directory: Path, *, workers: int = 1, pseudonym_key: str | None = None
) -> tuple[str, pd.DataFrame, dict]:
    """plan -> decode every chunk (in a pool of ``workers`` processes when > 1) -> join; the same functions and
    result as the Flyte ingest workflow. Chunks are decoded into a temporary folder beside ``directory``; the join
    moves them into the dataset (``chunks/chunk-NNNNN/``, no shard copied), whose shard table names them relative
    to it, so the dataset folder holds everything it references and can be moved.

    With workers > 1 the steps are separate processes as the workflow's tasks are separate pods: the plan runs in
    its own short-lived process and writes the chunk documents to files, so this process never holds the listing
    while the chunks decode; it joins once the decoding processes have ended."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{directory.name}.chunks-", dir=directory.parent) as work:
        if workers > 1:
            spawn = multiprocessing.get_context("spawn")  # a worker holds its chunk and the decoding modules (no torch)
            with ProcessPoolExecutor(1, mp_context=spawn) as planner:
                plan = functools.partial(plan_to_files, pseudonym_key=pseudonym_key)
                chunk_files = planner.submit(plan, source, config, Path(work) / "plan").result()
            folders = [Path(work) / f"chunk-{index:05d}" for index in range(len(chunk_files))]
            # a process per chunk, as a pod per chunk: memory a long-lived worker kept from earlier chunks is uncounted
            with ProcessPoolExecutor(workers, mp_context=spawn, max_tasks_per_child=1) as pool:
                decode = functools.partial(_decode_chunk_file, pseudonym_key=pseudonym_key)
                list(pool.map(decode, chunk_files, folders))
        else:
            chunk_files = plan_to_files(source, config, Path(work) / "plan", pseudonym_key=pseudonym_key)
            folders = [Path(work) / f"chunk-{index:05d}" for index in range(len(chunk_files))]
            for chunk_file, folder in zip(chunk_files, folders):
                _decode_chunk_file(chunk_file, folder, pseudonym_key=pseudonym_key)
        contents = {f"{CHUNKS}/{folder.name}": folder for folder in folders}
        chunks = [DecodedChunk(folder, f"{CHUNKS}/{folder.name}/{SHARDS}") for folder in folders]
        sha256, summary = join_chunks(chunks, config, directory, contents=contents, pseudonym_key=pseudonym_key)
    return sha256, read_manifest(directory), summary

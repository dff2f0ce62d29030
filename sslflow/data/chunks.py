"""Ingest in chunks: list a source (no decoding), cut the listing into chunks, decode each chunk into shards,
join the chunks' tables into one dataset. The Flyte ingest workflow (workflows/ingest.py) runs the
decoding as a map task; ``ingest_source`` runs the same three steps in one process (or a process pool).

- **Chunks that stay put.** A chunk is a JSON document: the decode settings and its files, each with
  its content sha256 (S3: key, ETag and size), so it is Flyte's cache key: a chunk whose files are
  unchanged is a cache hit. Records are ordered by case (the file path when there is none) and a chunk
  ends before a case whose key hashes to 0 modulo ``IngestConfig.chunk_images`` (content-defined
  boundaries), so adding files changes only the chunks they fall into. The images of one case are in
  one chunk, and so in one shard. Built-in sources (in-memory arrays) are cut by index ranges.
  ``plan_documents`` lists the largest chunks first: the map task and the process pool start them in that order.
- **Bounded memory.** ``plan_chunks`` cuts while the source (sslflow/data/sources/: ``open_source``) streams its
  records in case order, so it holds one chunk, not the listing (a metadata table is sorted by case first);
  a chunk task holds one chunk's images; the join reads only the chunks' tables.
- **Nothing half-written.** A chunk is decoded into a temporary folder renamed on success; the join
  writes the dataset atomically (sslflow/data/dataset.py).
- ``IngestConfig.max_bad_fraction`` applies per chunk; PROXY cases (``proxy_cases``) are pixel
  neighbours within a chunk.
- **DICOM.** A chunk task decodes DICOM with the pseudonym key it is given (the Flyte Secret, never in the
  chunk document); a DICOM case comes from the header, known only after decoding, so the images of one
  patient share a chunk only when their files sort together (as in a PACS export's patient folders).
  Files without an image suffix are candidates the chunk reads and skips unless they are DICOM (the plan reads
  none of them). Metadata keyed by SOPInstanceUID is read by every chunk, that one file and no listing (its sha256
  is in the chunk document, so a changed metadata.csv re-decodes, and a chunk refuses one changed since the plan);
  a row that no chunk matched is refused by the join.
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
from typing import TypeVar

import numpy as np
import pandas as pd

from sslflow.config import IngestConfig
from sslflow.data.dataset import assemble_dataset, labelled_cases, write_case_shards
from sslflow.data.decode_cache import DecodeCache
from sslflow.data.listing import read_listing, refuse_no_images, refuse_unmatched
from sslflow.data.manifest import MANIFEST_COLUMNS, decoded_table, finish_manifest, public_quarantined
from sslflow.data.metadata import METADATA_FILE, ImageRecord
from sslflow.data.pseudonyms import Pseudonyms
from sslflow.data.sources import Source, open_source
from sslflow.data.sources.builtin import BuiltinSource
from sslflow.data.types import SourceError, SourceImages

CHUNK_TABLE, CHUNK_REPORT, SHARDS = "chunk.parquet", "chunk.json", "shards"
DECODE_SETTINGS = ("image_size", "channels", "max_bad_fraction", "max_image_pixels", "max_file_bytes", "bits_stored", "proxy_cases", "seed", "shard_megabytes",
                   "dicom_window", "dicom_frames", "dicom_case_level", "dicom_site", "dicom_site_names", "dicom_burned_in")  # fmt: skip
T = TypeVar("T")


def _cut(items: Iterable[T], key: Callable[[T], str], chunk_images: int) -> Iterator[list[T]]:
    """``items`` (in order of ``key``, their case key) in chunks, streamed: a chunk ends before a new key whose hash is 0
    modulo chunk_images, or once it has 4 x chunk_images images (both only between cases). Holds one chunk."""
    chunk: list[T] = []
    previous = None
    for item in items:
        current = key(item)
        if chunk and current != previous:
            if current < previous:
                raise ValueError(f"the listing is not in case order: {current!r} after {previous!r}")
            natural = int(hashlib.sha256(current.encode()).hexdigest()[:12], 16) % chunk_images == 0
            if natural or len(chunk) >= 4 * chunk_images:
                yield chunk
                chunk = []
        chunk.append(item)
        previous = current
    if chunk:
        yield chunk


def plan_chunks(source: str, config: IngestConfig) -> Iterator[dict]:
    """The chunks of ``source`` as documents, streamed in listing order while the source is listed (see the module
    docstring); SourceError for an empty source. Built-in sources are cut by index ranges."""
    opened = open_source(source)
    header = {"source": source, "kind": opened.kind, "decode": {name: getattr(config, name) for name in DECODE_SETTINGS}}
    chunks = _builtin_chunks(opened, header, config) if isinstance(opened, BuiltinSource) else _listed_chunks(opened, header, config)
    for chunk in chunks:
        # PROXY case ids are made per chunk: the tag (from the chunk's own content) keeps those of two chunks apart
        yield {**chunk, "proxy_tag": hashlib.sha256(json.dumps(chunk, sort_keys=True).encode()).hexdigest()[:8]} if config.proxy_cases else chunk


def _builtin_chunks(opened: BuiltinSource, header: dict, config: IngestConfig) -> Iterator[dict]:
    count, fingerprint = len(_builtin(opened.uri, config.image_size, config.channels).pixels), opened.fingerprint()
    for start in range(0, count, config.chunk_images):
        yield {**header, "fingerprint": fingerprint, "start": start, "stop": min(count, start + config.chunk_images)}


def _listed_chunks(opened: Source, header: dict, config: IngestConfig) -> Iterator[dict]:
    """Chunks of (listing position, record fields, content digest), cut from the source's records as they stream in.
    Metadata keyed by SOPInstanceUID is named by its sha256: each chunk reads it again and checks it."""
    by_instance = opened.instance_rows()
    if by_instance is not None:
        header["instance_metadata"] = {"file": METADATA_FILE, "sha256": by_instance.sha256}
    empty = True
    for chunk in _cut(opened.records(), lambda item: item[1].case_id or item[1].source_path, config.chunk_images):
        empty = False
        yield {**header, "records": [[position, vars(record), digest] for position, record, digest in chunk]}
    if empty:
        read_listing([], lambda record: b"", config, None, opened.uri)  # raises the empty-source SourceError


def plan_documents(source: str, config: IngestConfig) -> list[str]:
    """plan_chunks as JSON documents, the largest chunk first (the map task and the process pool start them in order)."""
    chunks = sorted(plan_chunks(source, config), key=_chunk_images, reverse=True)
    return [json.dumps(chunk, sort_keys=True, separators=(",", ":")) for chunk in chunks]


def _chunk_images(chunk: dict) -> int:
    return len(chunk["records"]) if "records" in chunk else chunk["stop"] - chunk["start"]


@functools.lru_cache(maxsize=2)
def _builtin(source: str, image_size: int, channels: int) -> SourceImages:
    """A built-in source, read once per process (its chunks are index ranges of it)."""
    return BuiltinSource(source).read(image_size, channels)


def _slice(images: SourceImages, start: int, stop: int) -> SourceImages:
    return SourceImages(
        **{
            field.name: value[start:stop] if isinstance(value, (list, np.ndarray)) and field.name != "quarantined" else value
            for field in dataclasses.fields(SourceImages)
            for value in [getattr(images, field.name)]
        }
    )


def _decode(chunk: dict, config: IngestConfig, pseudonyms: Pseudonyms) -> tuple[SourceImages, list[int]]:
    """(decoded images of a chunk, each one's position in the source listing; frames of a DICOM object share it)."""
    if "records" not in chunk:  # a built-in source: an index range
        images = _slice(_builtin(chunk["source"], config.image_size, config.channels), chunk["start"], chunk["stop"])
        return images, list(range(chunk["start"], chunk["stop"]))
    opened = open_source(chunk["source"])
    records = [ImageRecord(**fields) for _, fields, _ in chunk["records"]]
    by_instance = _instance_rows(opened, chunk["instance_metadata"]) if chunk.get("instance_metadata") else None
    images = read_listing(records, opened.read_bytes, config, DecodeCache.for_config(config), chunk["source"], pseudonyms, by_instance)
    position = {fields["source_path"]: index for index, fields, _ in chunk["records"]}
    return images, [position[path.split("#frame=")[0]] for path in images.source_paths]


def _instance_rows(opened: Source, expected: dict) -> list[dict]:
    """The source's metadata rows keyed by SOPInstanceUID, read again (one file: no listing) and checked to be the
    file the plan read (``expected``: its name and sha256); SourceError if it changed or went away since."""
    found = opened.instance_rows()
    if found is None or found.sha256 != expected["sha256"]:
        raise SourceError(
            f"source {opened.uri}: {expected['file']} {'is no longer keyed by SOPInstanceUID or is gone' if found is None else 'changed'} "
            "since ingest listed the source (its sha256 is in the chunk document); run ingest again"
        )
    return found.rows


def decode_chunk(chunk_json: str, directory: Path, *, pseudonym_key: str | None = None) -> Path:
    """Decode one chunk into ``directory`` (chunk.parquet: decoded_table + listing position, shard, shard_row;
    shards/; chunk.json: quarantined and held-back files by image key, skipped non-image DICOM objects, unmatched
    SOPInstanceUID rows, read statistics, the chunk document's sha256). No path is written: the table and the report
    know images by image_key. DICOM identities are pseudonymised with ``pseudonym_key`` (else sslflow/data/pseudonyms.py's
    fallbacks). Written to a temporary folder, renamed on success."""
    chunk = json.loads(chunk_json)
    config = IngestConfig(**chunk["decode"])
    images, positions = _decode(chunk, config, Pseudonyms(pseudonym_key))
    table = decoded_table(images, config)
    if chunk.get("proxy_tag") and table["case_id_is_proxy"].any():
        table["case_id"] = [case.replace("proxy-nn-", f"proxy-nn-{chunk['proxy_tag']}-", 1) for case in table["case_id"]]
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.partial-", dir=directory.parent))
    try:
        case_keys = [case if case is not None else key for case, key in zip(table["case_id"], table["image_key"])]
        labelled = labelled_cases(case_keys, table["label"].tolist())
        shard, row = write_case_shards(staging / SHARDS, images.pixels, case_keys, labelled, config.shard_megabytes * 2**20)
        table.assign(listing_position=positions, shard=shard, shard_row=row).to_parquet(staging / CHUNK_TABLE, index=False)
        report = {
            "source": chunk["source"], "quarantined": public_quarantined(images.quarantined), "held_back": images.held_back,
            "read": images.read_stats, "skipped_non_image": images.skipped,
            "chunk_sha256": _chunk_identity(chunk),  # the chunk document: its files and their content hashes
            "unmatched_instance_rows": images.unmatched_instance_rows if chunk.get("instance_metadata") else None,
            "decoding": uuid.uuid4().hex,  # names this decoding
        }  # fmt: skip
        (staging / CHUNK_REPORT).write_text(json.dumps(report))
        shutil.rmtree(directory, ignore_errors=True)
        staging.rename(directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def _tables(chunk_folders: list[Path]) -> list[pd.DataFrame]:
    return [pd.read_parquet(folder / CHUNK_TABLE, columns=["sha256"]) for folder in chunk_folders]


def _summed(counts: list[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for count in counts:
        for key, value in count.items():
            total[key] = total.get(key, 0) + value
    return dict(sorted(total.items()))


def _refuse_unmatched_rows(reports: list[dict]) -> None:
    """SourceError for metadata rows keyed by SOPInstanceUID that no chunk matched (each chunk lists those it did not)."""
    lists = [report["unmatched_instance_rows"] for report in reports if report.get("unmatched_instance_rows") is not None]
    if lists:
        unmatched = set(lists[0]).intersection(*lists[1:])
        refuse_unmatched(reports[0]["source"], [where for where in lists[0] if where in unmatched])


def _chunk_identity(chunk: dict) -> str:
    """sha256 of a chunk document, S3 version keys without their endpoint: which server answered does not change the files."""
    if chunk["kind"] == "s3":
        strip = lambda key: key.split(" ", 1)[-1]  # noqa: E731  ("<endpoint> <url> <etag> <size>": sslflow/data/sources/s3.py)
        records = [[index, {**fields, "version_key": strip(fields["version_key"])}, strip(digest)] for index, fields, digest in chunk["records"]]
        chunk = {**chunk, "records": records}
    return hashlib.sha256(json.dumps(chunk, sort_keys=True).encode()).hexdigest()


def _listing_sha256(reports: list[dict]) -> str:
    """A hash of every chunk document (every file listed, with its content hash, kept or not): part of the dataset's hash."""
    return hashlib.sha256(" ".join(sorted(report["chunk_sha256"] for report in reports)).encode()).hexdigest()


def join_chunks(chunk_folders: list[Path], config: IngestConfig, directory: Path) -> tuple[str, pd.DataFrame, dict]:
    """Join decoded chunks into the dataset at ``directory``: deduplicate, subsample, cases and splits over all of
    them (sslflow/data/manifest.py), in source-listing order. Returns (content sha256, manifest, summary)."""
    table = pd.concat([pd.read_parquet(folder / CHUNK_TABLE) for folder in chunk_folders], ignore_index=True)
    table = table.sort_values("listing_position", kind="stable").reset_index(drop=True)
    if table.empty:  # every chunk's files were skipped or held back
        reports = [json.loads((folder / CHUNK_REPORT).read_text()) for folder in chunk_folders]
        refuse_no_images(reports[0]["source"], *(_summed([report[name] for report in reports]) for name in ("skipped_non_image", "held_back")))
    manifest, keep, summary = finish_manifest(table, config)
    manifest = manifest.assign(shard=table["shard"].to_numpy()[keep], shard_row=table["shard_row"].to_numpy()[keep])[list(MANIFEST_COLUMNS)]
    reports = [json.loads((folder / CHUNK_REPORT).read_text()) for folder in chunk_folders]
    _refuse_unmatched_rows(reports)
    read = {key: sum(report["read"].get(key, 0) for report in reports) for key in reports[0]["read"]} if reports[0]["read"] else {}
    summary |= {
        "quarantined": [item for report in reports for item in report["quarantined"]],
        "skipped_non_image": _summed([report["skipped_non_image"] for report in reports]),  # DICOM objects without an image, by SOP class
        "held_back": _summed([report["held_back"] for report in reports]),  # images held back, by reason (BurnedInAnnotation YES)
        "listing_sha256": _listing_sha256(reports),
        "read": read,  # summed over chunks; a chunk served from Flyte's cache reports what it did when it ran
        "chunks": [{"decoding": report["decoding"], "images": len(report_table)} for report, report_table in zip(reports, _tables(chunk_folders))],
        "shards": int(manifest["shard"].nunique()),
    }
    sha256 = assemble_dataset(directory, manifest, [folder / SHARDS for folder in chunk_folders], summary)
    return sha256, manifest, summary


def _plan_to_files(source: str, config: IngestConfig, work: Path) -> list[Path]:
    """plan_chunks, each chunk document written to ``work``/plan-NNNNN.json; returns their paths."""
    paths = []
    for index, chunk in enumerate(plan_documents(source, config)):
        paths.append(work / f"plan-{index:05d}.json")
        paths[-1].write_text(chunk)
    return paths


def _decode_chunk_file(chunk_file: Path, directory: Path, *, pseudonym_key: str | None = None) -> Path:
    return decode_chunk(chunk_file.read_text(), directory, pseudonym_key=pseudonym_key)


def ingest_source(
    source: str, config: IngestConfig, directory: Path, *, workers: int = 1, pseudonym_key: str | None = None
) -> tuple[str, pd.DataFrame, dict]:
    """plan -> decode every chunk (in a pool of ``workers`` processes when > 1) -> join; the same functions and
    result as the Flyte ingest workflow. Chunk folders go to a temporary folder beside ``directory``.

    With workers > 1 the steps are separate processes as the workflow's tasks are separate pods: the plan (which
    holds the whole listing) runs in its own short-lived process and writes the chunk documents to files, so this
    process never holds the listing while the chunks decode; it joins once the decoding processes have ended."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{directory.name}.chunks-", dir=directory.parent) as work:
        if workers > 1:
            spawn = multiprocessing.get_context("spawn")  # a worker holds its chunk and the decoding modules (no torch)
            with ProcessPoolExecutor(1, mp_context=spawn) as planner:
                chunk_files = planner.submit(_plan_to_files, source, config, Path(work)).result()
            folders = [Path(work) / f"chunk-{index:05d}" for index in range(len(chunk_files))]
            with ProcessPoolExecutor(workers, mp_context=spawn) as pool:
                list(pool.map(functools.partial(_decode_chunk_file, pseudonym_key=pseudonym_key), chunk_files, folders))
        else:
            chunks = plan_documents(source, config)
            folders = [Path(work) / f"chunk-{index:05d}" for index in range(len(chunks))]
            for chunk, folder in zip(chunks, folders):
                decode_chunk(chunk, folder, pseudonym_key=pseudonym_key)
        return join_chunks(folders, config, directory)

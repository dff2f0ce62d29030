"""The dataset folder format: ``manifest.parquet`` + ``shards.parquet`` + ``summary.json``.

Each manifest row (sslflow/data/manifest.py) names its image's shard (``shard``, the sha256 of the
shard file) and its row in it (``shard_row``); a shard holds (n, C, H, W) uint8 images of bounded
size (ssl_models/shards.py); the images of one case are in one shard, and a shard holds either labelled
cases or unlabelled ones (write_case_shards).

The shards stay where the ingest chunks wrote them: ``shards.parquet`` maps each shard (sha256) to its
``location``, a blob-store URI (``s3://.../chunk/shards/<sha256>.npy``, a chunk task's output), an absolute
local path, or a path relative to the dataset folder (``chunks/chunk-00000/shards/<sha256>.npy``, where
ingest_source moves its chunk folders). A shard file's name is its sha256, so a location cannot hold other
bytes unnoticed. A folder without the table (older datasets, a shard cache) holds its shards in ``shards/``;
a shard fetched from a blob store is put there too (shard_path).

Nothing here loads the whole dataset: readers take the rows they need, one memory-mapped shard at a time,
and every shard read is checked against its hash. The content sha256 of a dataset is that of its manifest
and its shard hashes (not where they are). Functions here take local folders; the Flyte artifact is
tasks.shared.Dataset.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from ssl_models.shards import SHARD_SUFFIX, ShardError, ShardRows, read_shard, write_shard
from sslflow.data.manifest import MANIFEST_COLUMNS

MANIFEST_FILE = "manifest.parquet"
SHARDS_FOLDER = "shards"
SHARD_TABLE = "shards.parquet"  # shard sha256 -> location
SUMMARY_FILE = "summary.json"
DEFAULT_SHARD_BYTES = 128 * 2**20


def labelled_cases(case_ids: list[str], has_label: np.ndarray) -> np.ndarray:
    """(N,) bool: the row's case has at least one labelled image (``has_label``: (N,) bool, the image is labelled)."""
    cases = np.asarray(case_ids, dtype=object).astype(str)
    return np.isin(cases, np.unique(cases[np.asarray(has_label, dtype=bool)]))


def write_case_shards(
    directory: Path,
    pixels: np.ndarray,
    case_ids: list[str],
    labelled: np.ndarray,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> tuple[list[str], np.ndarray]:
    """Write ``pixels`` (N, C, H, W) uint8 as shards of about ``shard_bytes`` into ``directory``; returns (shard
    sha256 of each row, row in its shard).

    The images of one case are in one shard (a shard is cut only between cases), and a shard holds either
    cases with a label or cases without (``labelled``, (N,) bool, from labelled_cases): the few hundred
    labelled images of a large unlabelled set sit in a few small shards, so fine-tuning, evaluation and the
    promotion gate fetch those and not the whole dataset.
    """
    cases, labelled = np.asarray(case_ids, dtype=object).astype(str), np.asarray(labelled, dtype=bool)
    order = np.lexsort((cases, ~labelled))  # labelled cases first, then by case
    image_bytes = int(np.prod(pixels.shape[1:])) if len(pixels) else 1
    shard_of_row, row_in_shard = [""] * len(pixels), np.zeros(len(pixels), dtype=np.int64)
    start = 0
    while start < len(order):
        stop = start + 1
        while stop < len(order) and labelled[order[stop]] == labelled[order[start]]:
            if cases[order[stop]] != cases[order[stop - 1]] and stop - start >= max(1, shard_bytes // image_bytes):
                break  # full, and between two cases
            stop += 1
        members = order[start:stop]
        sha256 = write_shard(directory, pixels[members])
        for position, row in enumerate(members):
            shard_of_row[row], row_in_shard[row] = sha256, position
        start = stop
    return shard_of_row, row_in_shard


def dataset_sha256(manifest_file: Path, shard_hashes: Iterable[str], listing_sha256: str = "") -> str:
    """The content hash of a dataset: its manifest's bytes, the sorted hashes of its shards and, when ingest gives
    one, the hash of the whole listing it read (listing_sha256: kept, quarantined, held back and skipped files
    alike), so that validate, keyed on this hash, reports afresh after any change to the source."""
    with open(manifest_file, "rb") as stream:
        digest = hashlib.file_digest(stream, "sha256")  # read in blocks: a manifest of 10^6 rows is not held
    for shard in sorted(set(shard_hashes)):
        digest.update(shard.encode())
    if listing_sha256:
        digest.update(f"listing {listing_sha256}".encode())
    return digest.hexdigest()


def assemble_dataset(
    directory: Path,
    manifest: pd.DataFrame,
    locations: Mapping[str, str],
    summary: dict,
    *,
    contents: Mapping[str, Path] | None = None,
) -> str:
    """Write a dataset from a finished manifest (a table in memory) and where its shards are; return its content
    sha256. See write_dataset."""
    if tuple(manifest.columns) != MANIFEST_COLUMNS:
        raise ValueError(
            f"manifest columns {list(manifest.columns)} differ from MANIFEST_COLUMNS {list(MANIFEST_COLUMNS)}"
        )

    def write_manifest(manifest_file: Path) -> tuple[set[str], dict]:
        manifest.reset_index(drop=True).to_parquet(manifest_file, index=False)
        return set(manifest["shard"]), summary

    return write_dataset(directory, write_manifest, locations, contents=contents)[0]


def write_dataset(
    directory: Path,
    write_manifest: Callable[[Path], tuple[set[str], dict]],
    locations: Mapping[str, str],
    *,
    contents: Mapping[str, Path] | None = None,
) -> tuple[str, dict]:
    """Write a dataset whose manifest ``write_manifest`` writes (to the path it is given; it returns the shards the
    manifest names and the dataset's summary); return (its content sha256, the summary).

    locations: shard sha256 -> location (a URI, an absolute path, or a path relative to the dataset folder; see
    the module docstring); every shard the manifest names must have one, and a local one must exist. No shard is
    read or copied. contents: folders moved (renamed) into the dataset, by their path in it (ingest_source's chunk
    folders, which relative locations name). Everything is written to a temporary folder beside ``directory``,
    which is renamed into place: an interrupted write leaves no half-written dataset, and a previous dataset at
    ``directory`` is removed only once the new one is in place (``_swap_in``).
    """
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.partial-", dir=directory.parent))
    try:
        shards, summary = write_manifest(staging / MANIFEST_FILE)  # before ``contents`` move: it may read them
        for name, folder in (contents or {}).items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(folder, staging / name)  # a rename: the folders are beside ``directory``
        shards = sorted(shards)
        _shard_table(shards, locations, staging).to_parquet(staging / SHARD_TABLE, index=False)
        (staging / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True, default=str))
        sha256 = dataset_sha256(staging / MANIFEST_FILE, shards, summary.get("listing_sha256", ""))
        _swap_in(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return sha256, summary


def _shard_table(shards: list[str], locations: Mapping[str, str], staging: Path) -> pd.DataFrame:
    """The shard table of ``shards`` (ValueError naming a shard without a location or whose local file is missing)."""
    for shard in shards:
        if shard not in locations:
            raise ValueError(f"shard {shard} named by the manifest has no location (none of the chunks wrote it)")
        if not is_remote(locations[shard]) and not (staging / locations[shard]).is_file():
            raise ValueError(f"shard {shard} named by the manifest is missing at {locations[shard]}")
    return pd.DataFrame({"shard": shards, "location": [locations[shard] for shard in shards]}, dtype=object)


def is_remote(location: str) -> bool:
    """A location in a blob store (``s3://``, ``gs://``, ...), not a local path."""
    return "://" in location and not location.startswith("file://")


def _swap_in(staging: Path, directory: Path) -> None:
    """Rename ``staging`` to ``directory``; an existing ``directory`` is moved aside first and removed only
    after the rename, or moved back if it fails. At no moment is ``directory`` a half-written dataset."""
    if not directory.exists():
        staging.rename(directory)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=directory.parent))
    old.rmdir()  # a unique free name for the rename below
    directory.rename(old)
    try:
        staging.rename(directory)
    except BaseException:
        old.rename(directory)
        raise
    shutil.rmtree(old, ignore_errors=True)


def read_manifest(directory: Path) -> pd.DataFrame:
    """The manifest of a dataset folder (no pixels are read)."""
    return pd.read_parquet(directory / MANIFEST_FILE)


def count_stored_images(manifest: pd.DataFrame, stored_shards: set[str]) -> int:
    """How many manifest rows have their shard among ``stored_shards`` (the sha256s of the shard files the dataset
    holds): what validation compares the row count to."""
    return int(manifest["shard"].isin(stored_shards).sum())


def shard_locations(directory: Path) -> dict[str, str]:
    """shard sha256 -> location (shards.parquet) of a dataset folder; {} for a folder without the table."""
    table = directory / SHARD_TABLE
    if not table.is_file():
        return {}
    stat = table.stat()
    return _read_shard_table(str(table), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _read_shard_table(
    path: str, modified: int, size: int
) -> dict[str, str]:  # keyed on mtime and size: a rewrite is read anew
    table = pd.read_parquet(path)
    return dict(zip(table["shard"], table["location"]))


def shard_path(directory: Path, shard: str) -> Path:
    """The local file of ``shard`` of the dataset folder ``directory``: where its location (shards.parquet) points
    when that is local, else ``directory/shards/<sha256>.npy`` (where a shard fetched from a blob store goes)."""
    local = directory / SHARDS_FOLDER / f"{shard}{SHARD_SUFFIX}"
    location = shard_locations(directory).get(shard)
    if location is None or is_remote(location) or local.is_file():
        return local
    return directory / location.removeprefix("file://")


def present_shards(directory: Path) -> set[str]:
    """The sha256s of the shards of a local dataset folder whose files exist (where their locations point, or in
    shards/)."""
    found = {path.stem for path in (directory / SHARDS_FOLDER).glob(f"*{SHARD_SUFFIX}")}
    return found | {shard for shard in shard_locations(directory) if shard_path(directory, shard).is_file()}


def image_shape(directory: Path, manifest: pd.DataFrame) -> tuple[int, ...]:
    """(C, H, W) of the dataset's images, from a shard's header (ShardError when no shard of ``manifest`` is there)."""
    if manifest.empty:
        return (0, 0, 0)
    for shard in manifest["shard"].unique():
        if shard_path(directory, shard).is_file():
            return tuple(np.load(shard_path(directory, shard), mmap_mode="r", allow_pickle=False).shape[1:])
    raise ShardError(
        f"shard {manifest['shard'].iloc[0]} is missing: no shard of dataset {directory} exists; ingest the source again"
    )


def fetch_shards(directory: Path, manifest: pd.DataFrame, fetch: Callable[[Path], None], *, limit: int = 0) -> None:
    """Download the shards of ``manifest``'s rows missing under ``directory`` (only the first ``limit`` when > 0)."""
    shards = manifest["shard"].unique()
    for shard in shards[:limit] if limit else shards:
        if not shard_path(directory, shard).is_file():
            fetch(shard_path(directory, shard))


def fetch_shards_once_per_node(directory: Path, manifest: pd.DataFrame, fetch: Callable[[Path], None]) -> None:
    """fetch_shards into a folder the processes of one node share, each shard downloaded once: the processes
    take an exclusive lock on ``directory/.fetch.lock`` in turn; the first downloads, the others find the shards
    there. ``fetch`` must write atomically (a shard under its own name is whole)."""
    (directory / SHARDS_FOLDER).mkdir(parents=True, exist_ok=True)
    with open(directory / ".fetch.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed, also when the process dies
        fetch_shards(directory, manifest, fetch)


def images_bytes(directory: Path, manifest: pd.DataFrame) -> int:
    """Bytes the images of ``manifest``'s rows take in memory."""
    return len(manifest) * int(np.prod(image_shape(directory, manifest)))


def read_images(directory: Path, manifest: pd.DataFrame, *, max_bytes: int = 0, name: str = "") -> np.ndarray:
    """The images of ``manifest``'s rows (any subset of a dataset's manifest), (N, C, H, W) uint8 in its row order.

    Reads one shard at a time and only the shards it needs, each checked against its hash (ShardError naming
    the shard otherwise). max_bytes > 0: refuse (ValueError) rather than read more than that into memory.
    """
    needed = images_bytes(directory, manifest)
    if max_bytes and needed > max_bytes:
        raise ValueError(
            f"dataset {name or directory}: {len(manifest)} images take {needed / 2**20:.0f} MiB, over the host-memory "
            "budget of "
            f"{max_bytes / 2**20:.0f} MiB; read them streamed (ssl_models.data.StreamingPairs) or raise the budget"
        )
    images = np.empty((len(manifest), *image_shape(directory, manifest)), dtype=np.uint8)
    positions = np.arange(len(manifest))
    for shard, rows in manifest.groupby("shard", sort=True).indices.items():
        images[positions[rows]] = read_shard(
            shard_path(directory, shard), shard, manifest["shard_row"].to_numpy()[rows]
        )
    return images


def shard_rows(
    directory: Path, manifest: pd.DataFrame, case_ids: list, *, fetch: Callable[[Path], None] | None = None
) -> list[ShardRows]:
    """The rows of ``manifest`` (a subset of a dataset's) per shard, for StreamingPairs; case_ids: one per row.
    fetch: downloads a shard missing under ``directory`` when it is read (ShardRows)."""
    cases = np.asarray(case_ids, dtype=object).astype(str)
    positions = manifest["shard_row"].to_numpy()
    return [
        ShardRows(shard_path(directory, shard), shard, positions[rows], cases[rows], fetch)
        for shard, rows in manifest.groupby("shard", sort=True).indices.items()
    ]


def read_summary(directory: Path) -> dict:
    """The ingest summary of a dataset folder ({} for datasets written without one)."""
    path = directory / SUMMARY_FILE
    return json.loads(path.read_text()) if path.is_file() else {}

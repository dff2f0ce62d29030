"""The shard file: a content-addressed ``<sha256>.npy`` holding (n, C, H, W) uint8 images.

A dataset is a manifest (one row per image, with its shard and its row in that shard) plus shard files
of bounded size (sslflow/data/dataset.py). A shard is an ordinary ``.npy`` file, so it is read
memory-mapped, one shard at a time; its name is the sha256 of its bytes, so a shard that was changed
or cut short is detected when it is read, and named. Pure numpy: runs wherever the engine runs.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SHARD_SUFFIX = ".npy"
HASH_BLOCK = 8 * 2**20


class ShardError(ValueError):
    """A shard that is missing or whose bytes do not match its name (its sha256); the message names it."""


def write_shard(directory: Path, pixels: np.ndarray) -> str:
    """Write (n, C, H, W) uint8 ``pixels`` as ``directory/<sha256>.npy``; return the sha256.

    Written under a temporary name and renamed, so a shard file with a hash name is always complete.
    """
    if pixels.dtype != np.uint8 or pixels.ndim != 4:
        raise ValueError(f"a shard holds (n, C, H, W) uint8 images, got {pixels.dtype} {pixels.shape}")
    directory.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".partial-", suffix=SHARD_SUFFIX, dir=directory)
    try:
        with os.fdopen(handle, "wb") as stream:
            np.save(stream, np.ascontiguousarray(pixels), allow_pickle=False)
        sha256 = file_digest(Path(temporary))
        os.replace(temporary, directory / f"{sha256}{SHARD_SUFFIX}")
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return sha256


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def read_shard(path: Path, sha256: str, rows: np.ndarray | None = None, *, verify: bool = True) -> np.ndarray:
    """The images of one shard, (n, C, H, W) uint8 (only ``rows``, positions in the shard, when given).

    verify: check the file's bytes against ``sha256`` first. Raises ShardError naming the shard when the
    file is missing or its bytes do not match.
    """
    if not path.is_file():
        raise ShardError(f"shard {sha256} is missing: {path} does not exist; ingest the source again")
    if verify and file_digest(path) != sha256:
        raise ShardError(
            f"shard {sha256} ({path}) is corrupt: its bytes do not match its sha256; ingest the source again"
        )
    mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    return np.array(mapped if rows is None else mapped[rows])


@dataclass(frozen=True)
class ShardRows:
    """The rows of one shard a run uses: path, sha256, rows (n,) positions in the shard, case_ids (n,).

    fetch: downloads the shard to ``path`` when it is not there (a dataset in a blob store: each rank
    fetches only the shards it reads, in the prefetch thread); a fetched shard is deleted once read,
    so a rank's disk holds only the shards in flight.
    """

    path: Path
    sha256: str
    rows: np.ndarray
    case_ids: np.ndarray
    fetch: Callable[[Path], None] | None = field(default=None, compare=False)

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """((n, C, H, W) uint8, case ids (n,)); ShardError naming the shard when it is missing or corrupt."""
        fetched = self.fetch is not None and not self.path.is_file()
        if fetched:
            self.fetch(self.path)
        try:
            return read_shard(self.path, self.sha256, self.rows), self.case_ids
        finally:
            if fetched:
                self.path.unlink(missing_ok=True)

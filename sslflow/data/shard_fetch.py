"""A dataset in a blob store read shard by shard: the manifest and summary downloaded, each shard fetched when a
reader needs it (sslflow/data/dataset.py: ``fetch_shards``, ``ShardRows``), so a task downloads only what it reads.

The blob store is what the caller has: anything with the ``BlobStore`` methods (Flyte's FileAccessProvider has them;
tasks/shared.py passes the task's own). Nothing here imports a workflow engine.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import pandas as pd

from ssl_models.shards import SHARD_SUFFIX, ShardError
from sslflow.data.dataset import (
    MANIFEST_FILE,
    SHARD_TABLE,
    SHARDS_FOLDER,
    SUMMARY_FILE,
    fetch_shards,
    is_remote,
    read_manifest,
    shard_locations,
)

Fetch = Callable[[Path], None]  # downloads the shard named like its path to that path


class BlobStore(Protocol):
    """The blob store calls this module makes (the names of flytekit's FileAccessProvider)."""

    def exists(self, path: str) -> bool: ...

    def get_data(self, remote_path: str, local_path: str) -> None: ...

    def get_random_local_directory(self) -> str: ...

    def get_filesystem_for_path(self, path: str): ...  # an fsspec file system: ``ls(path, detail=False)``


def remote_locations(remote: str, store: BlobStore) -> dict[str, str]:
    """shard sha256 -> URI of the dataset at ``remote`` from its shard table ({} for a dataset without one: its shards
    are in shards/); a relative location is inside the dataset's folder."""
    if not store.exists(f"{remote}/{SHARD_TABLE}"):
        return {}
    folder = Path(store.get_random_local_directory())
    store.get_data(f"{remote}/{SHARD_TABLE}", str(folder / SHARD_TABLE))
    return {
        shard: location if is_remote(location) else f"{remote}/{location}"
        for shard, location in shard_locations(folder).items()
    }


def _shard_fetch(remote: str, name: str, store: BlobStore, locations: dict[str, str]) -> Fetch:
    """fetch(path): the shard named like ``path`` downloaded from its location to ``path``, under a temporary name
    first (a shard file under its own name is whole); ShardError naming it when its location is gone."""

    def fetch(path: Path) -> None:
        shard = path.name.removesuffix(SHARD_SUFFIX)
        location = locations.get(shard, f"{remote}/{SHARDS_FOLDER}/{path.name}")
        partial = path.with_name(f".partial-{os.getpid()}-{path.name}")
        try:
            store.get_data(location, str(partial))
        except Exception as error:
            if store.exists(location):
                raise
            raise ShardError(
                f"shard {shard} of dataset {name} is missing at {location} (the ingest chunk output it references "
                "was deleted); ingest the source again"
            ) from error
        os.replace(partial, path)

    return fetch


def dataset_without_shards(remote: str, name: str, store: BlobStore) -> tuple[Path, Fetch]:
    """(folder, fetch) for reading the dataset ``name`` at ``remote`` (no trailing slash) shard by shard: a local
    folder with only the manifest and summary downloaded; fetch(path) downloads the shard named like ``path`` from its
    location (the dataset's shard table) to ``path``. A shard whose location is gone is a ShardError naming it."""
    folder = Path(store.get_random_local_directory())
    store.get_data(f"{remote}/{MANIFEST_FILE}", str(folder / MANIFEST_FILE))
    if store.exists(f"{remote}/{SUMMARY_FILE}"):
        store.get_data(f"{remote}/{SUMMARY_FILE}", str(folder / SUMMARY_FILE))
    (folder / SHARDS_FOLDER).mkdir()  # the folder has no shard table: its shards are fetched into shards/
    return folder, _shard_fetch(remote, name, store, remote_locations(remote, store))


def rows_with_shards(
    folder: Path, fetch: Fetch | None, rows: Callable[[pd.DataFrame], pd.Series]
) -> tuple[Path, pd.DataFrame]:
    """(``folder``, the manifest rows where ``rows(manifest)`` is True), the shards of those rows, and only those,
    fetched into the folder (``fetch`` None: a local dataset, its shards are there already)."""
    manifest = read_manifest(folder)
    manifest = manifest[rows(manifest).to_numpy(dtype=bool)].reset_index(drop=True)
    if fetch is not None:
        fetch_shards(folder, manifest, fetch)
    return folder, manifest


def stored_shards(remote: str, store: BlobStore) -> set[str]:
    """The sha256s of the shards of the dataset at ``remote`` whose files exist where its shard table says, listed
    without downloading them (one listing per folder of shards, i.e. per chunk)."""
    folders = {location.rsplit("/", 1)[0] for location in remote_locations(remote, store).values()} or {
        f"{remote}/{SHARDS_FOLDER}"
    }
    names = [
        name
        for shards in sorted(folders)
        if store.exists(shards)
        for name in store.get_filesystem_for_path(shards).ls(shards, detail=False)
    ]
    return {
        name.rstrip("/").rsplit("/", 1)[-1].removesuffix(SHARD_SUFFIX) for name in names if name.endswith(SHARD_SUFFIX)
    }


def node_shards_folder(content_sha256: str) -> Path:
    """A folder for a dataset's shards that every process of this node (pod) shares: the ranks of one training pod
    download each shard once into it (sslflow.data.dataset.fetch_shards_once_per_node)."""
    return Path(tempfile.gettempdir()) / "sslflow-node-shards" / content_sha256

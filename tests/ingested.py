"""Ingest a source as production does (sslflow.data.chunks.ingest_source: plan -> decode -> join, one process) and
read the dataset back with the production readers, for tests that look at what ingest made of their files."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from ssl_models.shards import SHARD_SUFFIX
from sslflow.config import IngestConfig
from sslflow.data.chunks import ingest_source
from sslflow.data.dataset import assemble_dataset, labelled_cases, read_images, write_case_shards
from sslflow.data.pseudonyms import Pseudonyms


def ingest(source, config: IngestConfig, **options) -> tuple[pd.DataFrame, np.ndarray, dict]:
    """(manifest, images (N, C, H, W) uint8 in its row order, summary) of ``source`` ingested into a temporary folder
    (outside the source). options: ingest_source's keywords (workers, pseudonym_key)."""
    with tempfile.TemporaryDirectory(prefix="sslflow-test-ingest-") as folder:
        _, manifest, summary = ingest_source(str(source), config, Path(folder) / "dataset", **options)
        return manifest, read_images(Path(folder) / "dataset", manifest), summary


def labels(manifest: pd.DataFrame) -> list:
    """The manifest's labels as a list, None for an unlabelled image."""
    return [None if pd.isna(label) else label for label in manifest["label"]]


def image_keys(paths: list[str]) -> list[str]:
    """The image keys ingest gives the files at ``paths`` (in the source), with the default pseudonym key."""
    return [Pseudonyms().pseudonym("file", path) for path in paths]


def write_arrays(directory: Path, manifest: pd.DataFrame, images: np.ndarray) -> str:
    """A dataset folder at ``directory`` from a manifest whose splits a test sets itself (MANIFEST_COLUMNS; shard
    columns are filled in) and its images (N, C, H, W) uint8, written as a chunk's shards are and joined as ingest joins
    them (write_case_shards, assemble_dataset); returns its content sha256."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{directory.name}.shards-", dir=directory.parent) as folder:
        case_ids = manifest["case_id"].astype(str).tolist()
        shard, row = write_case_shards(
            Path(folder) / "shards", images, case_ids, labelled_cases(case_ids, manifest["label"].notna().to_numpy())
        )
        locations = {sha256: f"shards/{sha256}{SHARD_SUFFIX}" for sha256 in set(shard)}
        return assemble_dataset(
            directory,
            manifest.assign(shard=shard, shard_row=row),
            locations,
            {},
            contents={"shards": Path(folder) / "shards"},
        )

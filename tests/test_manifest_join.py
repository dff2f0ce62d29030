"""The streamed join (sslflow/data/manifest_join.py) makes finish_manifest's decisions: the same rows, cases, splits,
summary and refusals as finish_manifest on the joined table, over chunks interleaved in listing order and batches
that cut through them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sslflow.config import IngestConfig
from sslflow.data import manifest_join
from sslflow.data.chunks import CHUNK_REPORT, CHUNK_TABLE, DecodedChunk, join_chunks
from sslflow.data.manifest import MANIFEST_COLUMNS, decoded_table, finish_manifest
from sslflow.data.types import SourceError, SourceImages

ROWS = 60


def _table(seed: int, *, conflicting: bool) -> pd.DataFrame:
    """A chunk's decoded table of DICOM-like rows: identical pixels across chunks, second copies of an instance
    (one lossy), rows with and without a case and a label."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 4, (ROWS, 1, 1, 2), dtype=np.uint8)  # 16 distinct images: many copies
    labels = [None if row % 3 else str(int(pixels[row].sum()) % 2) for row in range(ROWS)]
    if conflicting:
        labels = [None if row % 3 else str(row % 2) for row in range(ROWS)]
    images = SourceImages(
        pixels=pixels,
        source_paths=[f"file-{seed}-{row}" for row in range(ROWS)],
        labels=labels,
        case_ids=[f"patient{row % 7}" if row % 4 else None for row in range(ROWS)],
        sites=[f"site{row % 2}" for row in range(ROWS)],
        size_bytes=[100] * ROWS,
        modes=["L"] * ROWS,
        widths=[2] * ROWS,
        heights=[1] * ROWS,
        modalities=["CT" if row % 5 else "MR" for row in range(ROWS)],
        case_sources=["metadata" if row % 4 else "none" for row in range(ROWS)],
        instances=[f"instance-{row % 45}" if row % 2 else "" for row in range(ROWS)],
        lossless=[row % 6 != 1 for row in range(ROWS)],
    )
    return decoded_table(images, IngestConfig(image_size=2))


def _chunks(folder: Path, *, conflicting: bool = False) -> tuple[list[DecodedChunk], pd.DataFrame]:
    """Three chunks whose listing positions interleave, and their rows joined in listing order."""
    chunks, tables = [], []
    for index in range(3):
        table = _table(index, conflicting=conflicting).assign(
            listing_position=np.arange(ROWS) * 3 + (2 - index), shard=f"{index:064x}", shard_row=np.arange(ROWS)
        )
        (folder / f"chunk-{index}").mkdir(parents=True)
        table.to_parquet(folder / f"chunk-{index}" / CHUNK_TABLE, index=False)
        report = {"source": "s3://b/p", "images": ROWS, "quarantined": [], "held_back": {}, "read": {}}
        report |= {"skipped_non_image": {}, "chunk_sha256": f"{index:064x}", "decoding": "d"}
        (folder / f"chunk-{index}" / CHUNK_REPORT).write_text(json.dumps(report))
        chunks.append(DecodedChunk(folder / f"chunk-{index}", f"s3://b/chunk-{index}/shards"))
        tables.append(table)
    joined = pd.concat(tables, ignore_index=True).sort_values("listing_position", kind="stable")
    return chunks, joined.reset_index(drop=True)


@pytest.mark.parametrize("max_images", [0, 40])
def test_the_streamed_join_keeps_the_rows_finish_manifest_keeps(tmp_path, monkeypatch, max_images):
    monkeypatch.setattr(manifest_join, "BATCH_ROWS", 7)
    monkeypatch.setattr(manifest_join, "TABLES_KEPT", 1)
    config = IngestConfig(image_size=2, max_images=max_images)
    chunks, joined = _chunks(tmp_path)
    expected, keep, summary = finish_manifest(joined, config)
    expected = expected.assign(shard=joined["shard"].to_numpy()[keep], shard_row=joined["shard_row"].to_numpy()[keep])
    _, streamed = join_chunks(chunks, config, tmp_path / "dataset")
    manifest = pd.read_parquet(tmp_path / "dataset" / "manifest.parquet")
    pd.testing.assert_frame_equal(manifest, expected[list(MANIFEST_COLUMNS)].reset_index(drop=True))
    assert summary["duplicates_dropped"] and summary["instance_copies_dropped"]
    assert {key: streamed[key] for key in summary} == summary


def test_the_streamed_join_refuses_identical_images_with_different_labels_as_finish_manifest_does(tmp_path):
    chunks, joined = _chunks(tmp_path, conflicting=True)
    with pytest.raises(SourceError) as expected:
        finish_manifest(joined, IngestConfig(image_size=2))
    with pytest.raises(SourceError) as streamed:
        join_chunks(chunks, IngestConfig(image_size=2), tmp_path / "dataset")
    assert str(streamed.value) == str(expected.value)

"""The join's memory does not grow with the images: its facts per image are in sqlite on the local disk (a page cache
of manifest_join.CACHE_KIB), not in numpy arrays (about 100 bytes an image with their sort temporaries) nor in the
joined table (about 2 KB an image as pandas objects, so that a join of 10^6 images outgrew its pod). The figures at
scale are benchmarks/cluster_scale.py's; here the join's traced peak may grow by under 50 bytes an image from 12,000 to
48,000 images (the numpy facts grew by about 100; 5 alone and 24 in the full suite's worker were measured now)."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd

from sslflow.config import IngestConfig
from sslflow.data.chunks import CHUNK_REPORT, CHUNK_TABLE, DecodedChunk, join_chunks
from sslflow.data.manifest import decoded_table
from sslflow.data.types import SourceImages

CHUNK_ROWS = 4000


def _chunk(folder: Path, index: int, rows: int) -> DecodedChunk:
    """A decoded chunk's tables as decode_chunk writes them for DICOM images (its shards in a blob store: none is
    read)."""
    rng = np.random.default_rng(index)
    first = index * CHUNK_ROWS
    images = SourceImages(
        pixels=rng.integers(0, 256, (rows, 1, 4, 4), dtype=np.uint8),
        source_paths=[f"file-{first + row:032x}" for row in range(rows)],
        labels=[str(row % 3) if row % 4 == 0 else None for row in range(rows)],
        case_ids=[f"patient{(first + row) // 4:07d}" for row in range(rows)],
        sites=["default"] * rows,
        size_bytes=[2048] * rows,
        modes=["L"] * rows,
        widths=[4] * rows,
        heights=[4] * rows,
        modalities=["CT"] * rows,
        case_sources=["patient"] * rows,
        instances=[f"instance-{first + row:020x}" for row in range(rows)],
        lossless=[True] * rows,
    )
    table = decoded_table(images, IngestConfig(image_size=4))
    shards = [f"{index:02x}{row // 500:062x}" for row in range(rows)]
    folder.mkdir(parents=True)
    table.assign(
        listing_position=np.arange(first, first + rows), shard=shards, shard_row=np.arange(rows) % 500
    ).to_parquet(folder / CHUNK_TABLE, index=False)
    report = {
        "source": "s3://hospital/scans",
        "images": rows,
        "quarantined": [],
        "held_back": {},
        "read": {},
        "skipped_non_image": {},
        "chunk_sha256": f"{index:064x}",
        "decoding": f"{index:032x}",
    }
    (folder / CHUNK_REPORT).write_text(json.dumps(report))
    return DecodedChunk(folder, f"s3://flyte/chunk-{index}/shards")


def _join_peak(folder: Path, images: int) -> int:
    """The peak of the memory tracemalloc traces (Python objects and numpy arrays: a joined table's columns as
    lists, per-image arrays; not pyarrow's buffers, which the join holds per chunk table and per batch, nor sqlite's
    page cache) while the chunks of ``images`` images are joined."""
    chunks = [_chunk(folder / f"chunk-{index}", index, CHUNK_ROWS) for index in range(images // CHUNK_ROWS)]
    tracemalloc.start()
    try:
        summary = join_chunks(chunks, IngestConfig(image_size=4), folder / "dataset")[-1]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert summary["images"] == images
    return peak


def test_the_joins_memory_grows_by_a_few_bytes_per_image(tmp_path):
    small = _join_peak(tmp_path / "small", 12_000)
    large = _join_peak(tmp_path / "large", 48_000)
    per_image = (large - small) / 36_000
    assert per_image < 50, f"the join's peak grew by {per_image:.0f} bytes per image ({small} -> {large} bytes)"
    manifest = pd.read_parquet(tmp_path / "large" / "dataset" / "manifest.parquet")
    assert manifest["case_id"].tolist() == [f"patient{row // 4:07d}" for row in range(48_000)]

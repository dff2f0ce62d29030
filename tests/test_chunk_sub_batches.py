"""A chunk task's memory is bounded by the images it holds decoded, not by the frames its files turn out to hold: the
plan counts a small file as one image (it reads the frame count only of files of FRAME_PROBE_BYTES or more), so a
chunk of small multi-frame objects decodes into many times the images it was cut for, and decode_chunk decodes and
writes it a sub-batch at a time (sslflow/data/sub_batches.py)."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from dicom_files import write_dicom

import sslflow.data.chunks as chunks_module
from sslflow.config import IngestConfig
from sslflow.data.chunks import (
    CHUNK_REPORT,
    CHUNK_TABLE,
    CHUNKS,
    MAX_CHUNK_FACTOR,
    chunk_json,
    decode_chunk,
    ingest_source,
    plan_chunks,
)
from sslflow.data.types import UndecodableImageError

FRAMES = 6  # per object: 6 frames of 8 x 8, a few KiB on disk
SPLIT = IngestConfig(image_size=8, chunk_images=8, max_bad_fraction=0.5)  # at most 16 images held decoded
BUDGET = MAX_CHUNK_FACTOR * SPLIT.chunk_images


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    """A PACS export of 48 multi-frame objects (FRAMES frames each) of 32 patients (16 with one object, 16 with two,
    in the patient's folder), one file that is not an image, and a metadata.csv keyed by SOPInstanceUID labelling the
    objects of every patient but each third one."""
    root = tmp_path_factory.mktemp("multiframe") / "export"
    rows = []
    for index in range(48):
        patient = index if index < 16 else 16 + (index - 16) // 2
        pixels = np.random.default_rng(index).integers(0, 4096, (FRAMES, 8, 8), dtype=np.int16)
        path = write_dicom(root / f"patient{patient:03d}" / f"IM{index:04d}", pixels, PatientID=f"P-{patient:03d}")
        label = "" if patient % 3 == 0 else ("malignant" if patient % 2 else "benign")
        rows.append(f"{pydicom.dcmread(path).SOPInstanceUID},{label}")
    (root / "patient999").mkdir()
    (root / "patient999" / "IM9999.dcm").write_bytes(b"not a DICOM file" * 20)
    (root / "metadata.csv").write_text("sop_instance_uid,label\n" + "\n".join(rows) + "\n")
    return root


def test_a_chunk_of_small_multi_frame_objects_is_decoded_a_batch_of_images_at_a_time(export, tmp_path, monkeypatch):
    written = []  # the images of each write_case_shards call: what the chunk held decoded at once

    def write_case_shards(directory, pixels, *arguments):
        written.append(len(pixels))
        return original(directory, pixels, *arguments)

    original = chunks_module.write_case_shards
    monkeypatch.setattr(chunks_module, "write_case_shards", write_case_shards)
    _, manifest, summary = ingest_source(str(export), SPLIT, tmp_path / "split")
    reports = [json.loads(path.read_text()) for path in (tmp_path / "split" / CHUNKS).glob(f"*/{CHUNK_REPORT}")]
    assert max(report["images"] for report in reports) >= 4 * BUDGET  # files of many times its budget in a chunk
    assert max(written) <= BUDGET + FRAMES - 1 and len(written) > len(reports)
    assert max(report["decoded_at_most"] for report in reports) <= BUDGET + FRAMES - 1
    assert sum(report["sub_batches"] for report in reports) == len(written)

    # the same dataset as decoded in one piece (one chunk, one sub-batch), its shards cut elsewhere
    _, whole, whole_summary = ingest_source(
        str(export), IngestConfig(image_size=8, max_bad_fraction=0.5), tmp_path / "whole"
    )
    columns = ["image_key", "sha256", "case_id", "label", "split", "site"]
    assert len(manifest) == 48 * FRAMES and manifest["image_key"].is_unique
    assert (
        manifest[columns]
        .sort_values("image_key")
        .reset_index(drop=True)
        .equals(whole[columns].sort_values("image_key").reset_index(drop=True))
    )
    assert manifest["case_id"].nunique() == 32
    # a case's images in a chunk are in one shard (the plan may cut between two files of a patient: their case is
    # known only once decoded)
    tables = [pd.read_parquet(path) for path in (tmp_path / "split" / CHUNKS).glob(f"*/{CHUNK_TABLE}")]
    assert all((table.groupby("case_id")["shard"].nunique() == 1).all() for table in tables)
    assert (manifest.groupby("shard")["label"].apply(lambda labels: labels.notna().nunique()) == 1).all()
    labelled = manifest.dropna(subset=["label"])
    assert len(labelled) == 32 * FRAMES and labelled.groupby("case_id")["label"].nunique().eq(1).all()
    assert len(summary["quarantined"]) == len(whole_summary["quarantined"]) == 1
    assert summary["read"]["listed"] == whole_summary["read"]["listed"] == 49


def _peak_decoding(chunk: dict, folder: Path) -> int:
    """The peak of the memory tracemalloc traces (numpy's pixel arrays among it) while ``chunk`` is decoded."""
    tracemalloc.start()
    try:
        decode_chunk(chunk_json(chunk), folder)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak


def test_a_chunks_memory_grows_with_its_batch_not_with_its_files_frames(export, tmp_path, monkeypatch):
    """Chunks of the first 24 objects and of all 48 (144 and 288 frames decoded at 128 x 128: 16 KiB each) decoded
    with the batch_images of chunk_images=8: the traced peak grows by under a quarter of an image's pixels per image
    added (its rows of the chunk's table; decoded in one piece it grew by about 135 KiB an image, the pixels held
    twice and their float64 statistics)."""
    monkeypatch.setenv("SSLFLOW_INGEST_CACHE", "off")  # every file decoded
    (chunk,) = plan_chunks(str(export), IngestConfig(image_size=128, max_bad_fraction=0.5))
    chunk = {**chunk, "batch_images": BUDGET}
    _peak_decoding({**chunk, "records": chunk["records"][:4]}, tmp_path / "warm-up")
    half = _peak_decoding({**chunk, "records": chunk["records"][:24]}, tmp_path / "half")
    whole = _peak_decoding({**chunk, "records": chunk["records"][:48]}, tmp_path / "whole")
    assert (whole - half) / (24 * FRAMES) < 128 * 128 / 4, (half, whole)


def test_a_case_over_the_batch_is_held_whole_and_bad_files_count_over_the_whole_chunk(tmp_path):
    """A patient of 6 objects (36 frames) in a chunk decoded 8 images at a time stays in one shard (held whole, at
    most a batch and a file more), and max_bad_fraction applies to the whole chunk, whose refusal leaves nothing."""
    root = tmp_path / "export"
    for index in range(10):
        patient = 0 if index < 6 else index
        pixels = np.random.default_rng(index).integers(0, 4096, (FRAMES, 8, 8), dtype=np.int16)
        write_dicom(root / f"patient{patient:03d}" / f"IM{index:04d}", pixels, PatientID=f"P-{patient:03d}")
    (root / "zz").mkdir()
    (root / "zz" / "IM9999.dcm").write_bytes(b"not a DICOM file" * 20)
    (chunk,) = plan_chunks(str(root), IngestConfig(image_size=8, max_bad_fraction=0.1))  # 1 of 11 files allowed
    folder = decode_chunk(chunk_json({**chunk, "batch_images": 8}), tmp_path / "chunk")
    table, report = pd.read_parquet(folder / CHUNK_TABLE), json.loads((folder / CHUNK_REPORT).read_text())
    assert len(table) == 10 * FRAMES and report["sub_batches"] > 1
    assert (table.groupby("case_id")["shard"].nunique() == 1).all()
    assert 6 * FRAMES <= report["decoded_at_most"] < 6 * FRAMES + 8 + FRAMES
    assert len(report["quarantined"]) == 1 and report["read"]["listed"] == 11
    strict = {**chunk, "decode": {**chunk["decode"], "max_bad_fraction": 0.0}, "batch_images": 8}
    with pytest.raises(UndecodableImageError, match="1 of 11 image files cannot be decoded"):
        decode_chunk(chunk_json(strict), tmp_path / "strict")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["chunk", "export"]

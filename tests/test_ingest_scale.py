"""What grows with the number of files and what must not (issue #21): the plan's literal grows with the number of
chunks only; a chunk's report with counts, not with the metadata rows it did not match; a Dataset's folder with its
tables only (its shards stay where the chunks wrote them), and a shard gone from there is named with what to do."""

from __future__ import annotations

import io
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flytekit import FlyteContextManager
from flytekit.core.type_engine import TypeEngine
from PIL import Image

from ssl_models.shards import ShardError
from sslflow.config import IngestConfig
from sslflow.data import fingerprint, metadata_catalog
from sslflow.data.chunks import CHUNK_REPORT, decode_chunk, ingest_source, plan_to_files
from sslflow.data.dataset import SHARD_TABLE, read_images, read_manifest, shard_locations, shard_path
from sslflow.data.sources import fingerprint_source, parquet_list
from sslflow.data.types import SourceError


def _tiny_pngs(folder: Path, count: int) -> None:
    folder.mkdir(parents=True)
    for index in range(count):
        Image.fromarray(np.full((2, 2), index % 251, dtype=np.uint8)).save(folder / f"img{index:05d}.png")


def _plan_literal_bytes(folder: Path, config: IngestConfig) -> tuple[int, int]:
    """(bytes of plan_ingest's output literal as propeller would store it, number of chunks)."""
    from tasks.ingest import plan_ingest

    references = plan_ingest(source=str(folder), fingerprint=fingerprint_source(str(folder)), config=config)
    python_type = plan_ingest.python_interface.outputs["o0"]
    literal = TypeEngine.to_literal(
        FlyteContextManager.current_context(), references, python_type, TypeEngine.to_literal_type(python_type)
    )
    return literal.to_flyte_idl().ByteSize(), len(references)


def test_the_plan_literal_does_not_grow_with_the_number_of_files(tmp_path, monkeypatch):
    """200 and 2,000 files, one chunk each: the same literal size (a reference and its hash per chunk)."""
    monkeypatch.setenv("SSLFLOW_INGEST_CACHE", "off")
    config = IngestConfig(image_size=8, chunk_images=2**20)
    _tiny_pngs(tmp_path / "few", 200)
    _tiny_pngs(tmp_path / "many", 2000)
    (few, few_chunks), (many, many_chunks) = (
        _plan_literal_bytes(tmp_path / "few", config),
        _plan_literal_bytes(tmp_path / "many", config),
    )
    assert few_chunks == many_chunks == 1
    assert many <= few + 16 and many < 1000, (few, many)


def _uid_keyed_folder(root: Path, extra_rows: int) -> Path:
    """Three DICOM files and a metadata.csv keyed by SOPInstanceUID, with ``extra_rows`` rows naming objects it
    lacks."""
    import pydicom
    from dicom_files import write_dicom

    uids = []
    for index, value in enumerate((100, 200, 300)):
        path = write_dicom(
            root / "export" / f"IM{index:04d}", np.full((16, 16), value, dtype=np.int16), PatientID=f"P-{index}"
        )
        uids.append(str(pydicom.dcmread(path).SOPInstanceUID))
    rows = [f"{uid},benign," for uid in uids] + [
        f"1.2.826.0.1.3680043.99999.{index},benign," for index in range(extra_rows)
    ]
    (root / "metadata.csv").write_text("sop_instance_uid,label,case_id\n" + "\n".join(rows) + "\n")
    return root


def test_a_chunk_report_does_not_grow_with_unmatched_metadata_rows_and_the_join_names_at_most_fifty(tmp_path):
    """The report of a chunk names the metadata file (its sha256), not its rows: 3 or 503 metadata rows, the same
    size. The join refuses the rows no image matched (all 500), naming 50 of them."""
    config = IngestConfig(image_size=16, chunk_images=1)
    sizes = {}
    for extra in (0, 500):
        folder = _uid_keyed_folder(tmp_path / f"pacs-{extra}", extra)
        chunk_file = plan_to_files(str(folder), config, tmp_path / f"plan-{extra}")[0]
        report = json.loads(
            (decode_chunk(chunk_file.read_text(), tmp_path / f"chunk-{extra}") / CHUNK_REPORT).read_text()
        )
        sizes[extra] = len(
            json.dumps(
                {key: value for key, value in report.items() if key not in ("decoding", "chunk_sha256", "source")}
            )
        )
        assert report["instance_metadata"]["file"] == "metadata.csv"
    assert abs(sizes[500] - sizes[0]) <= 8, sizes
    with pytest.raises(SourceError, match=r"500 metadata row\(s\) name a SOPInstanceUID") as refused:
        ingest_source(str(tmp_path / "pacs-500"), config, tmp_path / "dataset")
    assert str(refused.value).count("metadata.csv row ") == 50 and "row 5, column 'sop_instance_uid'" in str(
        refused.value
    )


def test_an_ingested_dataset_references_its_shards_and_names_a_missing_one(tmp_path):
    """ingest_source's dataset holds its chunk folders (moved, not copied) and a shard table that names each shard
    relative to it: the folder can be moved. A shard deleted from there is named, with what to do."""
    _tiny_pngs(tmp_path / "scans", 30)
    ingest_source(
        str(tmp_path / "scans"), IngestConfig(image_size=8, chunk_images=4, shard_megabytes=1), tmp_path / "dataset"
    )
    (tmp_path / "dataset").rename(tmp_path / "moved")
    manifest, locations = read_manifest(tmp_path / "moved"), shard_locations(tmp_path / "moved")
    assert (tmp_path / "moved" / SHARD_TABLE).is_file() and not (tmp_path / "moved" / "shards").exists()
    assert set(locations) == set(manifest["shard"]) and all(
        location.startswith("chunks/chunk-") for location in locations.values()
    )
    assert len(read_images(tmp_path / "moved", manifest)) == len(manifest)
    assert not list(tmp_path.glob(".dataset.*")), "no temporary chunk folder left beside it"
    shard = manifest["shard"].iloc[-1]
    shard_path(tmp_path / "moved", shard).unlink()
    with pytest.raises(ShardError, match=f"shard {shard} is missing: .*chunks/chunk-.*; ingest the source again"):
        read_images(tmp_path / "moved", manifest)


def _plan_and_chunk_peaks(folder: Path, config: IngestConfig, work: Path) -> tuple[int, int]:
    """The peaks of the memory tracemalloc traces (Python objects, numpy arrays) while ``folder`` is planned and while
    its first chunk is decoded (into ``work``/chunk)."""
    tracemalloc.start()
    try:
        chunk_files = plan_to_files(str(folder), config, work / "plan")
        plan = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        decode_chunk(chunk_files[0].read_text(), work / "chunk")
        return plan, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_the_plan_and_a_chunk_hold_a_batch_of_sop_instance_rows_not_the_file(tmp_path):
    """Metadata keyed by SOPInstanceUID is checked by the plan a batch at a time, and a chunk of one file holds the
    digests of the labelled rows its document names: 30,000 more labelled rows take the plan and the chunk under 100
    bytes a row (holding the rows took about 1 KB a row)."""
    config = IngestConfig(image_size=16, chunk_images=1)
    peaks = {}
    for extra in (10_000, 40_000):
        folder = _uid_keyed_folder(tmp_path / f"pacs-{extra}", extra)
        peaks[extra] = _plan_and_chunk_peaks(folder, config, tmp_path / f"work-{extra}")
        report = json.loads((tmp_path / f"work-{extra}" / "chunk" / CHUNK_REPORT).read_text())
        assert report["instance_metadata"]["file"] == "metadata.csv"
    for step, small, large in zip(("plan", "chunk"), peaks[10_000], peaks[40_000]):
        assert (large - small) / 30_000 < 100, (
            f"the {step} peaked at {small} bytes with 10,003 rows, {large} with 40,003"
        )


def _path_keyed_folder(root: Path, rows: int) -> Path:
    """``rows`` small PNG files, 100 a subfolder (the walk that finds files metadata.csv does not list holds one
    folder's names at a time), and a metadata.csv naming each by path, four files a case."""
    pngs = []
    for value in range(4):
        encoded = io.BytesIO()
        Image.fromarray(np.full((2, 2), value * 60, dtype=np.uint8)).save(encoded, format="PNG")
        pngs.append(encoded.getvalue())
    paths = [f"s{index // 100:03d}/img{index:05d}.png" for index in range(rows)]
    for index, path in enumerate(paths):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(pngs[index % 4])
    lines = "".join(f"{path},p{index // 4},{index % 2}\n" for index, path in enumerate(paths))
    (root / "metadata.csv").write_text("path,case_id,label\n" + lines)
    return root


def _peak_bytes(work, *arguments) -> int:
    """The peak of the memory tracemalloc traces while ``work(*arguments)`` runs."""
    tracemalloc.start()
    try:
        work(*arguments)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _check_the_plan_and_fingerprint_hold_a_batch(tmp_path, source_of) -> None:
    """Plan and fingerprint the source ``source_of(folder)`` makes of _path_keyed_folder's folders of 2,000 and 8,000
    rows: every row planned, each chunk in case order, and the 6,000 more rows take each step under 100 bytes a row."""
    config = IngestConfig(image_size=8, chunk_images=256)
    peaks = {}
    for rows in (2_000, 8_000):
        source = source_of(_path_keyed_folder(tmp_path / f"folder-{rows}", rows))
        plan = _peak_bytes(plan_to_files, source, config, tmp_path / f"plan-{rows}")
        peaks[rows] = plan, _peak_bytes(fingerprint_source, source)
        chunks = [
            [fields["case_id"] for _, fields, _ in json.loads(path.read_text())["records"]]
            for path in (tmp_path / f"plan-{rows}").iterdir()
        ]
        assert all(cases == sorted(cases) for cases in chunks), "each chunk's files in case order"
        assert sorted(case for cases in chunks for case in cases) == sorted(f"p{index // 4}" for index in range(rows))
    for step, small, large in zip(("plan", "fingerprint"), peaks[2_000], peaks[8_000]):
        assert (large - small) / 6_000 < 100, f"the {step} peaked at {small} bytes with 2,000 rows, {large} with 8,000"


def test_the_plan_holds_a_batch_of_a_folders_path_keyed_metadata_rows_not_the_file(tmp_path, monkeypatch):
    """A folder's metadata.csv naming files by path is read by the plan and the fingerprint a batch of rows at a time
    into a catalog on disk (sslflow/data/metadata_catalog.py, as for an S3 prefix): 6,000 more rows and files take
    them a few bytes a row at most (holding the rows, their records and a sort by case took about 1 KB a row). Every
    row is planned."""
    monkeypatch.setenv("SSLFLOW_INGEST_CACHE", "off")  # as in the task images
    # batches smaller than the rows: CSV rows parsed, files recorded, files hashed at a time
    monkeypatch.setattr(metadata_catalog, "ROW_BATCH", 500)
    monkeypatch.setattr(metadata_catalog, "OBJECT_BATCH", 500)
    monkeypatch.setattr(fingerprint, "HASH_BATCH", 16)
    _check_the_plan_and_fingerprint_hold_a_batch(tmp_path, str)


def _parquet_list_of(folder) -> str:
    """_path_keyed_folder's metadata.csv as a parquet image list, its rows in reverse (the plan sorts them by case)."""
    image_list = folder / "cohort.parquet"
    pd.read_csv(folder / "metadata.csv", dtype=str).iloc[::-1].to_parquet(image_list, index=False)
    return str(image_list)


def test_the_plan_holds_a_batch_of_a_parquet_lists_rows_not_the_list(tmp_path, monkeypatch):
    """A parquet image list is read by the plan and the fingerprint a record batch at a time into a catalog on disk
    (sslflow/data/sources/parquet_list.py, as a folder's metadata.csv): 6,000 more rows and files take them a few
    bytes a row at most (reading the whole table, holding its rows, their records and a sort by case took about
    1 KB a row). Every row is planned, in case order."""
    monkeypatch.setenv("SSLFLOW_INGEST_CACHE", "off")  # as in the task images
    # batches smaller than the rows: parquet rows read, files recorded, files hashed at a time
    monkeypatch.setattr(parquet_list, "ROW_BATCH", 500)
    monkeypatch.setattr(metadata_catalog, "OBJECT_BATCH", 500)
    monkeypatch.setattr(fingerprint, "HASH_BATCH", 16)
    _check_the_plan_and_fingerprint_hold_a_batch(tmp_path, _parquet_list_of)

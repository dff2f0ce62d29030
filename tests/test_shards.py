"""Sharded datasets: chunked ingest (cache hits, only new chunks decoded, same hash sequential or parallel),
splits that never move, streaming vs in-memory batches, and a corrupt or missing shard named."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from flytekit import workflow
from flytekit.types.file import FlyteFile
from PIL import Image

from ssl_models.data import InMemoryPairs, StreamingPairs
from ssl_models.shards import ShardError
from sslflow.config import IngestConfig
from sslflow.data.chunks import chunk_file_sha256, ingest_source, plan_to_files
from sslflow.data.dataset import fetch_shards_once_per_node, read_images, read_manifest, shard_path, shard_rows
from sslflow.data.sources import fingerprint_source
from sslflow.tracking.runs import start_parent_run
from tasks.ingest import ingest_chunk, source_fingerprint
from tasks.shared import Dataset, dataset_rows, ingest_summary, labelled_in, stored_shards
from workflows.ingest import ingest

CONFIG = IngestConfig(image_size=8, chunk_images=4, shard_megabytes=1)


@workflow
def ingest_only(source: str, config: IngestConfig, parent_run_id: str) -> Dataset:
    return ingest(
        source=source, fingerprint=source_fingerprint(source=source), config=config, parent_run_id=parent_run_id
    )


def _write_images(folder: Path, names: range, *, cases: bool = False, labelled_cases: int = 0) -> None:
    """PNG files img000.png...; cases: a metadata.csv with three images per case, the first ``labelled_cases``
    cases labelled (one image each, so a labelled case has unlabelled images too)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in names:
        Image.fromarray(np.random.default_rng(1000 + i).integers(0, 256, (12, 12), dtype=np.uint8)).save(
            folder / f"img{i:03d}.png"
        )
    if cases:
        label = lambda i: f"class{i % 2}" if i // 3 < labelled_cases and i % 3 == 0 else ""  # noqa: E731
        rows = [
            f"img{i:03d}.png,case{i // 3},default,{label(i)}"
            for i in sorted(int(p.stem[3:]) for p in folder.glob("img*.png"))
        ]
        (folder / "metadata.csv").write_text("path,case_id,site,label\n" + "\n".join(rows) + "\n")


def _decoding(chunk: Path) -> str:
    """Run the chunk task on the chunk file at ``chunk`` (through Flyte's local cache); the id of the decoding that made
    its output."""
    return json.loads((Path(ingest_chunk(chunk=FlyteFile(str(chunk))).download()) / "chunk.json").read_text())[
        "decoding"
    ]


def _plan(folder: Path, plan: Path) -> dict[str, Path]:
    """The chunk files of ``folder``'s plan, written to ``plan`` (a new folder per run, as each execution's plan
    task writes its own files), by chunk sha256."""
    return {chunk_file_sha256(path): path for path in plan_to_files(str(folder), CONFIG, plan)}


def test_adding_files_decodes_only_the_chunks_they_fall_into(tmp_path, monkeypatch):
    """A chunk reference's cache hash is its document's sha256 (files' content hashes + decode settings), so an
    unchanged chunk is the same cache key in another execution, although its file is elsewhere: a hit.

    flytekit 1.16's local map-task executor does not consult the cache per element (a cluster's ArrayNode
    does), so the chunk task is called here one chunk at a time, as the ArrayNode runs it.
    """
    monkeypatch.setenv("SSLFLOW_INGEST_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "growing"
    _write_images(folder, range(40))
    before = _plan(folder, tmp_path / "plan-1")
    assert len(before) > 3
    first = {chunk: _decoding(path) for chunk, path in before.items()}
    again = _plan(folder, tmp_path / "plan-2")
    assert {chunk: _decoding(path) for chunk, path in again.items()} == first, "unchanged data: every chunk a cache hit"

    _write_images(folder, range(40, 44))
    after = _plan(folder, tmp_path / "plan-3")
    unchanged = set(before) & set(after)
    assert (
        len(unchanged) >= len(before) - 4 and len(set(after) - unchanged) <= 4
    )  # four new files touch at most four chunks
    second = {chunk: _decoding(path) for chunk, path in after.items()}
    assert all(second[chunk] == first[chunk] for chunk in unchanged), "an unchanged chunk is not decoded again"
    assert all(second[chunk] not in first.values() for chunk in set(after) - unchanged)
    grown = ingest_only(source=str(folder), config=CONFIG, parent_run_id=start_parent_run("test-chunks", {}))
    assert grown.num_images == 44 and len(ingest_summary(grown)["chunks"]) == len(after)


def test_a_rerun_with_one_changed_file_decodes_only_its_chunk(tmp_path, monkeypatch):
    """The plan task's chunk references, run twice (two executions: the second after one file's pixels changed):
    one chunk reference has a new cache hash and is decoded again; every other one is a cache hit."""
    from tasks.ingest import plan_ingest

    monkeypatch.setenv("SSLFLOW_INGEST_CACHE", "off")
    folder = tmp_path / "scans"
    _write_images(folder, range(40))
    first = {
        _chunk_hash(chunk): _decoding(Path(chunk.path))
        for chunk in plan_ingest(source=str(folder), fingerprint=fingerprint_source(str(folder)), config=CONFIG)
    }
    Image.fromarray(np.full((12, 12), 7, dtype=np.uint8)).save(folder / "img017.png")
    second = {
        _chunk_hash(chunk): _decoding(Path(chunk.path))
        for chunk in plan_ingest(source=str(folder), fingerprint=fingerprint_source(str(folder)), config=CONFIG)
    }
    assert len(first) == len(second) > 3
    assert len(set(second.values()) - set(first.values())) == 1, "only the chunk of the changed file is decoded again"
    assert {chunk: second[chunk] for chunk in set(first) & set(second)} == {
        chunk: first[chunk] for chunk in set(first) & set(second)
    }


def _chunk_hash(chunk: FlyteFile) -> str:
    """The cache hash Flyte gives the chunk reference ``chunk`` in the plan task's output literal."""
    from flytekit import FlyteContextManager
    from flytekit.core.type_engine import TypeEngine

    from tasks.ingest import ChunkFile

    return TypeEngine.to_literal(
        FlyteContextManager.current_context(), chunk, ChunkFile, TypeEngine.to_literal_type(ChunkFile)
    ).hash


def test_sequential_parallel_and_flyte_ingest_give_the_same_dataset(tmp_path):
    folder = tmp_path / "scans"
    _write_images(folder, range(30), cases=True)
    sequential, _, _ = ingest_source(str(folder), CONFIG, tmp_path / "sequential")
    parallel, _, summary = ingest_source(str(folder), CONFIG, tmp_path / "parallel", workers=2)
    flyte = ingest_only(source=str(folder), config=CONFIG, parent_run_id=start_parent_run("test-same-hash", {}))
    assert sequential == parallel == flyte.content_sha256
    assert len(summary["chunks"]) > 1 and summary["shards"] >= len(summary["chunks"])
    manifest = read_manifest(tmp_path / "parallel")
    assert (manifest.groupby("case_id")["shard"].nunique() == 1).all(), "the images of one case are in one shard"


def test_splits_never_move_when_data_is_added(tmp_path):
    folder = tmp_path / "scans"
    _write_images(folder, range(30))
    _, small, _ = ingest_source(str(folder), CONFIG, tmp_path / "small")
    _write_images(folder, range(30, 90))
    _, large, _ = ingest_source(str(folder), CONFIG, tmp_path / "large")
    split_of = dict(zip(large["sha256"], large["split"]))
    assert all(split_of[digest] == split for digest, split in zip(small["sha256"], small["split"]))
    assert set(large["split"]) == {"train", "val", "gate", "test"}


def test_a_missing_or_corrupt_shard_is_named(tmp_path):
    folder = tmp_path / "scans"
    _write_images(folder, range(20))
    ingest_source(str(folder), CONFIG, tmp_path / "dataset")
    manifest = read_manifest(tmp_path / "dataset")
    shard = manifest["shard"].iloc[0]
    path = shard_path(tmp_path / "dataset", shard)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.unlink()  # a hard link to the chunk's file: replace it, do not write through it
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=f"shard {shard} .* is corrupt"):
        read_images(tmp_path / "dataset", manifest)
    streaming = StreamingPairs(
        shard_rows(tmp_path / "dataset", manifest, list(range(len(manifest)))),
        buffer_shards=len(set(manifest["shard"])),
    )
    with pytest.raises(ShardError, match=shard):
        list(streaming.batches(0, 8, 0, 1, torch.device("cpu")))
    path.unlink()
    with pytest.raises(ShardError, match=f"shard {shard} is missing"):
        read_images(tmp_path / "dataset", manifest)


def test_streaming_and_in_memory_batches_come_from_the_same_distribution(tmp_path):
    """Each image once per epoch in both (same pairs of one case); over ranks the streams read disjoint rows."""
    folder = tmp_path / "scans"
    _write_images(folder, range(60), cases=True)
    ingest_source(str(folder), IngestConfig(image_size=8, chunk_images=2, shard_megabytes=1), tmp_path / "dataset")
    manifest = read_manifest(tmp_path / "dataset")
    images = read_images(tmp_path / "dataset", manifest)
    assert manifest["shard"].nunique() >= 4
    case_of = {images[i].tobytes(): case for i, case in enumerate(manifest["case_id"])}
    cases = manifest["case_id"].tolist()
    sources = {
        "memory": InMemoryPairs(torch.from_numpy(images), cases),
        "stream": StreamingPairs(shard_rows(tmp_path / "dataset", manifest, cases), buffer_shards=2, prefetch_shards=1),
    }
    seen = {}
    for name, source in sources.items():
        batches = list(source.batches(3, 16, 0, 1, torch.device("cpu")))
        anchors = torch.cat([a for a, _ in batches]).numpy()
        partners = torch.cat([p for _, p in batches]).numpy()
        assert [len(a) for a, _ in batches] == [16, 16, 16, 12]
        assert all(case_of[a.tobytes()] == case_of[p.tobytes()] for a, p in zip(anchors, partners)), (
            "pairs are of one case"
        )
        assert all(a.tobytes() != p.tobytes() for a, p in zip(anchors, partners)), (
            "every image has a partner of its case"
        )
        seen[name] = sorted(a.tobytes() for a in anchors)
        assert np.allclose(anchors.mean(), images.mean()) and np.allclose(partners.mean(), images.mean(), atol=2)
    assert seen["memory"] == seen["stream"] == sorted(image.tobytes() for image in images), "every image once per epoch"
    per_rank = [[a for a, _ in sources["stream"].batches(3, 16, rank, 2, torch.device("cpu"))] for rank in (0, 1)]
    assert [sum(len(a) for a in batches) for batches in per_rank] == [30, 30], "ranks take the same number of steps"
    rows_of_rank = [
        {(piece.sha256, row) for piece in sources["stream"].rank_pieces(3, rank, 2) for row in piece.rows}
        for rank in (0, 1)
    ]
    assert not rows_of_rank[0] & rows_of_rank[1] and len(rows_of_rank[0] | rows_of_rank[1]) == 60, (
        "ranks read disjoint rows, all of them"
    )
    summary = json.loads((tmp_path / "dataset" / "summary.json").read_text())
    assert summary["images"] == 60


@contextmanager
def _dataset_in_s3(tmp_path: Path, monkeypatch, dataset: Path, sha256: str):
    """The local dataset folder ``dataset`` uploaded to a moto S3 bucket; yields the Dataset (its directory an
    s3:// FlyteDirectory) inside a Flyte context whose file access reads that bucket."""
    import boto3
    from flytekit import FlyteContextManager
    from flytekit.configuration import DataConfig, S3Config
    from flytekit.core.data_persistence import FileAccessProvider
    from flytekit.types.directory import FlyteDirectory
    from moto_s3 import moto_s3_server, s3_environment

    with moto_s3_server(tmp_path) as endpoint:
        s3_environment(monkeypatch, endpoint)
        bucket = boto3.client("s3")
        bucket.create_bucket(Bucket="datasets")
        for path in dataset.rglob("*"):
            if path.is_file():
                bucket.upload_file(str(path), "datasets", f"ds/{path.relative_to(dataset).as_posix()}")
        access = FileAccessProvider(
            str(tmp_path / "sandbox"),
            "s3://datasets/raw",
            DataConfig(s3=S3Config(endpoint=endpoint, access_key_id="testing", secret_access_key="testing")),
        )
        with FlyteContextManager.with_context(FlyteContextManager.current_context().with_file_access(access)):
            directory = FlyteDirectory.from_source("s3://datasets/ds")
            yield Dataset(
                directory=directory,
                name="ds",
                num_images=len(read_manifest(dataset)),
                content_sha256=sha256,
                mlflow_run_id="",
            )


def test_a_streaming_rank_downloads_only_its_own_shards_from_a_blob_store(tmp_path, monkeypatch):
    """A Dataset in S3 (moto): the task gets the manifest only, and rank 0 of 2 fetches exactly its epoch's shards."""
    from tasks.shared import dataset_without_shards

    _write_images(tmp_path / "scans", range(40))
    sha256, _, _ = ingest_source(str(tmp_path / "scans"), CONFIG, tmp_path / "dataset")
    with _dataset_in_s3(tmp_path, monkeypatch, tmp_path / "dataset", sha256) as dataset:
        folder, fetch = dataset_without_shards(dataset)
        assert fetch is not None and not list((folder / "shards").iterdir())
        fetched = []
        manifest = read_manifest(folder)
        data = StreamingPairs(
            shard_rows(
                folder,
                manifest,
                list(range(len(manifest))),
                fetch=lambda path: (fetched.append(path.stem), fetch(path)),
            ),
            buffer_shards=2,
        )
        seen = sum(len(anchors) for anchors, _ in data.batches(0, 8, rank=0, world_size=2, device=torch.device("cpu")))
    mine = {piece.sha256 for piece in data.rank_pieces(0, rank=0, world_size=2)}
    assert seen == 20 and set(fetched) == mine and len(mine) < manifest["shard"].nunique()
    assert not list((folder / "shards").iterdir()), "a fetched shard is deleted once read"
    assert not Path(dataset.directory.path).exists() or not any(Path(dataset.directory.path).iterdir()), (
        "the directory itself was never downloaded"
    )


def test_a_shard_gone_from_the_blob_store_is_named_with_what_to_do(tmp_path, monkeypatch):
    """A Dataset in S3 whose shard table names a shard object that was deleted (its chunk output cleaned up):
    validate counts it missing, and reading it is a ShardError naming the shard and saying to ingest again."""
    import boto3

    from tasks.shared import dataset_without_shards

    _write_images(tmp_path / "scans", range(20))
    sha256, manifest, _ = ingest_source(str(tmp_path / "scans"), CONFIG, tmp_path / "dataset")
    shard = manifest["shard"].iloc[0]
    with _dataset_in_s3(tmp_path, monkeypatch, tmp_path / "dataset", sha256) as dataset:
        location = shard_path(tmp_path / "dataset", shard).relative_to(tmp_path / "dataset").as_posix()
        boto3.client("s3").delete_object(Bucket="datasets", Key=f"ds/{location}")
        assert stored_shards(dataset) == set(manifest["shard"]) - {shard}
        folder, fetch = dataset_without_shards(dataset)
        assert fetch is not None
        with pytest.raises(
            ShardError,
            match=f"shard {shard} of dataset ds is missing at s3://datasets/ds/{location} .*ingest the source again",
        ):
            fetch(shard_path(folder, shard))


def _fetch_logged(source: Path, log: Path, path: Path) -> None:
    """A fetch that copies the shard from ``source`` and appends its name to ``log`` (one line per download)."""
    import shutil

    with open(log, "a") as stream:
        stream.write(path.name + "\n")
    partial = path.with_name(f".partial-{path.name}")
    shutil.copyfile(shard_path(source, path.stem), partial)
    partial.replace(path)


def _fetch_for_one_rank(source: Path, node_folder: Path, log: Path) -> None:
    from functools import partial

    fetch_shards_once_per_node(node_folder, read_manifest(source), partial(_fetch_logged, source, log))


def test_the_ranks_of_one_node_download_each_shard_once(tmp_path):
    """Four processes of one pod fetch the same dataset at the same time into the node's folder: each shard is
    downloaded once, and every rank finds every shard whole."""
    from concurrent.futures import ProcessPoolExecutor

    _write_images(tmp_path / "scans", range(40))
    ingest_source(str(tmp_path / "scans"), CONFIG, tmp_path / "dataset")
    manifest = read_manifest(tmp_path / "dataset")
    with ProcessPoolExecutor(4) as pool:
        list(
            pool.map(
                _fetch_for_one_rank, *zip(*[(tmp_path / "dataset", tmp_path / "node", tmp_path / "fetched.log")] * 4)
            )
        )
    fetched = (tmp_path / "fetched.log").read_text().split()
    assert sorted(fetched) == sorted(f"{shard}.npy" for shard in manifest["shard"].unique())
    assert np.array_equal(read_images(tmp_path / "node", manifest), read_images(tmp_path / "dataset", manifest))


def test_pretraining_ranks_share_the_pods_memory_and_one_download_per_node(tmp_path, monkeypatch):
    """Two ranks on one pod (LOCAL_WORLD_SIZE=2) each get half the pod's memory budget: a set that fits the pod but
    not half of it streams; one that fits half is read in memory, from shards the node downloaded once (the shard
    whose header gave the image shape included)."""
    import tasks.pretrain as pretrain
    from ssl_models.pretraining import PretrainConfig

    _write_images(tmp_path / "scans", range(40))
    sha256, _, _ = ingest_source(str(tmp_path / "scans"), CONFIG, tmp_path / "dataset")
    fetched, original = [], pretrain.dataset_without_shards

    def counted(dataset):  # noqa: E306
        folder, fetch = original(dataset)
        return folder, lambda path: (fetched.append(path.name), fetch(path))

    monkeypatch.setattr(pretrain, "dataset_without_shards", counted)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "pod-tmp"))  # the pod's /tmp
    monkeypatch.setattr(
        pretrain, "memory_budget_bytes", lambda mb, ranks: 40 * 64 * 3 // 4 // ranks
    )  # the pod holds 3/4 of the set
    with _dataset_in_s3(tmp_path, monkeypatch, tmp_path / "dataset", sha256) as dataset:
        _, streamed, _ = pretrain._pretraining_data(dataset, PretrainConfig(), case_pairs=False)
        monkeypatch.setattr(
            pretrain, "memory_budget_bytes", lambda mb, ranks: 40 * 64 * 3 // ranks
        )  # the pod holds 3 copies
        rank_data = [pretrain._pretraining_data(dataset, PretrainConfig(), case_pairs=False)[1] for _rank in range(2)]
    manifest = read_manifest(tmp_path / "dataset")
    wanted = manifest[manifest["split"].isin(["train", "val"])]
    assert isinstance(streamed, StreamingPairs)
    assert all(isinstance(data, InMemoryPairs) for data in rank_data)
    assert sorted(fetched) == sorted(f"{shard}.npy" for shard in wanted["shard"].unique()), (
        "each shard downloaded once per node"
    )
    assert torch.equal(rank_data[0].images, rank_data[1].images) and len(rank_data[0].images) == len(wanted)


def test_labelled_cases_are_in_shards_of_their_own(tmp_path):
    """A shard holds labelled cases or unlabelled ones, never both, and a case stays in one shard."""
    _write_images(tmp_path / "scans", range(90), cases=True, labelled_cases=4)
    ingest_source(
        str(tmp_path / "scans"), IngestConfig(image_size=8, chunk_images=8, shard_megabytes=1), tmp_path / "dataset"
    )
    manifest = read_manifest(tmp_path / "dataset")
    labelled_case = manifest.groupby("case_id")["label"].transform(lambda labels: labels.notna().any())
    assert labelled_case.sum() == 12 and manifest["label"].notna().sum() == 4
    assert (manifest.groupby("shard").apply(lambda rows: labelled_case[rows.index].nunique()) == 1).all()
    assert (manifest.groupby("case_id")["shard"].nunique() == 1).all()


def test_fine_tuning_rows_fetch_only_their_shards_from_a_blob_store(tmp_path, monkeypatch):
    """dataset_rows (fine-tune, evaluate, the promotion gate) downloads the shards of the rows asked for, no other;
    validate and the data run read the manifest, the summary and the shard listing only."""
    _write_images(tmp_path / "scans", range(90), cases=True, labelled_cases=6)
    config = IngestConfig(image_size=8, chunk_images=8, shard_megabytes=1)
    sha256, _, _ = ingest_source(str(tmp_path / "scans"), config, tmp_path / "dataset")
    everything = read_manifest(tmp_path / "dataset")
    with _dataset_in_s3(tmp_path, monkeypatch, tmp_path / "dataset", sha256) as dataset:
        folder, manifest = dataset_rows(dataset, labelled_in("train", "val"))
        images = read_images(folder, manifest)
        assert stored_shards(dataset) == set(everything["shard"]), "validate counts stored images from a listing"
        assert ingest_summary(dataset)["images"] == len(everything)
    wanted = everything[everything["split"].isin(["train", "val"]) & everything["label"].notna()]
    assert len(manifest) == len(wanted) > 0 and sorted(manifest["sha256"]) == sorted(wanted["sha256"])
    fetched = {path.stem for path in (folder / "shards").iterdir()}
    assert fetched == set(wanted["shard"]) and len(fetched) < everything["shard"].nunique() / 2
    assert np.array_equal(images, read_images(tmp_path / "dataset", manifest))


def test_the_plan_lists_the_largest_chunks_first(tmp_path):
    """The map task and the process pool start chunks in plan order: a large chunk started last would leave every
    other worker idle while it runs."""
    _write_images(tmp_path / "scans", range(60))
    sizes = [
        len(json.loads(path.read_text())["records"])
        for path in plan_to_files(str(tmp_path / "scans"), CONFIG, tmp_path / "plan")
    ]
    assert len(set(sizes)) > 1 and sizes == sorted(sizes, reverse=True)


def test_ingest_chunk_workers_never_import_torch():
    """A chunk pod or pool worker imports the decoding modules only: torch would add ~300 MiB to every one of them."""
    import subprocess
    import sys

    code = "import sys, sslflow.data.chunks; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1]).returncode == 0


def test_stream_feed_benchmark_quick_run_streams_every_image_of_each_shape(tmp_path):
    """benchmarks/stream_feed.py (the data-path bound the README's epoch arithmetic uses) runs and records its facts."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "benchmarks/stream_feed.py", "--quick", "--out", str(tmp_path)]
    completed = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-2000:]
    (result,) = tmp_path.glob("stream_feed-quick-*.json")
    record = json.loads(result.read_text())
    assert record["machine"]["commit"] and isinstance(record["machine"]["dirty"], bool) and record["date"]
    assert set(record["results"]) == {"gray-224", "rgb-224", "gray-28"}
    for shape in record["results"].values():
        assert shape["shards"] == 3 and shape["images"] == 3 * (8 * 2**20 // np.prod(shape["image_shape"]))
        assert shape["images_per_second"] > 0 and shape["seconds"] > 0
    assert record["decode_files"] == 50 and set(record["decode_256px_png_ms_per_image_one_core"]) == {
        "gray-224",
        "rgb-224",
    }


def test_with_the_ingest_caches_off_nothing_is_cached_and_the_dataset_is_the_same(tmp_path, monkeypatch):
    """SSLFLOW_INGEST_CACHE=off (set in the task images: a pod's disk ends with the pod): no decode cache and no
    file-digest cache are written, every file is decoded, and the dataset and fingerprint do not change."""
    from images.specs import cpu_image_spec, gpu_image_spec

    _write_images(tmp_path / "scans", range(20))
    monkeypatch.setenv("SSLFLOW_INGEST_CACHE", str(tmp_path / "cache"))
    cached, _, _ = ingest_source(str(tmp_path / "scans"), CONFIG, tmp_path / "cached")
    fingerprint = fingerprint_source(str(tmp_path / "scans"))
    assert list((tmp_path / "cache").rglob("*.npz")) and (tmp_path / "cache" / "file-digests.sqlite").is_file()
    monkeypatch.setenv("SSLFLOW_INGEST_CACHE", "off")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # where a cache folder literally named "off" would appear
    runs = [ingest_source(str(tmp_path / "scans"), CONFIG, tmp_path / f"uncached-{run}") for run in range(2)]
    assert cached == runs[0][0] == runs[1][0] and fingerprint_source(str(tmp_path / "scans")) == fingerprint
    assert runs[1][2]["read"]["decoded"] == 20 and runs[1][2]["read"]["decode_cache_hits"] == 0
    assert not list((tmp_path / "cwd").iterdir())
    assert cpu_image_spec.env["SSLFLOW_INGEST_CACHE"] == gpu_image_spec.env["SSLFLOW_INGEST_CACHE"] == "off"

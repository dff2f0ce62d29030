"""Data at scale: ingest N image files with the project's chunked ingest, then one streaming pretraining epoch.

For each N: synthesise N real-looking 256-px PNG files (smooth shapes, texture and noise; half gray, half RGB) in a work
folder, read them once so that they are in the page cache (as they are when just written; a work folder kept from an
earlier run would otherwise be read from disk, and the rate would be the disk's), ingest them with
``sslflow.data.chunks.ingest_source`` (the functions the Flyte map task runs; one process per core) to the default image
size, then train one SimCLR epoch streaming from the shards with the host-memory budget set to half the dataset's size
(the data path alone: shards read, views drawn, no model; its peak RSS is the training figure), and in another process,
after an untimed warm-up on WARM_UP_IMAGES images, four epochs alternating streaming and in memory (COMPARISON_ORDER):
the throughput ratio is that of the mean rates. Ingest and training run in child processes whose process-tree peak
resident set is sampled from /proc. Prints one JSON line and writes it to benchmarks/results/.

    python benchmarks/data_scale.py                    # N = 10,000 and 100,000 at 224 px (about 40 min on 2 cores)
    python benchmarks/data_scale.py --sizes 2000       # a quick look
    python benchmarks/data_scale.py --image-size 28    # the pipeline's default size (the dataset then fits in memory
                                                       # at 100,000 images: 75 MiB, so the RSS target cannot fail)

At 224 px (the default here) the dataset is 480 MiB at N=10,000 and 4.7 GiB at N=100,000 (one channel): the
in-memory path's RSS would grow tenfold, so the RSS target fails unless training streams. Training draws
VIEW_SIZE-px views (random resized crops, resampled) from the stored 224-px images, as SimCLR's CIFAR runs train
at 32 px, so that a CPU epoch over 100,000 images takes minutes, not hours; the memory measured is that of the
stored images and the shards streamed, which the view size does not change.
The streaming/in-memory throughput comparison runs on the first COMPARE_IMAGES images of the dataset.

Targets (issue 10): peak RSS at N=100,000 <= 1.25 x at N=10,000 (ingest and training); ingest >= 250
images/s per core; streaming >= 0.9 x the in-memory images/s.

Like with like: both N are ingested with the same chunk size (CHUNK_IMAGES, about 1,000 images per chunk),
so that N=10,000 already has more chunks (14) than cores and both N keep every core decoding one chunk at a
time. This is how a user runs ingest on a machine or cluster: chunk_images is chosen for the pod's memory
and the number of pods, not for the source's size (the default 8,192 would give N=10,000 a single chunk,
one busy core, and compare one worker's memory with two). Chunk boundaries are content-defined, so chunk
sizes vary (at most 4 x CHUNK_IMAGES): the largest chunk at N=100,000 (4,096) is larger than at N=10,000
(2,397), and a worker's memory grows with its chunk.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SIDE = 256
SHARD_MEGABYTES = 1
CHUNK_IMAGES = 1024
BUFFER_SHARDS = 4
COMPARISON_ORDER = (
    "stream",
    "memory",
    "memory",
    "stream",
)  # one epoch each; on a 2-core VM one epoch's rate varies by 10%
WARM_UP_IMAGES = 2048
COMPARE_IMAGES = 8192
VIEW_SIZE = 32


def synthetic_image(index: int) -> Image.Image:
    """A 256-px image with smooth structure, edges, texture and noise; even indices gray, odd RGB."""
    rng = np.random.default_rng(index)
    channels = 1 if index % 2 == 0 else 3
    coarse = rng.integers(0, 256, (6, 6, channels), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse.squeeze()).resize((SIDE, SIDE), Image.BICUBIC), dtype=np.float32).reshape(
        SIDE, SIDE, channels
    )
    yy, xx = np.mgrid[:SIDE, :SIDE]
    for _ in range(3):  # a few bright or dark discs: organ-like blobs with edges
        cy, cx, radius = rng.integers(30, SIDE - 30, 2).tolist() + [int(rng.integers(10, 50))]
        base[(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] += rng.uniform(-60, 60)
    base += rng.normal(0, 6, base.shape)  # sensor noise
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8).squeeze())


def _write_files(folder: Path, indices: range) -> None:
    for index in indices:
        synthetic_image(index).save(folder / f"{index // 1000:04d}" / f"scan{index:07d}.png")


def warm_page_cache(folder: Path) -> float:
    """Read every file of ``folder`` once (one thread per core) and return the seconds it took, so that ingest is
    measured on files in the page cache whether they were just written or left by an earlier run: what is
    timed is ingest's work (hash, decode, resize, write), not this machine's disk."""
    started = time.perf_counter()
    with ThreadPoolExecutor(len(os.sched_getaffinity(0))) as pool:
        list(pool.map(Path.read_bytes, sorted(folder.glob("*/*.png"))))
    return time.perf_counter() - started


def synthesise(folder: Path, count: int, workers: int) -> None:
    """``count`` PNG files under ``folder`` (kept between runs: files already there are not written again)."""
    existing = len(list(folder.glob("*/*.png"))) if folder.is_dir() else 0
    if existing == count:
        return
    for group in range(0, count, 1000):
        (folder / f"{group // 1000:04d}").mkdir(parents=True, exist_ok=True)
    step = 2000
    with ProcessPoolExecutor(workers) as pool:
        list(
            pool.map(
                _write_files,
                [folder] * len(range(0, count, step)),
                [range(s, min(count, s + step)) for s in range(0, count, step)],
            )
        )


def _tree_rss_bytes(pid: int) -> int:
    """Resident set of ``pid`` and all its descendants, from /proc."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) * 1024
            for task in Path(f"/proc/{current}/task").iterdir():
                stack += [int(child) for child in (task / "children").read_text().split()]
        except (OSError, StopIteration, ValueError):
            continue
    return total


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # children that ended, with the descendants they waited for
    return usage.ru_utime + usage.ru_stime


def run_measured(
    arguments: list[str], environment: dict, script: Path = Path(__file__)
) -> tuple[dict, float, float, float]:
    """Run ``script`` (this one by default) with ``arguments`` in a child process: (its JSON result, wall seconds, peak
    tree RSS MiB, CPU seconds of the children that ended meanwhile: the child's own when it runs alone)."""
    started, cpu_before = time.perf_counter(), _children_cpu_seconds()
    child = subprocess.Popen(
        [sys.executable, str(script), *arguments], stdout=subprocess.PIPE, text=True, env=environment
    )
    peak = 0
    while child.poll() is None:
        peak = max(peak, _tree_rss_bytes(child.pid))
        time.sleep(0.05)
    output = child.stdout.read()
    if child.returncode != 0:
        raise RuntimeError(f"{arguments[0]} failed with status {child.returncode}:\n{output[-2000:]}")
    return (
        json.loads(output.strip().splitlines()[-1]),
        time.perf_counter() - started,
        peak / 2**20,
        _children_cpu_seconds() - cpu_before,
    )


def stage_times(folder: Path, sample: int = 400) -> dict:
    """Seconds per image of each ingest stage on ``sample`` files (read, decode, resize, write), one core."""
    from ssl_models.shards import write_shard
    from sslflow.config import IngestConfig
    from sslflow.data.decode import decode_image

    config = IngestConfig()
    paths = sorted(folder.glob("*/*.png"))[:sample]
    started = time.perf_counter()
    blobs = [path.read_bytes() for path in paths]
    read = time.perf_counter() - started
    started = time.perf_counter()
    for blob in blobs:
        with Image.open(io.BytesIO(blob)) as image:
            image.load()
    decode = time.perf_counter() - started
    started = time.perf_counter()
    pixels = [
        decode_image(blob, "x", config.image_size, config.channels, config.max_image_pixels).pixels for blob in blobs
    ]
    resize = time.perf_counter() - started - decode  # decode_image = decode + convert and resize
    with tempfile.TemporaryDirectory() as shards:
        started = time.perf_counter()
        write_shard(Path(shards), np.stack(pixels))
        write = time.perf_counter() - started
    return {
        stage: round(seconds / len(paths) * 1e3, 4)
        for stage, seconds in {"read": read, "decode": decode, "resize": resize, "write": write}.items()
    }


def child_ingest(source: str, dataset: str, workers: int, image_size: int) -> dict:
    from sslflow.config import IngestConfig
    from sslflow.data.chunks import ingest_source

    config = IngestConfig(image_size=image_size, shard_megabytes=SHARD_MEGABYTES, chunk_images=CHUNK_IMAGES)
    sha256, manifest, summary = ingest_source(source, config, Path(dataset), workers=workers)
    return {"sha256": sha256, "images": len(manifest), "chunks": len(summary["chunks"]), "shards": summary["shards"]}


def child_train(dataset: str, mode: str) -> dict:
    """mode "stream": one epoch of pretraining's data path over the whole dataset, streamed with the budget at half the
    dataset: every shard read, both views of every image drawn (augment), no model, whose memory does not grow with N
    (its peak RSS is the training figure). mode "compare": epochs over the first COMPARE_IMAGES images alternating
    streaming and in memory in the order COMPARISON_ORDER, each on a new encoder from the same seed; the ratio of the
    mean rates (ABBA, so a drift of the machine's speed cancels). Views are at most VIEW_SIZE px."""
    import torch

    from ssl_models.augment import AugmentConfig, augment
    from ssl_models.data import InMemoryPairs, StreamingPairs, fits_in_memory, memory_budget_bytes
    from ssl_models.encoders import build_encoder
    from ssl_models.pretraining import PretrainConfig, pretrain_contrastive
    from sslflow.data.dataset import image_shape, images_bytes, read_images, read_manifest, shard_rows

    folder = Path(dataset)
    manifest = read_manifest(folder)
    shape, size = image_shape(folder, manifest), images_bytes(folder, manifest)
    budget_mb = max(1, size // 2 // 2**20)  # streaming: the budget at half the dataset
    view = AugmentConfig(output_size=min(shape[-1], VIEW_SIZE))
    config = PretrainConfig(
        epochs=1, batch_size=256, augment=view, memory_budget_mb=budget_mb, buffer_shards=BUFFER_SHARDS
    )
    if fits_in_memory(size, memory_budget_bytes(config.memory_budget_mb)):  # as tasks/pretrain.py chooses
        raise RuntimeError(f"{size} bytes fit the {budget_mb} MiB budget: nothing would be streamed")
    if mode == "compare":
        manifest = manifest.iloc[:COMPARE_IMAGES].reset_index(drop=True)
    cases = list(range(len(manifest)))
    sources = {"stream": StreamingPairs(shard_rows(folder, manifest, cases), seed=0, buffer_shards=BUFFER_SHARDS)}
    if mode == "compare":
        sources["memory"] = InMemoryPairs(torch.from_numpy(read_images(folder, manifest)), cases)
    rates: dict[str, list[float]] = {name: [] for name in sources}
    if mode == "stream":
        started, generator = time.perf_counter(), torch.Generator().manual_seed(0)
        for anchors, partners in sources["stream"].batches(0, config.batch_size, 0, 1, torch.device("cpu")):
            augment(anchors, view, generator), augment(partners, view, generator)
        rates["stream"].append(len(manifest) / (time.perf_counter() - started))
        return {
            "images_per_second": rates,
            "dataset_mib": size / 2**20,
            "budget_mib": memory_budget_bytes(budget_mb) / 2**20,
            "view_size": view.output_size,
        }
    if mode == "compare":  # untimed: the process's one-time costs (thread pools, kernel selection) land on no path
        warm_up = manifest.iloc[:WARM_UP_IMAGES]
        pretrain_contrastive(
            build_encoder("small_cnn", shape[0], shape[-1], seed=0),
            InMemoryPairs(torch.from_numpy(read_images(folder, warm_up)), cases[: len(warm_up)]),
            config,
        )
    for name in COMPARISON_ORDER:
        history = pretrain_contrastive(build_encoder("small_cnn", shape[0], shape[-1], seed=0), sources[name], config)
        rates[name].append(history[-1]["images_per_second"])
    return {
        "images_per_second": rates,
        "dataset_mib": size / 2**20,
        "budget_mib": memory_budget_bytes(budget_mb) / 2**20,
        "view_size": view.output_size,
    }


def measure(count: int, work: Path, workers: int, image_size: int) -> dict:
    """Synthesise, ingest (to ``image_size`` px), train streaming and in memory at N = ``count``."""
    folder = work / f"png-{count}"
    synthesise(folder, count, workers)
    environment = {**os.environ, "SSLFLOW_INGEST_CACHE": tempfile.mkdtemp(prefix="ingest-cache-", dir=work)}
    dataset = work / f"dataset-{count}-{image_size}px"
    page_cache_seconds = warm_page_cache(folder)
    ingested, ingest_seconds, ingest_rss, ingest_cpu = run_measured(
        ["ingest", str(folder), str(dataset), str(workers), str(image_size)], environment
    )
    streamed, stream_seconds, stream_rss, _ = run_measured(["train", str(dataset), "stream"], environment)
    compared, compare_seconds, _, _ = run_measured(["train", str(dataset), "compare"], environment)
    stream_rate, memory_rate = (float(np.mean(compared["images_per_second"][name])) for name in ("stream", "memory"))
    return {
        "files": count,
        "image_size": image_size,
        **ingested,
        "ingest": {
            "wall_seconds": round(ingest_seconds, 1),
            "images_per_second_per_core": round(count / ingest_seconds / workers, 1),
            "cores": workers,
            "cpu_seconds": round(ingest_cpu, 1),
            "images_per_cpu_second": round(count / ingest_cpu, 1),  # not slowed by other users of the CPU
            "load_average_1min_after": round(os.getloadavg()[0], 2),
            "peak_rss_mib": round(ingest_rss),
            "ms_per_image_one_core": stage_times(folder),
            "files_read_into_page_cache_first_seconds": round(page_cache_seconds, 1),
        },
        "training_epoch": {
            "wall_seconds_streaming": round(stream_seconds, 1),
            "peak_rss_mib_streaming": round(stream_rss),
            "data_path_images_per_second_streaming": round(streamed["images_per_second"]["stream"][0], 1),
            "dataset_mib": round(streamed["dataset_mib"], 1),
            "memory_budget_mib": round(streamed["budget_mib"], 1),
            "view_size": streamed["view_size"],
            "comparison_images": min(count, COMPARE_IMAGES),
            "comparison_order": list(COMPARISON_ORDER),
            "comparison_wall_seconds": round(compare_seconds, 1),
            "epoch_images_per_second": {
                name: [round(rate, 1) for rate in rates] for name, rates in compared["images_per_second"].items()
            },
            "streaming_images_per_second": round(stream_rate, 1),
            "in_memory_images_per_second": round(memory_rate, 1),
            "streaming_over_in_memory": round(stream_rate / memory_rate, 3),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated N")
    parser.add_argument("--image-size", type=int, default=224, help="ingest's IngestConfig.image_size")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "sslflow-data-scale")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    arguments = parser.parse_args()
    workers = len(os.sched_getaffinity(0))
    results = [measure(int(size), arguments.work, workers, arguments.image_size) for size in arguments.sizes.split(",")]
    payload = {
        "settings": {
            "image_size": arguments.image_size,
            "view_size": VIEW_SIZE,
            "chunk_images": CHUNK_IMAGES,
            "shard_megabytes": SHARD_MEGABYTES,
            "buffer_shards": BUFFER_SHARDS,
            "comparison_images": COMPARE_IMAGES,
        },
        "results": results,
    }
    if len(results) >= 2:
        small, large = results[0], results[-1]
        payload["rss_ratio_largest_over_smallest"] = {
            "ingest": round(large["ingest"]["peak_rss_mib"] / small["ingest"]["peak_rss_mib"], 3),
            "training": round(
                large["training_epoch"]["peak_rss_mib_streaming"] / small["training_epoch"]["peak_rss_mib_streaming"], 3
            ),
            "dataset_bytes (what an in-memory path would hold)": round(
                large["training_epoch"]["dataset_mib"] / small["training_epoch"]["dataset_mib"], 3
            ),
        }
    print(json.dumps(payload))
    from benchmarks.common import (
        write_result,
    )  # here: it imports torch, which the ingest child and its workers must not carry

    write_result("data_scale", payload, arguments.out)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("ingest", "train"):
        stage = sys.argv[1]
        result = (
            child_ingest(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
            if stage == "ingest"
            else child_train(sys.argv[2], sys.argv[3])
        )
        print(json.dumps(result))
    else:
        main()

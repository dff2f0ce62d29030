"""Many ranks, one model, on CPU (gloo), for each method of METHODS (SimCLR, MoCo v2, BYOL): exact epoch coverage,
equal steps, the method's state identical across ranks, exact resume, images/s per rank.

A sharded dataset with uneven shards (SHARD_SIZES images, every image's id in its first two pixels) is
streamed by W ranks, each a process started as torchrun starts its workers (benchmarks/multirank_worker.py
runs ``ssl_models.pretraining.pretrain_contrastive``). For W in {1, 2, 3}:
- ``coverage_exact``: in every epoch the ranks' anchors together are every image once, plus exactly
  ``padded_images(N, W)`` (<= W - 1) images read twice;
- ``steps_per_rank``: optimiser steps of each rank in each epoch (equal, or DDP would hang);
- ``order_changes_between_epochs``: the epoch's order is shuffled anew;
- ``method_state_identical_across_ranks``: at the end, every rank holds bitwise the same parameters and
  method buffers (MoCo's queue and key network, BYOL's target); BatchNorm's running statistics excluded,
  each rank's own (DDP broadcasts rank 0's before every forward);
- ``images_per_second_per_rank``: the mean over epochs of all ranks' images/s divided by W (2 cores: W = 3
  oversubscribes them, so this shows the scaling of the code path, not of hardware).
For W = 2, ``resume_bitwise_equal``: a job killed with SIGKILL after epoch 1's checkpoint and started again (on
fresh "nodes": only rank 0's checkpoint survives) ends with a final encoder and method state (queue, target)
bitwise equal to an uninterrupted job's.

    python benchmarks/multirank.py            # 3 methods: about 8 minutes on 2 loaded cores
    python benchmarks/multirank.py --quick    # the test suite's size

Prints one JSON line and writes benchmarks/results/multirank-<device>-<date>.json.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import PROJECT_ROOT, parse_arguments, write_result
from ssl_models.data import padded_images
from ssl_models.shards import write_shard

WORKER = Path(__file__).resolve().parent / "multirank_worker.py"
QUICK_SHARD_SIZES = (7, 3, 11, 5, 2, 9)  # 37 images: W = 2 pads 1, W = 3 pads 2
FULL_SHARD_SIZES = (97, 31, 140, 65, 12, 111, 88, 57)  # 601 images
FULL_BATCH_SIZE = 32
IMAGE_SIZE = 16
METHODS = ("simclr", "moco", "byol")


def write_shards(folder: Path, sizes: tuple[int, ...]) -> int:
    """Shards of random 16-px gray images whose first two pixels hold the image's id; returns the image count."""
    folder.mkdir(parents=True, exist_ok=True)
    rng, listing, start = np.random.default_rng(0), [], 0
    for count in sizes:
        pixels = rng.integers(0, 256, (count, 1, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
        ids = np.arange(start, start + count)
        pixels[:, 0, 0, 0], pixels[:, 0, 0, 1] = ids // 256, ids % 256
        listing.append((write_shard(folder, pixels), start, count))
        start += count
    (folder / "shards.json").write_text(json.dumps(listing))
    return start


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_job(world_size: int, work: Path, name: str, options: list[str], *, nodes: int = 1) -> list[subprocess.Popen]:
    """``world_size`` worker processes as torchrun starts them on ``nodes`` nodes, each node with its own sandbox."""
    port, per_node, workers = _free_port(), world_size // nodes, []
    for rank in range(world_size):
        env = os.environ | {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank % per_node),
            "WORLD_SIZE": str(world_size),
            "LOCAL_WORLD_SIZE": str(per_node),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(PROJECT_ROOT),
            "FLYTE_SDK_LOCAL_SANDBOX": str(work / f"{name}-node-{rank // per_node}"),
        }
        command = [sys.executable, str(WORKER), "--out", str(work / f"{name}-rank-{rank}"), *options]
        workers.append(subprocess.Popen(command, env=env, stderr=open(work / f"{name}-rank-{rank}.log", "w")))
    return workers


def _finish(workers: list[subprocess.Popen], work: Path, name: str, timeout: float = 300) -> list[dict]:
    codes = [worker.wait(timeout=timeout) for worker in workers]
    if codes != [0] * len(workers):
        logs = "\n".join((work / f"{name}-rank-{rank}.log").read_text()[-1500:] for rank in range(len(workers)))
        raise RuntimeError(f"job {name}: exit codes {codes}\n{logs}")
    return [json.loads((work / f"{name}-rank-{rank}.json").read_text()) for rank in range(len(workers))]


def _method_states(work: Path, name: str, ranks: int) -> list[dict]:
    return [torch.load(work / f"{name}-rank-{rank}.method.pt", weights_only=True) for rank in range(ranks)]


def identical_across_ranks(states: list[dict]) -> bool:
    """Whether every rank's method state equals rank 0's bitwise, BatchNorm's running statistics aside."""
    shared = [name for name in states[0] if not name.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    return all(torch.equal(state[name], states[0][name]) for state in states[1:] for name in shared)


def _job_data(
    work: Path, sizes: tuple[int, ...], *, method: str, epochs: int, batch_size: int
) -> tuple[int, list[str]]:
    """(the number of images, the workers' options) of a job of ``method`` streaming shards of ``sizes`` images, written
    under ``work``/data."""
    num_images = write_shards(work / "data", sizes)
    options = ["--data", str(work / "data"), "--epochs", str(epochs), "--batch-size", str(batch_size)]
    return num_images, [*options, "--method", method]


def coverage(
    world_size: int, work: Path, sizes: tuple[int, ...], *, method: str = "simclr", epochs: int = 2, batch_size: int = 5
) -> dict:
    """Run a ``world_size``-rank job of ``method`` streaming the shards of ``sizes``; what the module docstring lists,
    for one W."""
    num_images, options = _job_data(work, sizes, method=method, epochs=epochs, batch_size=batch_size)
    ranks = _finish(start_job(world_size, work, f"w{world_size}", options), work, f"w{world_size}")
    return _job_summary(ranks, num_images, epochs, work, f"w{world_size}")


def _job_summary(ranks: list[dict], num_images: int, epochs: int, work: Path, name: str) -> dict:
    """What the module docstring lists for the finished job ``name`` of len(ranks) ranks, from each rank's record."""
    world_size, exact, orders = len(ranks), True, []
    for epoch in map(str, range(epochs)):
        counts = Counter(i for rank in ranks for i in rank["ids"][epoch])
        repeated = sum(counts.values()) - num_images
        exact &= (
            set(counts) == set(range(num_images))
            and repeated == padded_images(num_images, world_size)
            and max(counts.values()) <= 2
        )
        orders.append([i for rank in ranks for i in rank["ids"][epoch]])
    rates = [float(np.mean(rank["images_per_second"])) / world_size for rank in ranks]
    return {
        "world_size": world_size,
        "images": num_images,
        "padded_images_per_epoch": padded_images(num_images, world_size),
        "coverage_exact": bool(exact),
        "steps_per_rank": [[rank["steps"][str(e)] for e in range(epochs)] for rank in ranks],
        "order_changes_between_epochs": all(a != b for a, b in zip(orders, orders[1:])),
        "images_per_second_per_rank": rates,
        "method_state_identical_across_ranks": identical_across_ranks(_method_states(work, name, world_size)),
    }


def _kill_after_checkpoint(workers: list, saved: Path) -> list[int]:
    """SIGKILL every worker of a job once rank 0 has written ``saved`` (its checkpoint marker); their exit codes."""
    deadline = time.monotonic() + 240
    while not saved.exists():
        if time.monotonic() > deadline or any(worker.poll() is not None for worker in workers):
            raise RuntimeError("the first attempt died or never checkpointed")
        time.sleep(0.2)
    time.sleep(0.5)  # rank 1 reaches its sleep after the same epoch
    for worker in workers:
        worker.send_signal(signal.SIGKILL)
    return [worker.wait() for worker in workers]


def resume(
    work: Path,
    sizes: tuple[int, ...],
    *,
    method: str = "simclr",
    epochs: int = 4,
    killed_after: int = 1,
    batch_size: int = 5,
) -> dict:
    """Two ranks on two nodes: an uninterrupted job, and one killed with SIGKILL after epoch ``killed_after``'s
    checkpoint and started again on fresh nodes; whether their final weights are bitwise equal, what the restart did,
    and the uninterrupted job's coverage and agreement across ranks (``uninterrupted_*``)."""
    num_images, options = _job_data(work, sizes, method=method, epochs=epochs, batch_size=batch_size)
    uninterrupted = _job_summary(
        _finish(start_job(2, work, "uninterrupted", options, nodes=2), work, "uninterrupted"),
        num_images,
        epochs,
        work,
        "uninterrupted",
    )
    shared = work / "checkpoints"
    shared.mkdir()
    first = start_job(
        2, work, "killed", [*options, "--checkpoints", str(shared), "--hang-after", str(killed_after)], nodes=2
    )
    killed = _kill_after_checkpoint(first, shared / f"saved-0-{killed_after}")
    rank_one_checkpoints = [p.name for p in (work / "killed-node-1").rglob("state*.pt")]
    # restarted pods land on fresh nodes: only the shared checkpoint is left
    shutil.rmtree(work / "killed-node-0", ignore_errors=True)
    restarted = [*options, "--checkpoints", str(shared), "--attempt", "1", "--init-seed", "100"]
    ranks = _finish(start_job(2, work, "resumed", restarted, nodes=2), work, "resumed")
    weights = [
        torch.load(work / f"{name}-rank-0.pt", weights_only=True) | _method_states(work, name, 1)[0]
        for name in ("uninterrupted", "resumed")
    ]
    return {
        "killed_exit_codes": killed,
        "rank_one_wrote_checkpoints": rank_one_checkpoints,
        "resumed_epochs": [rank["epochs"] for rank in ranks],
        "resumed_from_checkpoint": [rank["resumed"] for rank in ranks],
        "resume_bitwise_equal": all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0]),
        **{
            f"uninterrupted_{key}": uninterrupted[key]
            for key in ("coverage_exact", "steps_per_rank", "method_state_identical_across_ranks")
        },
    }


def main() -> None:
    args = parse_arguments(__doc__)
    sizes, batch_size = (QUICK_SHARD_SIZES, 5) if args.quick else (FULL_SHARD_SIZES, FULL_BATCH_SIZE)
    with tempfile.TemporaryDirectory(prefix="multirank-") as folder:
        results = {}
        for method in METHODS:
            work = Path(folder) / method
            results[method] = {
                f"W{w}": coverage(w, work / f"W{w}", sizes, method=method, batch_size=batch_size) for w in (1, 2, 3)
            }
            results[method]["W2"].update(resume(work / "resume", sizes, method=method, batch_size=batch_size))
    payload = {"shard_sizes": list(sizes), "batch_size_per_rank": batch_size, "results": results}
    path = write_result("multirank-quick" if args.quick else "multirank", payload, args.out)
    print(json.dumps(results))
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()

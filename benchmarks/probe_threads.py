"""PyTorch threads beside a busy core: why each test worker and pod gets its share of the cores (OMP_NUM_THREADS).

The linear probe (ssl_models.probe.fit_linear_probe: full-batch L-BFGS, small matrices, many steps) of MNIST-5k's raw
pixels (829 training and 133 validation images, as a pipeline's 1% fold at 100% of its labels) is fitted with one
and with as many intra-op threads as cores, once on an idle machine and once while another process keeps one core
busy (as the other pytest-xdist worker, or another pod on the node, does). Printed and saved: CPU and wall seconds of
each fit, and the wall ratio of all threads over one thread beside the busy core.

    python benchmarks/probe_threads.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import parse_arguments, write_result
from ssl_models.probe import fit_linear_probe
from sslflow.data.sources.builtin import mnist_5k_path

TRAIN, VAL = 829, 133
BUSY_LOOP = "import time\nwhile True:\n    sum(range(10**6))\n"  # one core busy, in pure Python (no threads)


def fit_seconds(threads: int, features: np.ndarray, labels: np.ndarray) -> dict:
    """CPU and wall seconds of one probe fit with ``threads`` intra-op threads."""
    torch.set_num_threads(threads)
    cpu, wall = time.process_time(), time.perf_counter()
    fit = fit_linear_probe(
        features[:TRAIN], labels[:TRAIN], features[TRAIN : TRAIN + VAL], labels[TRAIN : TRAIN + VAL], 10
    )
    return {
        "threads": threads,
        "cpu_seconds": round(time.process_time() - cpu, 2),
        "wall_seconds": round(time.perf_counter() - wall, 2),
        "inverse_l2": fit.inverse_l2,
    }


def main() -> None:
    parse_arguments(__doc__)
    table = pd.read_csv(mnist_5k_path(), header=None).to_numpy()
    features, labels = table[:, :-1].astype(np.float64), table[:, -1].astype(int)
    cores = os.cpu_count() or 1
    fit_seconds(1, features, labels)  # warm-up: the first fit pays for PyTorch's first calls
    results = {"idle": [fit_seconds(threads, features, labels) for threads in (1, cores)]}
    busy = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
    try:
        time.sleep(1)
        results["one_core_busy"] = [fit_seconds(threads, features, labels) for threads in (1, cores)]
    finally:
        busy.kill()
        busy.wait()
    one, all_cores = results["one_core_busy"]
    ratio = round(all_cores["wall_seconds"] / one["wall_seconds"], 2)
    for state, fits in results.items():
        for fit in fits:
            print(f"{state:>14}: {fit['threads']} thread(s): {fit['cpu_seconds']} s CPU, {fit['wall_seconds']} s wall")
    print(f"beside a busy core, {cores} threads take {ratio}x the wall time of one")
    path = write_result("probe_threads", {"cores": cores, "results": results, "busy_wall_all_over_one": ratio})
    print(f"saved {path}")


if __name__ == "__main__":
    main()

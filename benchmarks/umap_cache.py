"""UMAP's compile time, with and without numba's on-disk cache (sslflow.reporting.charts.cache_umap_compilation).

umap-learn's numba functions are compiled in every process that fits, before any picture: the evaluate task pays it
once per run. Three fresh processes draw the evaluate picture's UMAP (umap_points, seed 0) of the same 131 random
points of 64 features (the size of a small pipeline's labelled test split), one after the other, with a new, empty
NUMBA_CACHE_DIR: numba's cache left off (as umap-learn ships), then on twice (the first compiles and writes the cache,
the second loads it). Printed and saved: each process's CPU seconds for `import umap` and for the fit, whether the
points are identical, and the fit's CPU ratio of a process with a warm cache over one without the cache.

    python benchmarks/umap_cache.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import PROJECT_ROOT, parse_arguments, write_result

POINTS, FEATURES = 131, 64
CHILD = f"""
import json, sys, time
import numpy as np
started = time.process_time()
import umap
from sslflow.reporting import charts
imported = time.process_time()
if sys.argv[1] == "off":
    charts.cache_umap_compilation = lambda module: None  # umap-learn as it ships
features = np.random.default_rng(0).normal(size=({POINTS}, {FEATURES})).astype(np.float32)
points = charts.umap_points(features, seed=0)
print(json.dumps({{"import_cpu_seconds": round(imported - started, 2),
                  "fit_cpu_seconds": round(time.process_time() - imported, 2), "points": points.tolist()}}))
"""


def fit_in_a_process(cache: str, cache_dir: str) -> dict:
    """One fresh process's import and fit CPU seconds, and its points; ``cache``: "off" or "on"."""
    environment = {**os.environ, "NUMBA_CACHE_DIR": cache_dir, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", CHILD, cache], env=environment, capture_output=True, text=True, check=True
    )
    return {"numba_cache": cache, **json.loads(result.stdout.strip().splitlines()[-1])}


def main() -> None:
    arguments = parse_arguments(__doc__)
    with tempfile.TemporaryDirectory() as cache_dir:
        runs = [fit_in_a_process(cache, cache_dir) for cache in ("off", "on", "on")]
    identical = all(run["points"] == runs[0]["points"] for run in runs)
    for run in runs:
        del run["points"]
        print(f"numba cache {run['numba_cache']}: import {run['import_cpu_seconds']} s, fit {run['fit_cpu_seconds']} s")
    ratio = round(runs[2]["fit_cpu_seconds"] / runs[0]["fit_cpu_seconds"], 3)
    print(f"points identical in the three processes: {identical}; warm-cache fit / uncached fit: {ratio}x CPU")
    payload = {"points": POINTS, "features": FEATURES, "processes": runs, "identical_points": identical}
    path = write_result("umap_cache", {**payload, "warm_over_uncached_fit_cpu": ratio}, arguments.out)
    print(f"saved {path}")


if __name__ == "__main__":
    main()

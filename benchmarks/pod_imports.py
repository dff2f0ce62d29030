"""What a pod pays to start: the CPU seconds of importing each task module in a fresh process, this checkout beside
another (``--base``, e.g. an older commit's worktree), one after the other, repeated.

Every pod of a Flyte execution is a fresh Python process that imports its task's module before the task runs (the
ingest map task runs one per chunk: hundreds at 10^6 files); so does every `pyflyte run` of a workflow. For each
module: the median over ``--repeats`` processes of `time.process_time()` around the import (OMP_NUM_THREADS=1),
and which of torch, mlflow and sklearn it loaded.

    python benchmarks/pod_imports.py --base ../old-checkout          # side by side with another checkout
    python benchmarks/pod_imports.py                                  # this checkout only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import PROJECT_ROOT, write_result

MODULES = (
    "tasks.ingest",
    "tasks.store",
    "tasks.data_run",
    "tasks.validate",
    "tasks.finetune",
    "workflows.data",
    "workflows.pipeline",
)
HEAVY = ("torch", "mlflow", "sklearn")
CHILD = """
import json, sys, time
started = time.process_time()
__import__(sys.argv[1])
cpu_seconds = time.process_time() - started
print(json.dumps({"cpu_seconds": cpu_seconds, "loaded": [name for name in sys.argv[2:] if name in sys.modules]}))
"""


def import_once(checkout: Path, module: str) -> dict:
    """CPU seconds and heavy packages loaded when a fresh process imports ``module`` from ``checkout``."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(checkout)}
    result = subprocess.run(
        [sys.executable, "-c", CHILD, module, *HEAVY],
        cwd=checkout,
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure(checkouts: dict[str, Path], repeats: int) -> dict:
    """{module: {checkout name: {median_cpu_seconds, loaded}}}, the checkouts alternating process by process."""
    samples = {module: {name: [] for name in checkouts} for module in MODULES}
    loaded = {module: {} for module in MODULES}
    for _ in range(repeats):
        for module in MODULES:
            for name, checkout in checkouts.items():
                once = import_once(checkout, module)
                samples[module][name].append(once["cpu_seconds"])
                loaded[module][name] = once["loaded"]
    return {
        module: {
            name: {"median_cpu_seconds": round(statistics.median(values), 2), "loaded": loaded[module][name]}
            for name, values in by_checkout.items()
        }
        for module, by_checkout in samples.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, default=None, help="another checkout, measured beside this one")
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per module and checkout")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    arguments = parser.parse_args()
    checkouts = {"this": PROJECT_ROOT}
    if arguments.base is not None:
        checkouts["base"] = arguments.base.resolve()
    base_commit = None
    if "base" in checkouts:
        base_commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=checkouts["base"], capture_output=True, text=True
        ).stdout.strip()
    modules = measure(checkouts, arguments.repeats)
    for module, by_checkout in modules.items():
        line = ", ".join(f"{name} {m['median_cpu_seconds']} s {m['loaded']}" for name, m in by_checkout.items())
        print(f"{module}: {line}")
    payload = {"repeats": arguments.repeats, "base_commit": base_commit, "modules": modules}
    print(f"saved {write_result('pod_imports', payload, arguments.out)}")


if __name__ == "__main__":
    main()

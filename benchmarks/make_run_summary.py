"""A cold ``make run`` (``make clean-cache``, a new MLflow store), and what it printed, as a committed result.

Moves ``mlflow.db`` and ``mlartifacts/`` aside (to ``*.before-<time>``), clears Flyte's caches, runs ``make run``
and writes ``benchmarks/results/make_run_summary-<device>-<date>.txt``: a header (command, machine, commit,
dirty flag, date, wall time) and the summary the pipeline printed, copied, not retyped. The README's results
section is generated from that file (benchmarks/readme_tables.py).

    python benchmarks/make_run_summary.py        # about 6 minutes on 2 cores
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import PROJECT_ROOT, RESULTS_DIR, machine

SUMMARY_START = "Accuracy on the in-domain test split"


def _set_store_aside() -> None:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for name in ("mlflow.db", "mlartifacts"):
        if (PROJECT_ROOT / name).exists():
            os.replace(PROJECT_ROOT / name, PROJECT_ROOT / f"{name}.before-{stamp}")


def main() -> None:
    info = machine()  # before the run: the commit and dirty flag of the code that runs
    _set_store_aside()
    subprocess.run(["make", "clean-cache"], cwd=PROJECT_ROOT, check=True)
    started = time.monotonic()
    completed = subprocess.run(["make", "run"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    wall = time.monotonic() - started
    if completed.returncode != 0 or SUMMARY_START not in completed.stdout:
        sys.exit(f"make run failed (exit {completed.returncode}):\n{(completed.stdout + completed.stderr)[-4000:]}")
    summary = completed.stdout[completed.stdout.index(SUMMARY_START) :]  # the printed summary; the log went to stderr
    now = datetime.datetime.now(datetime.UTC)
    header = [
        "# command: make clean-cache && make run (with a new MLflow store)",
        f"# machine: {info['cpu_count']}-core {platform.machine()} CPU, {info['device']}",
        f"# cpu: {info['cpu_model']}, instruction sets {' '.join(info['cpu_instruction_sets'])}, "
        f"PyTorch kernels {info['torch_cpu_capability']}",
        f"# commit: {info['commit']}",
        f"# dirty: {info['dirty']}",
        f"# date: {now.isoformat(timespec='seconds')}",
        f"# wall time: {wall:.0f} s",
        f"# load average at the end (1, 5, 15 min): {', '.join(f'{load:.1f}' for load in os.getloadavg())}",
    ]
    path = (
        RESULTS_DIR / f"make_run_summary-{'gpu' if info['device'] != 'cpu' else 'cpu'}-{now:%Y%m%dT%H%M}.txt"
    )  # two runs a day: two files
    path.write_text("\n".join(header) + "\n" + summary)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

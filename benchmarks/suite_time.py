"""`make test` of this checkout beside another's (``--base``), at the same time, each in its own cgroup with a CPU
quota: the suite's wall time and CPU seconds on a slower machine, measured side by side.

The suite has a budget on CI's 2-core machine (25 minutes), which is slower than most development machines. Each run
gets ``--cpus`` CPUs' worth of time (a CFS quota of the cgroup v1 ``cpu`` controller: 1 of 2 cores halves the machine)
and, with ``--avx2``, PyTorch's and oneDNN's AVX2 kernels (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA), as on an AVX2-only
CPU. Both suites run at once, so whatever the host does in between falls on both. The ``cpuacct`` controller counts
each suite's CPU seconds (its whole process tree: pods, `pyflyte` runs, servers).

A quota on the whole suite lets one worker use a whole core while the other idles, so a suite's tail (one worker left)
runs at full speed there, which a slower 2-core machine does not. With ``--worker-cpus`` each pytest-xdist worker (and
all it starts) gets a cgroup of its own inside its suite's, with that quota: ``--cpus 1 --worker-cpus 0.5`` is two
cores at half speed. A pytest plugin (WORKER_PLUGIN, written to a temporary folder put on PYTHONPATH and loaded with
``-p``) moves each worker into its cgroup when it starts, so a checkout needs no code of its own for it.

Needs root and cgroup v1 (``/sys/fs/cgroup/cpu``, ``/sys/fs/cgroup/cpuacct``). The base checkout (a `git worktree`
of an older commit) runs on this checkout's virtual environment: its folder is put first on PYTHONPATH.

Without ``--base`` (and ``--cpus``), this checkout's suite runs alone on the whole machine: its wall time where the
machine is the one a budget names (CI's 2-core AVX2-only CPU), not an emulation of it.

    python benchmarks/suite_time.py --base ../base-worktree --cpus 1 --avx2
    python benchmarks/suite_time.py --base ../base-worktree --cpus 1 --worker-cpus 0.5 --avx2
    python benchmarks/suite_time.py --name suite_time-alone
    python benchmarks/suite_time.py --this ../old-worktree --name suite_time-alone-old   # an older suite, alone
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import PROJECT_ROOT, write_result

CGROUPS = Path("/sys/fs/cgroup")
PERIOD_US = 100_000
WORKER_PLUGIN = f'''"""Each pytest-xdist worker into a cgroup of its own inside $SSLFLOW_SUITE_CGROUP, with a quota of
$SSLFLOW_WORKER_CPUS CPUs (benchmarks/suite_time.py --worker-cpus)."""
import os
from pathlib import Path


def pytest_configure(config):
    worker, suite = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("SSLFLOW_SUITE_CGROUP")
    if not worker or not suite:
        return
    for controller in ("cpu", "cpuacct"):
        folder = Path("{CGROUPS}") / controller / suite / worker
        folder.mkdir(exist_ok=True)
        if controller == "cpu":
            (folder / "cpu.cfs_period_us").write_text("{PERIOD_US}")
            quota = int(float(os.environ["SSLFLOW_WORKER_CPUS"]) * {PERIOD_US})
            (folder / "cpu.cfs_quota_us").write_text(str(quota))
        (folder / "cgroup.procs").write_text(str(os.getpid()))
'''


def _cgroup(name: str, cpus: float | None) -> dict[str, Path]:
    """The cpu and cpuacct cgroups ``name`` (made afresh), the cpu one limited to ``cpus`` CPUs' worth of time (no
    limit for None)."""
    folders = {}
    for controller in ("cpu", "cpuacct"):
        folder = CGROUPS / controller / name
        if folder.exists():
            for worker in folder.iterdir():  # a worker's cgroup from an earlier run (empty: its processes ended)
                if worker.is_dir():
                    worker.rmdir()
            folder.rmdir()
        folder.mkdir()
        folders[controller] = folder
    (folders["cpu"] / "cpu.cfs_period_us").write_text(str(PERIOD_US))
    (folders["cpu"] / "cpu.cfs_quota_us").write_text(str(int(cpus * PERIOD_US)) if cpus is not None else "-1")
    return folders


def _start(
    checkout: Path, name: str, cpus: float | None, worker_cpus: float | None, avx2: bool, log: Path
) -> tuple[subprocess.Popen, dict, float]:
    """`make test` in ``checkout``, in the cgroups ``name`` (each xdist worker in its own with ``worker_cpus``), its
    output into ``log``; every test's times in the log (``--durations=0``: benchmarks/suite_order.py reads them)."""
    groups = _cgroup(name, cpus)
    environment = {
        **os.environ,
        "PYTHONPATH": str(checkout),
        "PYTEST_ADDOPTS": f"--basetemp={Path('/tmp') / name} --durations=0",
    }
    if worker_cpus:
        plugin = Path(tempfile.mkdtemp(prefix="sslflow-suite-plugin-"))
        (plugin / "sslflow_worker_cgroup.py").write_text(WORKER_PLUGIN)
        environment["PYTHONPATH"] += f"{os.pathsep}{plugin}"
        environment["PYTEST_ADDOPTS"] += " -p sslflow_worker_cgroup"
        environment |= {"SSLFLOW_SUITE_CGROUP": name, "SSLFLOW_WORKER_CPUS": str(worker_cpus)}
    if avx2:
        environment |= {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}

    def enter_cgroups() -> None:  # in the child, before exec: make and everything it starts are counted
        for folder in groups.values():
            (folder / "tasks").write_text(str(os.getpid()))

    output = open(log, "w")  # noqa: SIM115 (the child keeps its own copy; closed when this process ends)
    process = subprocess.Popen(
        ["make", "test"],
        cwd=checkout,
        env=environment,
        stdout=output,
        stderr=subprocess.STDOUT,
        preexec_fn=enter_cgroups,
    )
    return process, groups, time.monotonic()


def _summary(log: Path) -> dict:
    """pytest's last line: counts of passed, failed, ... and its seconds."""
    lines = [line for line in log.read_text().splitlines() if re.search(r"\d+ passed|\d+ failed", line)]
    if not lines:
        return {"pytest_line": None}
    last = lines[-1]
    counts = {word: int(number) for number, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)", last)}
    seconds = re.search(r"in ([\d.]+)s", last)
    return {"pytest_line": last.strip("= "), "tests": counts, "pytest_seconds": float(seconds[1]) if seconds else None}


def _commit(checkout: Path) -> dict:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=checkout, capture_output=True, text=True, check=True).stdout.strip()

    return {"commit": git("rev-parse", "--short", "HEAD"), "dirty": bool(git("status", "--porcelain"))}


def _checkouts(this: Path | None, base: Path | None) -> dict[str, Path]:
    """The checkouts whose suites run: "this" (this one unless given) and, when given, "base"."""
    return {"this": this.resolve() if this else PROJECT_ROOT} | ({"base": base.resolve()} if base else {})


def _this_over_base(runs: dict[str, dict]) -> dict[str, float] | None:
    """This suite's wall time and CPU seconds over the base's; None for a suite run alone."""
    if "base" not in runs:
        return None
    return {key: round(runs["this"][key] / runs["base"][key], 3) for key in ("make_test_wall_seconds", "cpu_seconds")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, help="the other checkout (a worktree of an older commit); none: alone")
    parser.add_argument("--this", type=Path, help="the checkout timed as 'this' (default: this one)")
    parser.add_argument("--cpus", type=float, help="CPUs' worth of time each suite gets (default: no limit)")
    parser.add_argument("--worker-cpus", type=float, help="CPUs' worth of time each pytest-xdist worker gets")
    parser.add_argument("--avx2", action="store_true", help="PyTorch and oneDNN limited to AVX2 kernels")
    parser.add_argument("--name", default="suite_time-sidebyside", help="the result's name")
    arguments = parser.parse_args()
    checkouts = _checkouts(arguments.this, arguments.base)
    logs = {which: Path("/tmp") / f"{arguments.name}-{which}.log" for which in checkouts}  # one run's kept by the next
    commits = {which: _commit(checkout) for which, checkout in checkouts.items()}  # before: a commit may land meanwhile
    started = {
        which: _start(
            checkout, f"sslflow-suite-{which}", arguments.cpus, arguments.worker_cpus, arguments.avx2, logs[which]
        )
        for which, checkout in checkouts.items()
    }
    runs = {}
    for which, (process, groups, start) in started.items():
        status = process.wait()
        runs[which] = {
            **commits[which],
            "checkout": str(checkouts[which]),
            "make_test_exit_status": status,
            "make_test_wall_seconds": round(time.monotonic() - start, 1),
            "cpu_seconds": round(int((groups["cpuacct"] / "cpuacct.usage").read_text()) / 1e9, 1),
            "cpu_stat": dict(line.split() for line in (groups["cpu"] / "cpu.stat").read_text().splitlines()),
            "log": str(logs[which]),
            **_summary(logs[which]),
        }
    ratio = _this_over_base(runs)
    path = write_result(
        arguments.name,
        {
            "cpus_each": arguments.cpus,
            "worker_cpus": arguments.worker_cpus,
            "avx2": arguments.avx2,
            "runs": runs,
            "this_over_base": ratio,
        },
    )
    print(path)
    for which, run in runs.items():
        print(
            which,
            run["commit"],
            run["make_test_wall_seconds"],
            "s wall,",
            run["cpu_seconds"],
            "s CPU,",
            run.get("tests"),
        )


if __name__ == "__main__":
    main()

"""The order in which `make test` starts its test files, replayed: pytest-xdist's ``--dist loadfile`` scheduling on the
per-test times of one whole run, for the order tests/conftest.py gives now and the order of another commit's conftest.

`make test` runs two workers, each handed whole files in the order conftest's LONGEST_FIRST puts first (then pytest's
order: by file name). xdist hands a worker its next file whenever two or fewer of its tests are left to run, so a long
file handed out late keeps one worker busy after the other has finished. The replay runs each file's tests for the
times the log gives (setup + call + teardown) and reports when each worker would end, for:

- ``this``: this checkout's LONGEST_FIRST; ``base``: ``--base``'s (a commit, read with `git show`);
- ``longest_first``: every file by its total time, longest first (what a complete list would give).

    PYTEST_ADDOPTS=--durations=0 make test > suite.log     # every test's times (the log of one whole run)
    python benchmarks/suite_order.py suite.log --base 61f7e38

The replay assumes every test takes the time it took in the logged run whichever worker runs it and whatever runs
beside it; tests under pytest's 5 ms reporting floor count as 0.
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import PROJECT_ROOT, write_result

WORKERS = 2
HANDED_OUT_BELOW = 3  # xdist's loadscope scheduler hands a worker another file when it has at most 2 tests left
DURATION = re.compile(r"^\s*([\d.]+)s (?:setup|call|teardown)\s+(tests/[^:\s]+)::(\S+)", re.MULTILINE)


def times_per_test(log: str) -> dict[str, dict[str, float]]:
    """{file: {test: seconds (setup + call + teardown)}} from a pytest log with ``--durations=0``, files by name."""
    times: dict[str, dict[str, float]] = {}
    for seconds, path, test in DURATION.findall(log):
        file = times.setdefault(Path(path).name, {})
        file[test] = file.get(test, 0.0) + float(seconds)
    return times


def longest_first_of(conftest: str) -> tuple[str, ...]:
    """The LONGEST_FIRST tuple of a conftest.py's source."""
    for node in ast.parse(conftest).body:
        if isinstance(node, ast.Assign) and any(
            getattr(target, "id", "") == "LONGEST_FIRST" for target in node.targets
        ):
            return tuple(ast.literal_eval(node.value))
    raise ValueError("conftest.py has no LONGEST_FIRST")


def file_order(files: list[str], first: tuple[str, ...]) -> list[str]:
    """The files as conftest orders them: ``first`` in its order, then the rest by name."""
    rank = {name: position for position, name in enumerate(first)}
    return sorted(files, key=lambda name: (rank.get(name, len(rank)), name))


def replay(times: dict[str, dict[str, float]], order: list[str], workers: int = WORKERS) -> list[float]:
    """When each worker ends (seconds) if the files are handed out in ``order`` as xdist's loadfile scheduling does:
    one file to each worker, then another to each with fewer than HANDED_OUT_BELOW tests left, and after every test
    another file to the worker that ran it, while it has fewer than HANDED_OUT_BELOW tests left."""
    queue = deque(name for name in order if name in times)
    clocks, pending = [0.0] * workers, [deque() for _ in range(workers)]

    def hand_out(worker: int) -> None:
        if queue:
            pending[worker].extend(times[queue.popleft()].values())

    for worker in range(workers):
        hand_out(worker)
    for worker in range(workers):
        if len(pending[worker]) < HANDED_OUT_BELOW:
            hand_out(worker)
    while any(pending):
        worker = min((w for w in range(workers) if pending[w]), key=lambda w: clocks[w] + pending[w][0])
        clocks[worker] += pending[worker].popleft()
        if len(pending[worker]) < HANDED_OUT_BELOW:
            hand_out(worker)
    return [round(clock, 1) for clock in clocks]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", type=Path, help="the output of `make test` run with PYTEST_ADDOPTS=--durations=0")
    parser.add_argument("--base", required=True, help="a commit whose tests/conftest.py order is compared")
    parser.add_argument("--name", default="suite_order")
    arguments = parser.parse_args()
    times = times_per_test(arguments.log.read_text())
    base_conftest = subprocess.run(
        ["git", "show", f"{arguments.base}:tests/conftest.py"], cwd=PROJECT_ROOT, capture_output=True, text=True
    ).stdout
    orders = {
        "this": file_order(list(times), longest_first_of((PROJECT_ROOT / "tests" / "conftest.py").read_text())),
        "base": file_order(list(times), longest_first_of(base_conftest)),
        "longest_first": sorted(times, key=lambda name: -sum(times[name].values())),
    }
    ends = {name: replay(times, order) for name, order in orders.items()}
    payload = {
        "base": arguments.base,
        "log_pytest_line": next((line for line in arguments.log.read_text().splitlines() if " passed" in line), ""),
        "test_seconds": round(sum(sum(tests.values()) for tests in times.values()), 1),
        "worker_ends_seconds": ends,
        "last_worker_end_this_over_base": round(max(ends["this"]) / max(ends["base"]), 3),
        "file_seconds": {name: round(sum(tests.values()), 2) for name, tests in sorted(times.items())},
        "test_times": times,
    }
    print(ends)
    print(write_result(arguments.name, payload))


if __name__ == "__main__":
    main()

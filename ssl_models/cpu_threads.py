"""PyTorch's intra-op threads sized to the CPUs a pod may use, not the node's.

PyTorch starts as many intra-op threads as the physical cores the process may run on. In a Kubernetes pod those are
the whole node's, while the pod's CPU limit is a CFS quota: a pod limited to 8 CPUs on a 96-core node runs 96 threads
that share 8 CPUs of time, spin at every barrier and are throttled for most of each period. The limit is read from the
pod's cgroup (v2's cpu.max, else v1's cpu.cfs_quota_us over cpu.cfs_period_us) and shared by the training processes
on the node (torchrun's LOCAL_WORLD_SIZE). OMP_NUM_THREADS, when set, is left to decide (the user's choice, or a
launcher's).

This module imports no torch: the ingest pods, which never load it, call it too and have no thread pool to size.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")  # a pod's own cgroup, mounted where the container sees it
THREADS_VARIABLE = "OMP_NUM_THREADS"  # read by PyTorch's OpenMP pool at start; its presence means "leave it"


def cgroup_cpu_limit(root: Path | None = None) -> float | None:
    """The CPUs this container's cgroup under ``root`` (default CGROUP_ROOT) may use: quota / period, 2.5 for
    "250000 100000"; None when it has no limit ("max" in v2, -1 in v1) or no cgroup file can be read."""
    root = CGROUP_ROOT if root is None else root
    try:
        quota, period = (root / "cpu.max").read_text().split()
    except (OSError, ValueError):
        try:
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    if quota == "max" or int(quota) <= 0:
        return None
    return int(quota) / int(period)


def intra_op_threads(cores: int, local_workers: int, root: Path | None = None) -> int:
    """Threads for one of ``local_workers`` training processes on a node of ``cores`` (PyTorch's own count): the
    cores capped by the cgroup's CPU limit, shared equally, at least one."""
    limit = cgroup_cpu_limit(root)
    usable = cores if limit is None else min(cores, math.floor(limit))
    return max(1, usable // max(1, local_workers))


@functools.cache
def _pytorch_default_threads() -> int:
    """PyTorch's thread count before the first change here: the node's physical cores (or OMP_NUM_THREADS)."""
    return sys.modules["torch"].get_num_threads()


def use_the_pods_cpus(root: Path | None = None) -> None:
    """Set this process's PyTorch intra-op threads to ``intra_op_threads`` for the training processes on the node
    (LOCAL_WORLD_SIZE, 1 outside torchrun), unless OMP_NUM_THREADS is set or PyTorch is not loaded."""
    torch = sys.modules.get("torch")
    if torch is None or THREADS_VARIABLE in os.environ:
        return
    local_workers = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    torch.set_num_threads(intra_op_threads(_pytorch_default_threads(), local_workers, root))

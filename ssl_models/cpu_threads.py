"""PyTorch's intra-op threads sized to the CPUs a pod may use, not the node's.

PyTorch starts as many intra-op threads as the physical cores the process may run on. In a Kubernetes pod those are
the whole node's, while the pod's CPU limit is a CFS quota: a pod limited to 8 CPUs on a 96-core node runs
96 threads that share 8 CPUs of time, spin at every barrier and are throttled for most of each period. The limit is
read from the pod's cgroup (v2's cpu.max, else v1's cpu.cfs_quota_us over cpu.cfs_period_us) and shared by the
training processes on the node (torchrun's LOCAL_WORLD_SIZE). OMP_NUM_THREADS, when set, is left to decide (the user's
choice, or a launcher's).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from ssl_models import data

THREADS_VARIABLE = "OMP_NUM_THREADS"  # read by PyTorch's OpenMP pool at start; its presence means "leave it"
PYTORCH_DEFAULT_THREADS = torch.get_num_threads()  # the node's physical cores, before anything here changes it


def cgroup_cpu_limit(root: Path | None = None) -> float | None:
    """The CPUs this container's cgroup under ``root`` (default ssl_models.data.CGROUP_ROOT) may use: quota / period,
    2.5 for "250000 100000"; None when it has no limit ("max" in v2, -1 in v1) or no cgroup file can be read."""
    root = data.CGROUP_ROOT if root is None else root
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


def intra_op_threads(local_workers: int, root: Path | None = None) -> int:
    """Threads for one of ``local_workers`` training processes: the usable cores (PyTorch's default, capped by the
    cgroup's CPU limit) shared equally, at least one."""
    limit = cgroup_cpu_limit(root)
    usable = PYTORCH_DEFAULT_THREADS if limit is None else min(PYTORCH_DEFAULT_THREADS, math.floor(limit))
    return max(1, usable // max(1, local_workers))


def use_the_pods_cpus(local_workers: int, root: Path | None = None) -> None:
    """Set PyTorch's intra-op threads for this process to ``intra_op_threads``, unless OMP_NUM_THREADS is set."""
    if THREADS_VARIABLE not in os.environ:
        torch.set_num_threads(intra_op_threads(local_workers, root))

"""PyTorch's threads in a pod follow the pod's CPU limit (its cgroup), not the node's cores (ssl_models.cpu_threads)."""

from __future__ import annotations

import pytest
import torch

from ssl_models import cpu_threads
from ssl_models.cpu_threads import cgroup_cpu_limit, intra_op_threads


def _cgroup(root, **files: str):
    for name, text in files.items():
        path = root / name.replace("__", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return root


def test_the_cpu_limit_is_read_from_cgroup_v2_then_v1(tmp_path):
    assert cgroup_cpu_limit(_cgroup(tmp_path / "v2", **{"cpu.max": "250000 100000"})) == 2.5
    assert cgroup_cpu_limit(_cgroup(tmp_path / "v2-none", **{"cpu.max": "max 100000"})) is None
    v1 = _cgroup(tmp_path / "v1", **{"cpu__cpu.cfs_quota_us": "300000", "cpu__cpu.cfs_period_us": "100000"})
    assert cgroup_cpu_limit(v1) == 3.0
    v1_none = _cgroup(tmp_path / "v1-none", **{"cpu__cpu.cfs_quota_us": "-1", "cpu__cpu.cfs_period_us": "100000"})
    assert cgroup_cpu_limit(v1_none) is None
    assert cgroup_cpu_limit(tmp_path / "no-cgroup") is None


def test_threads_are_the_limit_shared_by_the_workers_on_the_node(tmp_path):
    eight_cpus = _cgroup(tmp_path / "pod", **{"cpu.max": "800000 100000"})  # on a 96-core node
    assert intra_op_threads(96, 1, eight_cpus) == 8 and intra_op_threads(96, 4, eight_cpus) == 2
    assert intra_op_threads(96, 8, _cgroup(tmp_path / "small", **{"cpu.max": "50000 100000"})) == 1  # at least one
    assert intra_op_threads(96, 2, tmp_path / "no-limit") == 48


@pytest.fixture
def threads_restored():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_a_task_in_a_pod_limited_to_one_cpu_runs_one_thread(tmp_path, monkeypatch, threads_restored):
    """Every task body runs under tasks.shared.outages_are_recoverable: in a pod whose cgroup grants one CPU, PyTorch
    runs one intra-op thread however many cores the node has; an OMP_NUM_THREADS the user set is left as it is."""
    from tasks.shared import outages_are_recoverable

    monkeypatch.setattr(cpu_threads, "CGROUP_ROOT", _cgroup(tmp_path, **{"cpu.max": "100000 100000"}))
    monkeypatch.setattr(cpu_threads, "_pytorch_default_threads", lambda: 2)  # a node of two cores
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(2)  # as PyTorch starts there
    assert outages_are_recoverable(torch.get_num_threads)() == 1

    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    torch.set_num_threads(2)
    assert outages_are_recoverable(torch.get_num_threads)() == 2

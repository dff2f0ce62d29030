"""Many ranks, one model: each rank binds its own GPU, collectives use the backend's device, W ranks cover an
epoch exactly with equal steps and end with the same model on every rank, and a multi-node job killed with SIGKILL
resumes to bitwise the same weights; for SimCLR, MoCo v2 (its queue) and BYOL (its target network).

The device tests monkeypatch the GPU count and the process group (no GPU here); the coverage and resume tests
run real gloo ranks, each a process started as torchrun starts it (benchmarks/multirank.py).
"""

from __future__ import annotations

import signal

import pytest
import torch

from benchmarks.multirank import QUICK_SHARD_SIZES, coverage, resume
from ssl_models import distributed
from ssl_models.distributed import collective_device, init_from_environment, rank_device


def test_every_local_rank_of_an_eight_gpu_node_gets_its_own_gpu():
    devices = [rank_device(local_rank, cuda_devices=8) for local_rank in range(8)]
    assert devices == [torch.device("cuda", k) for k in range(8)]
    assert rank_device(0, cuda_devices=0) == torch.device("cpu")
    with pytest.raises(ValueError, match="local rank 8 has no GPU of its own: the node has 8"):
        rank_device(8, cuda_devices=8)


@pytest.mark.parametrize("local_rank", range(8))
def test_a_rank_binds_its_gpu_before_it_joins_the_nccl_group(monkeypatch, local_rank):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", torch.device(device))))
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(
        distributed.dist, "init_process_group", lambda backend: calls.append(("init_process_group", backend))
    )
    environment = {
        "RANK": str(8 + local_rank),
        "LOCAL_RANK": str(local_rank),
        "WORLD_SIZE": "16",
        "LOCAL_WORLD_SIZE": "8",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    process = init_from_environment()
    assert calls == [("set_device", torch.device("cuda", local_rank)), ("init_process_group", "nccl")]
    assert (
        process.device == torch.device("cuda", local_rank)
        and process.local_world_size == 8
        and process.rank == 8 + local_rank
    )


def test_nccl_collectives_take_the_ranks_gpu_and_gloo_collectives_the_host():
    assert collective_device("nccl", torch.device("cuda", 5)) == torch.device("cuda", 5)
    assert collective_device("gloo", torch.device("cpu")) == torch.device("cpu")
    assert collective_device("gloo", torch.device("cuda", 5)) == torch.device("cpu")
    with pytest.raises(ValueError, match="NCCL backend moves CUDA tensors only"):
        collective_device("nccl", torch.device("cpu"))


def test_the_loss_mean_is_all_reduced_on_the_collective_device(monkeypatch):
    """mean_across_ranks builds its tensor where collective_device says (here: gloo, the host), not always on the
    host."""
    seen = []
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed.dist, "get_backend", lambda: "gloo")
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(distributed.dist, "all_reduce", lambda tensor: (seen.append(tensor.device), tensor.mul_(2)))
    monkeypatch.setattr(
        distributed, "collective_device", lambda backend, device: torch.device("meta") if backend == "gloo" else device
    )
    with pytest.raises((NotImplementedError, RuntimeError)):
        distributed.mean_across_ranks(0.5)  # a meta tensor has no value to read back: the point is where it was made
    assert seen == [torch.device("meta")]


@pytest.mark.parametrize("world_size", [2, 3])
def test_w_gloo_ranks_cover_an_epoch_of_uneven_shards_exactly_with_equal_steps(tmp_path, world_size):
    result = coverage(world_size, tmp_path, QUICK_SHARD_SIZES)
    assert result["coverage_exact"], result
    assert 0 < result["padded_images_per_epoch"] <= world_size - 1
    steps = result["steps_per_rank"]
    assert len(steps) == world_size and all(rank_steps == steps[0] for rank_steps in steps), steps
    assert result["order_changes_between_epochs"]
    assert result["method_state_identical_across_ranks"]


def test_two_ranks_killed_with_sigkill_resume_to_bitwise_the_weights_of_an_uninterrupted_run(tmp_path):
    """Two nodes of one rank: SIGKILL after epoch 1's checkpoint, node 0's disk wiped, restart: only rank 0 wrote and
    read the checkpoint (rank 1 gets it by broadcast), both resume at epoch 2, and the final weights are bitwise equal
    to those of an uninterrupted job with the same seed (each rank's augmentation generator is in the checkpoint)."""
    result = resume(tmp_path, QUICK_SHARD_SIZES, epochs=4, killed_after=1)
    assert result["killed_exit_codes"] == [-signal.SIGKILL] * 2
    assert result["rank_one_wrote_checkpoints"] == []
    assert result["resumed_epochs"] == [[2, 3], [2, 3]] and result["resumed_from_checkpoint"] == [True, False]
    assert result["resume_bitwise_equal"]


@pytest.mark.parametrize("method", ["moco", "byol"])
def test_moco_and_byol_on_two_gloo_ranks_cover_exactly_agree_across_ranks_and_resume_bitwise(tmp_path, method):
    """MoCo v2 (queue of every rank's keys, BatchNorm shuffled across ranks) and BYOL (target network) on two nodes:
    exact coverage with equal steps, the queue and key network (the target) bitwise the same on both ranks at the end,
    and a job killed after epoch 1's checkpoint resumes to an encoder, queue and target bitwise equal to an
    uninterrupted job's."""
    result = resume(tmp_path, QUICK_SHARD_SIZES, method=method, epochs=3, killed_after=1)
    steps = result["uninterrupted_steps_per_rank"]
    assert result["uninterrupted_coverage_exact"] and steps[0] == steps[1], result
    assert result["uninterrupted_method_state_identical_across_ranks"]
    assert result["resumed_epochs"] == [[2], [2]] and result["resumed_from_checkpoint"] == [True, False]
    assert result["resume_bitwise_equal"]

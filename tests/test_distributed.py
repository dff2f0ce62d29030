"""Two CPU processes (gloo): the rank-averaged NT-Xent equals the single-process loss on the same global batch."""

from __future__ import annotations

import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ssl_models.losses import NTXentLoss

WORLD_SIZE, PER_RANK, DIM, TAU = 2, 4, 8, 0.5


def _global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(WORLD_SIZE * PER_RANK, DIM, generator=generator), torch.randn(WORLD_SIZE * PER_RANK, DIM, generator=generator)


def _worker(rank: int, port: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        z_a, z_b = _global_batch()
        rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        local_a, local_b = z_a[rows].clone().requires_grad_(), z_b[rows].clone().requires_grad_()
        loss = NTXentLoss(TAU)(local_a, local_b)
        loss.backward()
        # DDP averages gradients over ranks; do the same by hand.
        results[rank] = (loss.item(), local_a.grad / WORLD_SIZE, local_b.grad / WORLD_SIZE)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_gathered_loss_and_gradients_equal_single_process():
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_worker, args=(_free_port(), results), nprocs=WORLD_SIZE, join=True)

    z_a, z_b = (t.clone().requires_grad_() for t in _global_batch())
    single = NTXentLoss(TAU)(z_a, z_b)
    single.backward()

    rank_mean = sum(results[rank][0] for rank in range(WORLD_SIZE)) / WORLD_SIZE
    assert abs(rank_mean - single.item()) < 1e-5
    for rank in range(WORLD_SIZE):
        rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        assert torch.allclose(results[rank][1], z_a.grad[rows], atol=1e-6)
        assert torch.allclose(results[rank][2], z_b.grad[rows], atol=1e-6)

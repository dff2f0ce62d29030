"""Two CPU processes (gloo): the rank-averaged NT-Xent equals the single-process loss on the same global batch."""

from __future__ import annotations

import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ranks import spawn_ranks

from ssl_models.losses import NTXentLoss

WORLD_SIZE, PER_RANK, DIM, TAU = 2, 4, 8, 0.5


def _global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(WORLD_SIZE * PER_RANK, DIM, generator=generator), torch.randn(
        WORLD_SIZE * PER_RANK, DIM, generator=generator
    )


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
    spawn_ranks(_worker, args=(_free_port(), results), nprocs=WORLD_SIZE)

    z_a, z_b = (t.clone().requires_grad_() for t in _global_batch())
    single = NTXentLoss(TAU)(z_a, z_b)
    single.backward()

    rank_mean = sum(results[rank][0] for rank in range(WORLD_SIZE)) / WORLD_SIZE
    assert abs(rank_mean - single.item()) < 1e-5
    for rank in range(WORLD_SIZE):
        rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        assert torch.allclose(results[rank][1], z_a.grad[rows], atol=1e-6)
        assert torch.allclose(results[rank][2], z_b.grad[rows], atol=1e-6)


def _pretrain_worker(rank: int, port: int, results) -> None:
    import os

    from ssl_models.augment import AugmentConfig
    from ssl_models.data import InMemoryPairs
    from ssl_models.encoders import build_encoder
    from ssl_models.pretraining import PretrainConfig, pretrain_contrastive

    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    images = torch.randint(0, 256, (40, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    encoder = build_encoder("small_cnn", 1)  # same initial weights on both ranks, as DDP requires
    config = PretrainConfig(epochs=2, batch_size=8, augment=AugmentConfig(output_size=16))
    history = pretrain_contrastive(
        encoder, InMemoryPairs(images, [i // 2 for i in range(40)], seed=config.seed), config
    )
    # Parameters must agree; BatchNorm running statistics are per rank on CPU (rank 0's are saved).
    results[rank] = ([h["loss"] for h in history], {k: v.detach().clone() for k, v in encoder.named_parameters()})
    dist.destroy_process_group()


def test_pretraining_runs_data_parallel_and_keeps_ranks_in_sync():
    manager = mp.Manager()
    results = manager.dict()
    spawn_ranks(_pretrain_worker, args=(_free_port(), results), nprocs=WORLD_SIZE)
    losses_0, weights_0 = results[0]
    losses_1, weights_1 = results[1]
    assert losses_0 == losses_1  # the logged loss is the mean across ranks
    for name, tensor in weights_0.items():
        assert torch.allclose(tensor.float(), weights_1[name].float(), atol=1e-5), name


def _resume_worker(rank: int, port: int, results) -> None:
    import os

    from ssl_models.augment import AugmentConfig
    from ssl_models.data import InMemoryPairs
    from ssl_models.encoders import build_encoder
    from ssl_models.pretraining import PretrainConfig, pretrain_contrastive

    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    images = torch.randint(0, 256, (40, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    config = PretrainConfig(epochs=3, batch_size=8, augment=AugmentConfig(output_size=16))
    torch.manual_seed(rank)  # different weights on each rank: only the resumed state may make them agree
    encoder = build_encoder("small_cnn", 1)
    state = results["state"] if rank == 0 else None  # only rank 0's node has the checkpoint
    history = pretrain_contrastive(encoder, InMemoryPairs(images, list(range(40))), config, resume_state=state)
    results[rank] = ([h["epoch"] for h in history], {k: v.detach().clone() for k, v in encoder.named_parameters()})
    dist.destroy_process_group()


def test_every_rank_resumes_rank_zeros_checkpoint_from_the_same_epoch():
    """Multi-node resume: rank 0 alone holds the checkpoint (after epoch 0); both ranks train epochs 1 and 2
    from its weights and end with identical weights."""
    from ssl_models.augment import AugmentConfig
    from ssl_models.data import InMemoryPairs
    from ssl_models.encoders import build_encoder
    from ssl_models.pretraining import PretrainConfig, pretrain_contrastive

    states = []
    images = torch.randint(0, 256, (40, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    config = PretrainConfig(epochs=1, batch_size=8, augment=AugmentConfig(output_size=16))
    pretrain_contrastive(
        build_encoder("small_cnn", 1),
        InMemoryPairs(images, list(range(40))),
        config,
        on_epoch_end=lambda e, m, state: states.append(state()),
    )
    manager = mp.Manager()
    results = manager.dict(state=states[0])
    spawn_ranks(_resume_worker, args=(_free_port(), results), nprocs=WORLD_SIZE)
    (epochs_0, weights_0), (epochs_1, weights_1) = results[0], results[1]
    assert epochs_0 == epochs_1 == [1, 2]
    for name, tensor in weights_0.items():
        assert torch.allclose(tensor, weights_1[name], atol=1e-5), name


def test_ssl_models_imports_no_flytekit_or_mlflow():
    import subprocess
    import sys

    code = (
        "import importlib, pkgutil, sys, ssl_models\n"
        "for module in pkgutil.iter_modules(ssl_models.__path__):\n"
        "    importlib.import_module('ssl_models.' + module.name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('flytekit', 'mlflow')))"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert completed.stdout.strip() == "[]"

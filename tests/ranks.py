"""A test's DDP ranks, started as ``torch.multiprocessing.spawn`` starts them but forked from a server that imported
PyTorch once (the ``forkserver`` start method with PyTorch preloaded): each rank is a new process that unpickles its
function and arguments, as under spawn, without spawn's 4-5 s of importing PyTorch in every rank.

    spawn_ranks(worker, args=(port, results), nprocs=2)      # worker(rank, port, results) in each rank; joined
"""

from __future__ import annotations

import torch.multiprocessing as mp

PRELOADED = ["torch", "torch.distributed", "torch._dynamo"]


def spawn_ranks(function, args: tuple, nprocs: int) -> None:
    """Run ``function(rank, *args)`` in ``nprocs`` processes and wait for all; a rank's exception is raised here."""
    mp.set_forkserver_preload(PRELOADED)
    mp.start_processes(function, args=args, nprocs=nprocs, join=True, start_method="forkserver")

"""Process-group helpers: the same code runs as 1 process or under torchrun / Flyte Elastic.

torchrun (and flytekitplugins-kfpytorch's Elastic, which wraps it) sets RANK, LOCAL_RANK, WORLD_SIZE and
LOCAL_WORLD_SIZE; without them we are a single process and nothing is initialised.

On a node with GPUs every process owns one: local rank k binds ``cuda:k`` (``torch.cuda.set_device``)
before it creates any CUDA tensor or joins the NCCL group, and every collective moves its tensors on the
device the group's backend needs (CUDA for NCCL, the host for gloo). Both decisions are small pure
functions (``rank_device``, ``collective_device``) so they can be tested without a GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ProcessInfo:
    """This process in the job: its global rank, its rank on the node, the job's and the node's process counts,
    and the device it trains on (``rank_device``)."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def rank_device(local_rank: int, cuda_devices: int) -> torch.device:
    """The device of the process with ``local_rank`` on a node with ``cuda_devices`` GPUs: ``cuda:local_rank``
    (one GPU per process, as torchrun's ``--nproc_per_node`` = GPUs per pod), or the CPU on a node without GPUs.

    Raises ValueError when a node runs more processes than it has GPUs (two processes on one GPU: NCCL
    refuses "duplicate GPU", or both run out of memory).
    """
    if cuda_devices == 0:
        return torch.device("cpu")
    if not 0 <= local_rank < cuda_devices:
        raise ValueError(
            f"local rank {local_rank} has no GPU of its own: the node has {cuda_devices}; start at most {cuda_devices} "
            "processes per node (Elastic nproc_per_node / SSLFLOW_NPROC_PER_NODE = the GPUs requested per pod)"
        )
    return torch.device("cuda", local_rank)


AUTO_WORKERS = "auto"  # torchrun's --nproc-per-node auto: the node's GPUs decide


def workers_per_node(setting: int | str, cuda_devices: int) -> int:
    """The worker processes a node (a pod) starts for ``setting``: an integer as given, or ``"auto"`` (AUTO_WORKERS):
    one per GPU of the node (``cuda_devices``, as torchrun's ``--nproc-per-node auto``), and one on a node without
    GPUs (torchrun starts one per CPU core there: ranks that share the node's cores only split them).

    Raises ValueError for anything else, naming the setting (Elastic nproc_per_node / SSLFLOW_NPROC_PER_NODE).
    """
    if setting == AUTO_WORKERS:
        return max(cuda_devices, 1)
    if isinstance(setting, int) and not isinstance(setting, bool) and setting >= 1:
        return setting
    raise ValueError(
        f"workers per node {setting!r} (Elastic nproc_per_node / SSLFLOW_NPROC_PER_NODE): give an integer >= 1 or "
        f"{AUTO_WORKERS!r} (one worker per GPU of the node, one without GPUs)"
    )


def backend_for(device: torch.device) -> str:
    """The process-group backend for processes training on ``device``: NCCL between GPUs, gloo between CPUs."""
    return "nccl" if device.type == "cuda" else "gloo"


def collective_device(backend: str, device: torch.device) -> torch.device:
    """Where a collective's tensors must be: on the process's GPU for NCCL (it has no host tensors), on the host
    for gloo. ``device`` is the process's training device (``rank_device``)."""
    if backend == "nccl":
        if device.type != "cuda":
            raise ValueError(f"the NCCL backend moves CUDA tensors only, but this process trains on {device}")
        return device
    return torch.device("cpu")


def init_from_environment() -> ProcessInfo:
    """Bind this process's device from LOCAL_RANK, then join the process group that torchrun's variables describe
    (NCCL on GPUs, gloo on CPUs). The binding comes first: NCCL and every later CUDA call use the current device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = rank_device(local_rank, torch.cuda.device_count() if torch.cuda.is_available() else 0)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend=backend_for(device))
    return ProcessInfo(
        rank=rank, local_rank=local_rank, world_size=world_size, local_world_size=local_world_size(), device=device
    )


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world_size() -> tuple[int, int]:
    """(this process's rank, the number of ranks) of the initialised group; (0, 1) in a single process."""
    if not is_distributed():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def _group_device() -> torch.device:
    """collective_device of the initialised group, for this process (its bound GPU under NCCL)."""
    backend = dist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    return collective_device(backend, device)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward hands each rank the summed gradient of its own slice."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, tensor.contiguous())
        return torch.cat(gathered, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)  # every rank's loss depends on every slice
        size = grad.shape[0] // dist.get_world_size()
        rank = dist.get_rank()
        return grad[rank * size : (rank + 1) * size]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (B, ...) from every rank in rank order -> (world*B, ...); gradients flow back.

    ``tensor`` is on the training device, which is the collective device of either backend."""
    if not is_distributed():
        return tensor
    return _GatherWithGrad.apply(tensor)


def mean_across_ranks(value: float) -> float:
    """The mean of a host float over all ranks (``value`` itself in a single process)."""
    if not is_distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=_group_device())
    dist.all_reduce(tensor)
    return float(tensor.item()) / dist.get_world_size()


def from_rank_zero(value):
    """``value`` as rank 0 holds it, on every rank (unchanged without a process group): a resume state found
    only on rank 0's node (its local checkpoint folder, or Flyte's checkpoint) reaches every node."""
    if not is_distributed():
        return value
    holder = [value if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(holder, src=0, device=_group_device())
    return holder[0]


def from_every_rank(value) -> list:
    """Every rank's ``value``, in rank order, on every rank (``[value]`` in a single process). A collective:
    every rank must call it."""
    if not is_distributed():
        return [value]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)  # uses the current device under NCCL: the bound GPU
    return gathered


def leave_process_group() -> None:
    """Wait for every rank, then destroy the process group (nothing in a single process). A process that exits with
    its gloo or NCCL group alive can abort in the group's destructor ("terminate called without an active
    exception"), and torchrun then reports the rank as failed although its work is done."""
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


def local_world_size() -> int:
    """Processes on this node (torchrun's LOCAL_WORLD_SIZE; 1 outside torchrun), readable before the group exists."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))

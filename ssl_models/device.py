"""Where computation runs: the device, mixed precision, and batched inference; a pod's GPUs checked before training.

A pod that requested GPUs but cannot use them (no driver mounted, a driver older than the CUDA of the torch
wheels) would otherwise train on the CPU without a word: ``check_gpus`` fails it at once, naming the CUDA
version torch was built for and the driver the node has.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import torch
from torch import nn

from ssl_models.augment import AugmentConfig, normalise

NVIDIA_DRIVER_FILE = Path("/proc/driver/nvidia/version")  # the kernel module's version line, where a driver is loaded


class GpuUnavailable(RuntimeError):
    """A process that was given GPUs cannot use them (a node or image problem, not the input's)."""


def driver_version(version_file: Path = NVIDIA_DRIVER_FILE) -> str:
    """The NVIDIA driver of this machine, as nvidia-smi reports it ("550.54.15"), else the kernel module's version line
    (``version_file``), else a sentence saying neither was found."""
    if shutil.which("nvidia-smi"):
        try:
            answer = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            if answer.returncode == 0 and answer.stdout.strip():
                return answer.stdout.strip().splitlines()[0]
        except (OSError, subprocess.TimeoutExpired):
            pass
    try:
        return version_file.read_text().strip().splitlines()[0]
    except (OSError, IndexError):
        return f"none found (no nvidia-smi on PATH, no {version_file})"


def check_gpus(requested: int, *, version_file: Path = NVIDIA_DRIVER_FILE) -> None:
    """GpuUnavailable unless torch sees at least ``requested`` CUDA devices (nothing to check for 0).

    The message names torch's CUDA version (``torch.version.cuda``), the driver (``driver_version``) and the GPUs
    torch sees, and says what to do: a driver too old for the image's CUDA, or a node without the NVIDIA device plugin.
    """
    if requested <= 0:
        return
    usable = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if usable >= requested:
        return
    raise GpuUnavailable(
        f"this pod requested {requested} GPU(s) but torch can use {usable}: torch {torch.__version__} is built for "
        f"CUDA {torch.version.cuda or 'none (a CPU build)'}, "
        f"the node's NVIDIA driver is {driver_version(version_file)}. "
        "Run on nodes whose driver supports that CUDA version (or build the GPU image for the driver's CUDA), "
        "with the NVIDIA device plugin; training on the CPU instead is not done silently"
    )


def pick_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def autocast(device: torch.device):
    """bf16 autocast on GPUs; CPU autocast slows small convolutions, so CPU stays in fp32."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def apply_in_batches(
    module: nn.Module, images: torch.Tensor, view: AugmentConfig, batch_size: int = 512
) -> torch.Tensor:
    """module in eval mode over un-augmented images: (N, C, H, W) uint8 -> (N, ...) float32 outputs.

    Runs on the module's device (moved to pick_device() first); returns outputs on that device.
    """
    device = pick_device()
    module = module.to(device).eval()
    outputs = []
    for start in range(0, images.shape[0], batch_size):
        with autocast(device):
            outputs.append(module(normalise(images[start : start + batch_size].to(device), view)).float())
    return torch.cat(outputs)

"""Where computation runs: the device, mixed precision, and batched inference."""

from __future__ import annotations

import torch
from torch import nn

from ssl_models.augment import AugmentConfig, normalise


def pick_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def autocast(device: torch.device):
    """bf16 autocast on GPUs; CPU autocast slows small convolutions, so CPU stays in fp32."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def apply_in_batches(module: nn.Module, images: torch.Tensor, view: AugmentConfig, batch_size: int = 512) -> torch.Tensor:
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

"""A corruption suite for robustness testing, in the spirit of ImageNet-C (Hendrycks & Dietterich, 2019,
arXiv 1903.12261): five corruptions at three severities, applied to uint8 images (N, C, H, W) -> same.

Deterministic: noise is drawn from a generator seeded per (corruption, severity).
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

SEVERITIES = (1, 2, 3)
NOISE_STD = {1: 0.04, 2: 0.08, 3: 0.16}  # fraction of the 0..255 range
BLUR_SIGMA = {1: 0.5, 2: 1.0, 3: 1.5}  # pixels
CONTRAST_FACTOR = {1: 0.6, 2: 0.4, 3: 0.2}
ROTATION_DEGREES = {1: 15.0, 2: 30.0, 3: 45.0}
JPEG_QUALITY = {1: 50, 2: 20, 3: 10}


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    return images.round().clamp(0, 255).to(torch.uint8)


def gaussian_noise(images: torch.Tensor, severity: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1000 + severity)
    noise = torch.randn(images.shape, generator=generator) * NOISE_STD[severity] * 255
    return _to_uint8(images.float() + noise)


def gaussian_blur(images: torch.Tensor, severity: int) -> torch.Tensor:
    sigma = BLUR_SIGMA[severity]
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    x = images.float()
    x = F.conv2d(
        F.pad(x, (radius, radius, 0, 0), mode="reflect"),
        kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1),
        groups=channels,
    )
    x = F.conv2d(
        F.pad(x, (0, 0, radius, radius), mode="reflect"),
        kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1),
        groups=channels,
    )
    return _to_uint8(x)


def contrast(images: torch.Tensor, severity: int) -> torch.Tensor:
    x = images.float()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return _to_uint8((x - mean) * CONTRAST_FACTOR[severity] + mean)


def rotation(images: torch.Tensor, severity: int) -> torch.Tensor:
    angle = math.radians(ROTATION_DEGREES[severity])
    theta = torch.tensor([[math.cos(angle), -math.sin(angle), 0.0], [math.sin(angle), math.cos(angle), 0.0]])
    grid = F.affine_grid(theta.expand(images.shape[0], 2, 3), list(images.shape), align_corners=False)
    return _to_uint8(F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False))


def _jpeg_round_trip(image: torch.Tensor, quality: int) -> torch.Tensor:
    """(C, H, W) uint8 -> the same after JPEG encoding at ``quality`` and decoding (Pillow)."""
    array = image.permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[2] == 1 else array).save(buffer, format="JPEG", quality=quality)
    decoded = torch.from_numpy(np.asarray(Image.open(buffer)).copy())
    return decoded.unsqueeze(0) if decoded.dim() == 2 else decoded.permute(2, 0, 1)


def jpeg(images: torch.Tensor, severity: int) -> torch.Tensor:
    return torch.stack([_jpeg_round_trip(image, JPEG_QUALITY[severity]) for image in images])


CORRUPTIONS = {
    "gaussian_noise": gaussian_noise,
    "gaussian_blur": gaussian_blur,
    "contrast": contrast,
    "rotation": rotation,
    "jpeg": jpeg,
}


def corrupt(images: torch.Tensor, name: str, severity: int) -> torch.Tensor:
    """images (N, C, H, W) uint8 on the host -> corrupted copy, same shape and dtype."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose one of {sorted(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity}")
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"expected (N, C, H, W) uint8 images, got {images.dtype} {tuple(images.shape)}")
    return CORRUPTIONS[name](images, severity)

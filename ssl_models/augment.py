"""SimCLR-style augmentation that runs on the device, with random parameters drawn per sample.

torchvision's v2 transforms draw one set of random parameters per call, so a batch
would share one crop and one colour jitter; contrastive learning needs every image
of every view to be augmented independently (Chen et al., SimCLR, arXiv 2002.05709, §3).
Everything here is batched tensor arithmetic: it runs on CPU or GPU alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    """Parameters of the view distribution. Defaults suit 28 px grey digits and clothes.

    cutout_probability: Cutout (DeVries & Taylor, 2017, arXiv 1708.04552), a grey square over the image, on this
        share of the images (FixMatch's strong view: all).
    cutout_size: the square's side, drawn per image in (0, cutout_size] x the image side.
    """

    output_size: int = 28
    crop_scale: tuple[float, float] = (0.3, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_probability: float = 0.0
    rotation_degrees: float = 10.0
    jitter_probability: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_probability: float = 0.2
    blur_probability: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    cutout_probability: float = 0.0
    cutout_size: float = 0.5
    mean: float = 0.5
    std: float = 0.5

    def __post_init__(self) -> None:
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        if self.output_size < 4:
            raise ValueError(f"output_size must be at least 4 pixels, got {self.output_size}")
        if self.std <= 0:
            raise ValueError(f"std must be positive, got {self.std}")
        if not 0 < self.cutout_size <= 1:
            raise ValueError(f"cutout_size is a share of the image side, in (0, 1]; got {self.cutout_size}")


# A mild distribution for supervised fine-tuning: small crops and rotations, no colour changes.
FINETUNE_AUGMENT = AugmentConfig(
    crop_scale=(0.8, 1.0),
    rotation_degrees=8.0,
    jitter_probability=0.0,
    grayscale_probability=0.0,
    blur_probability=0.0,
)

# FixMatch's strong view (Sohn et al., 2020, arXiv 2001.07685: RandAugment + Cutout), built from this module's
# operations for grey digits: larger crops and rotations, strong brightness/contrast, blur, and always a Cutout
# square. No flip: a mirrored digit is another symbol. The weak view is FINETUNE_AUGMENT.
STRONG_AUGMENT = AugmentConfig(
    crop_scale=(0.5, 1.0),
    rotation_degrees=25.0,
    jitter_probability=0.8,
    brightness=0.5,
    contrast=0.5,
    grayscale_probability=0.0,
    blur_probability=0.5,
    blur_sigma=(0.1, 1.5),
    cutout_probability=1.0,
    cutout_size=0.5,
)


def _uniform(shape: tuple[int, ...], low: float, high: float, generator, device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=device) * (high - low) + low


def _bernoulli(batch: int, probability: float, generator, device) -> torch.Tensor:
    return torch.rand(batch, generator=generator, device=device) < probability


def _crop_flip_rotate(images: torch.Tensor, config: AugmentConfig, generator) -> torch.Tensor:
    """Random resized crop, horizontal flip and rotation as one affine resampling per sample.

    images: (B, C, H, W) float in [0, 1] -> (B, C, S, S) with S = config.output_size.
    """
    batch, device = images.shape[0], images.device
    area = _uniform((batch,), *config.crop_scale, generator, device)
    log_ratio = _uniform((batch,), math.log(config.crop_ratio[0]), math.log(config.crop_ratio[1]), generator, device)
    ratio = torch.exp(log_ratio)
    # Half-widths in normalised [-1, 1] coordinates of the source image.
    half_width = torch.sqrt(area * ratio).clamp(max=1.0)
    half_height = torch.sqrt(area / ratio).clamp(max=1.0)
    center_x = _uniform((batch,), -1.0, 1.0, generator, device) * (1 - half_width)
    center_y = _uniform((batch,), -1.0, 1.0, generator, device) * (1 - half_height)
    flip = torch.where(_bernoulli(batch, config.flip_probability, generator, device), -1.0, 1.0)
    angle = _uniform((batch,), -1.0, 1.0, generator, device) * math.radians(config.rotation_degrees)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [
            torch.stack([cos * half_width * flip, -sin * half_height, center_x], dim=1),
            torch.stack([sin * half_width * flip, cos * half_height, center_y], dim=1),
        ],
        dim=1,
    )  # (B, 2, 3): output grid -> source coordinates
    size = (batch, images.shape[1], config.output_size, config.output_size)
    grid = F.affine_grid(theta.to(images.dtype), size, align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _luminance(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W), ITU-R 601 weights as in torchvision's rgb_to_grayscale."""
    weights = images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def _rotate_hue(images: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate hue by ``turns`` (B,) of a full circle, in YIQ space. images: (B, 3, H, W)."""
    to_yiq = images.new_tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    to_rgb = torch.linalg.inv(to_yiq)
    angle = turns * 2 * math.pi
    cos, sin = torch.cos(angle), torch.sin(angle)
    ones, zeros = torch.ones_like(cos), torch.zeros_like(cos)
    rotation = torch.stack(
        [torch.stack([ones, zeros, zeros], 1), torch.stack([zeros, cos, -sin], 1), torch.stack([zeros, sin, cos], 1)],
        dim=1,
    )  # (B, 3, 3)
    transform = to_rgb @ rotation @ to_yiq  # (B, 3, 3)
    return torch.einsum("bij,bjhw->bihw", transform, images)


def _colour_jitter(images: torch.Tensor, config: AugmentConfig, generator) -> torch.Tensor:
    """Brightness, contrast, saturation and hue, each factor drawn per sample; (B, C, H, W) in [0, 1]."""
    batch, device = images.shape[0], images.device
    apply = _bernoulli(batch, config.jitter_probability, generator, device).view(batch, 1, 1, 1)
    jittered = images * _uniform((batch,), 1 - config.brightness, 1 + config.brightness, generator, device).view(
        batch, 1, 1, 1
    )
    jittered = jittered.clamp(0, 1)
    grey = _luminance(jittered) if images.shape[1] == 3 else jittered
    grey_mean = grey.mean(dim=(1, 2, 3), keepdim=True)
    contrast = _uniform((batch,), 1 - config.contrast, 1 + config.contrast, generator, device).view(batch, 1, 1, 1)
    jittered = ((jittered - grey_mean) * contrast + grey_mean).clamp(0, 1)
    if images.shape[1] == 3:
        saturation = _uniform((batch,), 1 - config.saturation, 1 + config.saturation, generator, device)
        grey = _luminance(jittered)
        jittered = ((jittered - grey) * saturation.view(batch, 1, 1, 1) + grey).clamp(0, 1)
        turns = _uniform((batch,), -config.hue, config.hue, generator, device)
        jittered = _rotate_hue(jittered, turns).clamp(0, 1)
    return torch.where(apply, jittered, images)


def _random_grayscale(images: torch.Tensor, config: AugmentConfig, generator) -> torch.Tensor:
    if images.shape[1] != 3:
        return images
    apply = _bernoulli(images.shape[0], config.grayscale_probability, generator, images.device).view(-1, 1, 1, 1)
    return torch.where(apply, _luminance(images).expand_as(images), images)


def _gaussian_blur(images: torch.Tensor, config: AugmentConfig, generator) -> torch.Tensor:
    """Separable Gaussian blur, sigma drawn per sample; kernel about 10% of the image side (SimCLR)."""
    batch, channels, height, width = images.shape
    device = images.device
    kernel_size = max(3, int(0.1 * config.output_size) // 2 * 2 + 1)
    apply = _bernoulli(batch, config.blur_probability, generator, device)
    sigma = _uniform((batch,), *config.blur_sigma, generator, device)
    offsets = torch.arange(kernel_size, device=device, dtype=images.dtype) - kernel_size // 2
    kernel = torch.exp(-(offsets.view(1, -1) ** 2) / (2 * sigma.view(-1, 1).to(images.dtype) ** 2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    identity = (offsets == 0).to(images.dtype).expand(batch, -1)
    kernel = torch.where(apply.view(-1, 1), kernel, identity)  # (B, K)
    kernel = kernel.repeat_interleave(channels, dim=0)  # (B*C, K)
    flat = images.reshape(1, batch * channels, height, width)
    pad = kernel_size // 2
    flat = F.conv2d(
        F.pad(flat, (pad, pad, 0, 0), mode="reflect"), kernel.view(-1, 1, 1, kernel_size), groups=batch * channels
    )
    flat = F.conv2d(
        F.pad(flat, (0, 0, pad, pad), mode="reflect"), kernel.view(-1, 1, kernel_size, 1), groups=batch * channels
    )
    return flat.view(batch, channels, height, width)


def _cutout(images: torch.Tensor, config: AugmentConfig, generator) -> torch.Tensor:
    """A grey (0.5) square of side drawn in (0, cutout_size] x the image side, centre uniform (it may overhang the
    border), on each image with probability cutout_probability. (B, C, S, S) in [0, 1] -> same shape."""
    batch, _, height, width = images.shape
    device = images.device
    apply = _bernoulli(batch, config.cutout_probability, generator, device)
    half = _uniform((batch,), 0.0, config.cutout_size / 2, generator, device) * width
    centre_y, centre_x = (
        _uniform((batch,), 0.0, height, generator, device),
        _uniform((batch,), 0.0, width, generator, device),
    )
    rows = torch.arange(height, device=device, dtype=images.dtype) + 0.5
    columns = torch.arange(width, device=device, dtype=images.dtype) + 0.5
    inside_y = (rows.view(1, -1) - centre_y.view(-1, 1)).abs() < half.view(-1, 1)  # (B, H)
    inside_x = (columns.view(1, -1) - centre_x.view(-1, 1)).abs() < half.view(-1, 1)  # (B, W)
    square = (inside_y.unsqueeze(2) & inside_x.unsqueeze(1) & apply.view(-1, 1, 1)).unsqueeze(1)  # (B, 1, H, W)
    return torch.where(square, torch.full_like(images, 0.5), images)


def augment(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """One random view of each image.

    Args:
        images: (B, C, H, W) uint8 in [0, 255] (or float in [0, 1]), C in {1, 3}, on any device.
        config: the view distribution.
        generator: optional torch.Generator on the images' device, for reproducible views.

    Returns:
        (B, C, S, S) float32, S = config.output_size, normalised as (x - mean) / std.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (batch, channels, height, width), got shape {tuple(images.shape)}")
    views = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    views = _crop_flip_rotate(views, config, generator)
    if config.jitter_probability > 0:
        views = _colour_jitter(views, config, generator)
    if config.grayscale_probability > 0:
        views = _random_grayscale(views, config, generator)
    if config.blur_probability > 0:
        views = _gaussian_blur(views, config, generator)
    if config.cutout_probability > 0:
        views = _cutout(views, config, generator)
    return (views - config.mean) / config.std


def normalise(images: torch.Tensor, config: AugmentConfig) -> torch.Tensor:
    """The evaluation view: no randomness, resize to output_size. (B, C, H, W) -> (B, C, S, S) float32."""
    views = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    if views.shape[-1] != config.output_size or views.shape[-2] != config.output_size:
        views = F.interpolate(views, size=(config.output_size, config.output_size), mode="bilinear", antialias=True)
    return (views - config.mean) / config.std

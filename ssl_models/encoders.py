"""Backbones that map images to feature vectors.

``small_cnn`` is a four-block ConvNet sized for a 2-core laptop; ``resnet18`` and ``resnet50`` are
torchvision's ResNets (He et al., arXiv 1512.03385) with the small-image stem used by SimCLR's
CIFAR experiments (3x3 stride-1 first convolution, no max-pool; arXiv 2002.05709, appendix B.9).
All take 1- or 3-channel input at any resolution. ``pixels`` is no network: the flattened image, the
floor a linear probe on learned features must beat. Beside them, any timm or torchvision backbone by name
(``timm:vit_small_patch16_224``, ``torchvision:convnext_tiny``: ``ssl_models.backbones``).
"""

from __future__ import annotations

import torch
from torch import nn

from ssl_models.backbones import build_named_backbone, split_name

ENCODER_NAMES = ("small_cnn", "resnet18", "resnet50", "pixels")


class SmallConvNet(nn.Module):
    """Four conv-BN-ReLU blocks, pooling after blocks 2 and 3, global average pool.

    Input (B, C, H, W) -> features (B, feature_dim).
    """

    def __init__(self, in_channels: int = 1, width: int = 32):
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.layers = nn.Sequential(
            *block(in_channels, width),
            *block(width, width),
            nn.MaxPool2d(2),
            *block(width, 2 * width),
            nn.MaxPool2d(2),
            *block(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.feature_dim = 4 * width

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)


class PixelFeatures(nn.Module):
    """The raw pixels as features, for the linear-on-pixels floor of the probes. (B, C, H, W) -> (B, C*H*W).

    No parameters: a linear probe on it is multinomial logistic regression on the (normalised) pixels.
    """

    def __init__(self, in_channels: int, image_size: int):
        super().__init__()
        self.feature_dim = in_channels * image_size * image_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)


class ResNetEncoder(nn.Module):
    """torchvision ResNet without its classifier; optional small-image stem. (B, C, H, W) -> (B, 512|2048)."""

    def __init__(self, depth: int, in_channels: int = 3, *, small_stem: bool = True):
        super().__init__()
        from torchvision import models  # here, not at the top: 1.9 s that every task process would pay for small_cnn

        builders = {18: models.resnet18, 50: models.resnet50}
        if depth not in builders:
            raise ValueError(f"ResNet depth must be one of {sorted(builders)}, got {depth}")
        network = builders[depth](weights=None)
        if small_stem:
            network.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            network.maxpool = nn.Identity()
        elif in_channels != 3:
            network.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.feature_dim = network.fc.in_features
        network.fc = nn.Identity()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images)


def build_encoder(name: str, in_channels: int, image_size: int = 28, *, seed: int | None = None) -> nn.Module:
    """An encoder with attribute ``feature_dim``: one of ENCODER_NAMES (the small stem is used below 96 px) or a
    backbone "timm:<model>" / "torchvision:<model>" (ssl_models.backbones).

    seed: initialise the weights from this seed, whatever the process drew from torch's global
    generator before (a pipeline runs many tasks in one process). None: draw from the global
    generator (for a module whose weights are loaded next).
    """
    if name not in ENCODER_NAMES and split_name(name) is None:
        raise ValueError(
            f"unknown encoder {name!r}; choose one of {ENCODER_NAMES} or a backbone timm:<model> or torchvision:<model>"
        )
    if seed is None:
        return _build(name, in_channels, image_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _build(name, in_channels, image_size)


def _build(name: str, in_channels: int, image_size: int) -> nn.Module:
    if split_name(name) is not None:
        return build_named_backbone(name, in_channels, image_size)
    if name == "small_cnn":
        return SmallConvNet(in_channels)
    if name == "pixels":
        return PixelFeatures(in_channels, image_size)
    return ResNetEncoder(int(name[len("resnet") :]), in_channels, small_stem=image_size < 96)

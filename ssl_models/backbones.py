"""Backbones by name from timm and torchvision: the user's own architecture, as ``encoders.build_encoder`` gives it.

Names: ``timm:<model>`` (any name of ``timm.list_models()``: ``timm:resnet50``, ``timm:convnext_tiny``,
``timm:vit_small_patch16_224`` (ViT-S/16), ``timm:vit_base_patch16_224`` (ViT-B/16), ``timm:vit_small_patch14_dinov2``)
and ``torchvision:<model>`` (any of ``torchvision.models.list_models()``: ``torchvision:resnet50``,
``torchvision:convnext_tiny``, ``torchvision:vit_b_16``). The architecture is the library's, unchanged but for
three things: the classifier is removed (features out), the first layer takes the images' channel count, and
a ViT's position grid is the images' (timm: the side rounded up to a multiple of the patch, the image padded
to it). Images under ``MIN_SIDE`` pixels are resized up to it inside ``forward``: a stride-32 network (ResNet,
ConvNeXt) has no feature map left below it. Weights are random here; ``ssl_models.weights`` loads the user's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

BACKBONE_LIBRARIES = ("timm", "torchvision")
MIN_SIDE = 32


class NamedBackbone(nn.Module):
    """A timm or torchvision network without its classifier. (B, C, H, W) -> (B, feature_dim).

    Attributes: ``network`` (the library's module: its state-dict keys are the library's, under ``network.``),
    ``feature_dim``, ``classifier_prefix`` (the state-dict prefix of the removed classifier, e.g. ``"fc"``,
    ``"head"``, ``"heads.head"``: a library checkpoint's keys under it are not the backbone's),
    ``first_conv`` (the name of the first convolution inside ``network``, whose input channels follow the images).
    """

    def __init__(self, network: nn.Module, feature_dim: int, classifier_prefix: str, image_size: int):
        super().__init__()
        self.network = network
        self.feature_dim = feature_dim
        self.classifier_prefix = classifier_prefix
        self.first_conv = next(name for name, module in network.named_modules() if isinstance(module, nn.Conv2d))
        self.input_side = max(image_size, MIN_SIDE)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] < MIN_SIDE or images.shape[-2] < MIN_SIDE:
            images = F.interpolate(
                images, size=(self.input_side, self.input_side), mode="bilinear", align_corners=False
            )
        return self.network(images)


def split_name(name: str) -> tuple[str, str] | None:
    """("timm", "vit_small_patch16_224") for "timm:vit_small_patch16_224"; None for a name without a library prefix."""
    library, _, model = name.partition(":")
    return (library, model) if model and library in BACKBONE_LIBRARIES else None


def build_named_backbone(name: str, in_channels: int, image_size: int) -> NamedBackbone:
    """The backbone ``name`` ("timm:<model>" or "torchvision:<model>") for (in_channels, image_size, image_size) images.

    ValueError naming the model and where the list of names is when the library has no such model.
    """
    parts = split_name(name)
    if parts is None:
        raise ValueError(f"backbone {name!r} names no library: write timm:<model> or torchvision:<model>")
    library, model = parts
    if library == "timm":
        return _timm_backbone(model, in_channels, image_size)
    return _torchvision_backbone(model, in_channels, image_size)


def _timm_backbone(model: str, in_channels: int, image_size: int) -> NamedBackbone:
    import timm  # here, not at the top: 3 s that a task process training small_cnn would pay

    if not timm.is_model(model):
        raise ValueError(f"timm has no model {model!r} (timm {timm.__version__}): see timm.list_models() for the names")
    options: dict = {}
    if _is_vision_transformer(model):
        patch = _patch_size(model)
        options = {
            "img_size": math.ceil(max(image_size, MIN_SIDE) / patch) * patch,
            "dynamic_img_size": True,
            "dynamic_img_pad": True,
        }
    network = timm.create_model(model, pretrained=False, num_classes=0, in_chans=in_channels, **options)
    classifier = network.pretrained_cfg.get("classifier") or "head"
    return NamedBackbone(network, int(network.head_hidden_size), classifier, image_size)


def _is_vision_transformer(model: str) -> bool:
    import timm

    return timm.models.model_entrypoint(model).__module__.rsplit(".", 1)[-1] in ("vision_transformer", "deit", "eva")


def _patch_size(model: str) -> int:
    """The patch side of a timm ViT name ("vit_small_patch16_224" -> 16; 16 when the name does not say)."""
    for part in model.split("_"):
        if part.startswith("patch") and part[5:].isdigit():
            return int(part[5:])
    return 16


def _torchvision_backbone(model: str, in_channels: int, image_size: int) -> NamedBackbone:
    from torchvision import models

    if model not in models.list_models(module=models):
        raise ValueError(
            f"torchvision has no classification model {model!r}: see torchvision.models.list_models() for the names"
        )
    options = {"image_size": math.ceil(max(image_size, MIN_SIDE) / 16) * 16} if model.startswith("vit_") else {}
    network = models.get_model(model, weights=None, **options)
    classifier_name, classifier = [
        (name, module) for name, module in network.named_modules() if isinstance(module, nn.Linear)
    ][-1]
    _replace(network, classifier_name, nn.Identity())
    conv_name, conv = next((name, module) for name, module in network.named_modules() if isinstance(module, nn.Conv2d))
    if in_channels != conv.in_channels:
        _replace(network, conv_name, _with_input_channels(conv, in_channels))
    return NamedBackbone(network, classifier.in_features, classifier_name, image_size)


def _replace(network: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(network.get_submodule(parent_name) if parent_name else network, child, module)


def _with_input_channels(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A new convolution like ``conv`` but with ``in_channels`` inputs (random weights, as the rest of the network)."""
    shape = {
        "stride": conv.stride,
        "padding": conv.padding,
        "dilation": conv.dilation,
        "groups": conv.groups,
        "bias": conv.bias is not None,
    }
    return nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, **shape)

"""Initial weights the user already has, put into an encoder: checked key by key, adapted where the standard way exists.

Accepted checkpoints: a state dict of the backbone itself (a timm or torchvision checkpoint: ``model.state_dict()``,
classifier included or not), a training checkpoint holding one under ``"state_dict"`` / ``"model"`` (timm's and
torchvision's reference scripts), this project's encoder, classifier or served model (keys under ``encoder.``,
``classifier.encoder.``), any of them saved by DDP (``module.``). Files: ``torch.save`` (read with
``weights_only=True``: no code runs) or ``.safetensors``.

Adapted, and said so in the result: a first convolution of 3 input channels given to a 1-channel backbone
(timm's ``adapt_input_conv``: the RGB kernels summed, the standard way), a ViT's position embedding of another
grid (timm's ``resample_abs_pos_embed``). Anything else that does not fit (a key the backbone lacks, one it
has that the checkpoint lacks, another shape) is refused by ``WeightsMismatch`` naming the keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

WRAPPER_PREFIXES = (
    "",
    "encoder.",
    "classifier.encoder.",
)  # a bare backbone; this project's SSLMethod/Classifier; its served model
CHECKPOINT_ENTRIES = ("state_dict", "model")  # where timm's and torchvision's training scripts keep the weights
SHOWN_KEYS = 8


class WeightsMismatch(ValueError):
    """The weights do not fit the backbone: the message names the missing, unexpected and misshapen keys."""


@dataclass
class LoadedWeights:
    """What ``load_backbone_weights`` did. loaded: keys copied. adapted: "key: how". ignored: keys of the checkpoint
    outside the backbone (a classifier, projection heads), left out."""

    loaded: int
    adapted: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def read_weights_file(path: Path | str) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file: safetensors by its suffix, else torch.load(weights_only=True) and, for a
    training checkpoint, its "state_dict" or "model" entry. ValueError naming the file when it holds no tensors."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - pickles with code, truncated files: one message for all
        raise ValueError(
            f"weights file {path.name}: not a PyTorch state dict readable without running code "
            f"({type(error).__name__}: {error})"
        ) from error
    return tensors_of(checkpoint, str(path.name))


def tensors_of(checkpoint, source: str) -> dict[str, torch.Tensor]:
    """The state dict inside ``checkpoint`` (a state dict, a training checkpoint, or an nn.Module)."""
    if isinstance(checkpoint, nn.Module):
        return checkpoint.state_dict()
    if isinstance(checkpoint, dict):
        for entry in CHECKPOINT_ENTRIES:
            if isinstance(checkpoint.get(entry), dict):
                checkpoint = checkpoint[entry]
                break
        tensors = {key: value for key, value in checkpoint.items() if isinstance(value, torch.Tensor)}
        if tensors:
            return tensors
    raise ValueError(f"weights {source}: no state dict of tensors in it; save model.state_dict() with torch.save")


def load_backbone_weights(
    encoder: nn.Module, weights: dict[str, torch.Tensor], *, source: str = "the weights"
) -> LoadedWeights:
    """Copy ``weights`` into ``encoder`` (in place) after checking that every key fits; see the module docstring.

    Raises WeightsMismatch (naming up to SHOWN_KEYS keys of each kind) and leaves ``encoder`` unchanged if any
    backbone key is missing, any checkpoint key under the backbone's prefix is unknown, or a shape differs.
    """
    target = encoder.state_dict()
    weights = {key.removeprefix("module."): value for key, value in weights.items()}
    renamed, ignored = _backbone_keys(weights, target, getattr(encoder, "classifier_prefix", None))
    result = LoadedWeights(loaded=0, ignored=ignored)
    for key, value in list(renamed.items()):
        if key in target and value.shape != target[key].shape:
            renamed[key] = _adapted(encoder, key, value, target[key], result)
    missing = [key for key in target if key not in renamed and not key.endswith("num_batches_tracked")]
    unexpected = [key for key in renamed if key not in target]
    misshapen = [
        f"{key} {tuple(renamed[key].shape)} vs {tuple(target[key].shape)}"
        for key in renamed
        if key in target and renamed[key].shape != target[key].shape
    ]
    if missing or unexpected or misshapen:
        raise WeightsMismatch(_mismatch_message(source, missing, unexpected, misshapen))
    encoder.load_state_dict({**target, **renamed})
    result.loaded = len(renamed)
    return result


def _backbone_keys(weights: dict, target: dict, classifier_prefix: str | None) -> tuple[dict, list[str]]:
    """(the checkpoint's backbone tensors under the encoder's key names, the keys left out), for the wrapper prefix
    that matches most of the encoder's keys. A timm/torchvision backbone's keys are under ``network.``."""
    under_network = classifier_prefix is not None
    best: tuple[int, dict, list[str]] = (-1, {}, [])
    for prefix in WRAPPER_PREFIXES:
        inside = {key[len(prefix) :]: value for key, value in weights.items() if key.startswith(prefix)}
        if under_network and not any(key.startswith("network.") for key in inside):
            inside = {f"network.{key}": value for key, value in inside.items()}
        ignored = [key for key in weights if not key.startswith(prefix)]
        if under_network:
            head = f"network.{classifier_prefix}."
            ignored += [key for key in inside if key.startswith(head)]
            inside = {key: value for key, value in inside.items() if not key.startswith(head)}
        matches = sum(key in target for key in inside)
        if matches > best[0]:
            best = (matches, inside, ignored)
    return best[1], best[2]


def _adapted(
    encoder: nn.Module, key: str, value: torch.Tensor, wanted: torch.Tensor, result: LoadedWeights
) -> torch.Tensor:
    """``value`` reshaped to ``wanted``'s shape the standard way, if ``key`` is the first convolution or a ViT's
    position embedding; else ``value`` unchanged (refused by the caller)."""
    first_conv = _first_conv_weight(encoder)
    if (
        key == first_conv
        and value.dim() == 4
        and value.shape[0] == wanted.shape[0]
        and value.shape[2:] == wanted.shape[2:]
    ):
        from timm.models import adapt_input_conv

        result.adapted.append(
            f"{key}: {value.shape[1]} input channels adapted to {wanted.shape[1]} (summed for 1 channel)"
        )
        return adapt_input_conv(wanted.shape[1], value.float()).to(value.dtype)
    if key.endswith("pos_embed") and value.dim() == 3 and value.shape[-1] == wanted.shape[-1]:
        from timm.layers import resample_abs_pos_embed

        network = encoder.network
        prefix_tokens = 0 if getattr(network, "no_embed_class", False) else network.num_prefix_tokens
        grid = network.patch_embed.grid_size
        result.adapted.append(f"{key}: position grid resampled to {grid[0]}x{grid[1]}")
        return resample_abs_pos_embed(value.float(), new_size=list(grid), num_prefix_tokens=prefix_tokens).to(
            value.dtype
        )
    return value


def _first_conv_weight(encoder: nn.Module) -> str:
    name = next(name for name, module in encoder.named_modules() if isinstance(module, nn.Conv2d))
    return f"{name}.weight"


def _mismatch_message(source: str, missing: list[str], unexpected: list[str], misshapen: list[str]) -> str:
    def shown(keys: list[str]) -> str:
        return ", ".join(keys[:SHOWN_KEYS]) + (f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else "")

    parts = [
        f"{len(missing)} backbone keys missing from them ({shown(missing)})" if missing else "",
        f"{len(unexpected)} keys the backbone does not have ({shown(unexpected)})" if unexpected else "",
        f"{len(misshapen)} of another shape ({shown(misshapen)})" if misshapen else "",
    ]
    found = "; ".join(part for part in parts if part)
    return (
        f"{source} do not fit the backbone: {found}. Name the backbone the weights were trained with (encoder_name), "
        "or give weights of this one."
    )

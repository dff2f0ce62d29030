"""A method's settings are its own: a frozen dataclass beside it, given through PretrainConfig.method_settings and
checked against that dataclass. A new method with settings is one module and one registry line: the toy method
below is both, and pretrains."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from ssl_models.augment import AugmentConfig
from ssl_models.data import InMemoryPairs
from ssl_models.encoders import build_encoder
from ssl_models.heads import MLPHead
from ssl_models.losses import normalized_mse
from ssl_models.methods import METHODS
from ssl_models.methods.base import SSLMethod, full_precision
from ssl_models.methods.moco import MoCoSettings
from ssl_models.pretraining import PretrainConfig, pretrain_contrastive

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ToySettings:
    """The toy method's settings.

    hidden: the width of its head's hidden layer.
    scale: what its loss is multiplied by.
    """

    hidden: int = 16
    scale: float = 1.0


class ToyMethod(SSLMethod):
    """encoder -> MLPHead; the normalised MSE between the two views' projections, times ``scale``. (B, C, H, W) x 2 ->
    scalar."""

    label = "toy"
    settings_type = ToySettings
    built_with: list[ToySettings] = []

    @classmethod
    def from_config(cls, encoder: nn.Module, settings: ToySettings, config) -> ToyMethod:
        cls.built_with.append(settings)
        return cls(encoder, settings, config.projection_dim)

    def __init__(self, encoder: nn.Module, settings: ToySettings, projection_dim: int):
        super().__init__()
        self.encoder, self.scale = encoder, settings.scale
        self.projection = MLPHead(encoder.feature_dim, hidden_dim=settings.hidden, out_dim=projection_dim)

    def forward(self, views_a: torch.Tensor, views_b: torch.Tensor) -> torch.Tensor:
        z_a, z_b = self.projection(self.encoder(torch.cat([views_a, views_b]))).chunk(2)
        with full_precision(z_a):
            return self.scale * normalized_mse(z_a, z_b)


def test_a_new_method_with_settings_is_one_module_and_one_registry_line(monkeypatch):
    monkeypatch.setitem(METHODS, "toy", ToyMethod)  # the registry line
    config = PretrainConfig(
        method="toy", epochs=1, batch_size=16, augment=AugmentConfig(output_size=16), method_settings={"hidden": 8}
    )
    assert config.settings == ToySettings(hidden=8, scale=1.0)  # the defaults are the dataclass's
    encoder = build_encoder("small_cnn", 1, seed=0)
    before = encoder.layers[0].weight.detach().clone()
    images = torch.randint(0, 256, (32, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    history = pretrain_contrastive(encoder, InMemoryPairs(images, list(range(32))), config)
    assert ToyMethod.built_with[-1] == ToySettings(hidden=8, scale=1.0)
    assert torch.isfinite(torch.tensor(history[-1]["loss"])) and not torch.equal(before, encoder.layers[0].weight)
    with pytest.raises(ValueError, match="'scale'.* of method 'toy' must be of type float"):
        PretrainConfig(method="toy", method_settings={"scale": "large"})


def test_settings_are_checked_against_the_methods_dataclass():
    assert PretrainConfig(method="moco", method_settings={"queue_size": 64, "temperature": 1}).settings == MoCoSettings(
        temperature=1.0, queue_size=64
    )  # an int is taken for a float (JSON writes 1.0 as 1)
    with pytest.raises(ValueError, match="'queue_size', which method 'simclr' does not take; its settings are"):
        PretrainConfig(method="simclr", method_settings={"queue_size": 64})
    with pytest.raises(ValueError, match="'queue_size'.* of method 'moco' must be of type int, got 1.5"):
        PretrainConfig(method="moco", method_settings={"queue_size": 1.5})
    with pytest.raises(ValueError, match="'momentum'.* of method 'byol' must be of type float, got True"):
        PretrainConfig(method="byol", method_settings={"momentum": True})
    with pytest.raises(ValueError, match="unknown self-supervised method 'swav'"):
        PretrainConfig(method="swav")


def test_the_configuration_reference_lists_each_methods_settings():
    reference = (ROOT / "docs" / "configuration.md").read_text()
    for method in METHODS.values():
        for name in method.settings_type.__dataclass_fields__:
            assert f"### `{method.settings_type.__name__}`" in reference and f"| `{name}` |" in reference


def test_the_command_line_passes_method_settings_as_json(tmp_path):
    """``--config '{"method": "moco", "method_settings": {...}}'`` reaches the task as the method's settings."""
    script = tmp_path / "show.py"
    script.write_text(
        "from flytekit import task\n"
        "from ssl_models.pretraining import PretrainConfig\n\n\n"
        "@task\n"
        "def show(config: PretrainConfig) -> str:\n"
        "    return repr(config.settings)\n"
    )
    given = '{"method": "moco", "method_settings": {"queue_size": 64, "temperature": 0.5}}'
    pyflyte = Path(sys.executable).with_name("pyflyte")
    result = subprocess.run(
        [str(pyflyte), "run", str(script), "show", "--config", given],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        timeout=300,
    )
    assert "MoCoSettings(temperature=0.5, queue_size=64, momentum=0.99)" in result.stdout, result.stderr[-2000:]

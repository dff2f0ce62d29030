"""Backbones by name from timm and torchvision (ssl_models/backbones.py) and the user's weights put into them
(ssl_models/weights.py): any channel count and image size, feature_dim known, a ViT-S/16 at 224 px pretrained,
fine-tuned and exported to ONNX. The checkpoints are written by the tests (nothing is downloaded)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssl_models.augment import FINETUNE_AUGMENT, AugmentConfig
from ssl_models.data import InMemoryPairs
from ssl_models.encoders import build_encoder
from ssl_models.finetuning import FinetuneConfig, finetune
from ssl_models.pretraining import PretrainConfig, pretrain_contrastive
from ssl_models.weights import WeightsMismatch, load_backbone_weights, read_weights_file
from sslflow.registry.serving import RegisteredClassifier, export_onnx
from sslflow.training.model_files import load_classifier, save_state_dict


@pytest.mark.parametrize(
    "name,channels,size,dim",
    [
        ("timm:resnet18", 1, 28, 512),
        ("timm:convnext_atto", 1, 28, 320),
        ("timm:vit_small_patch16_224", 1, 28, 384),
        ("timm:vit_base_patch16_224", 3, 40, 768),
        ("torchvision:resnet50", 1, 20, 2048),
        ("torchvision:convnext_tiny", 3, 32, 768),
        ("torchvision:vit_b_16", 1, 48, 768),
    ],
)
def test_named_backbones_take_any_channels_and_size(name, channels, size, dim):
    encoder = build_encoder(name, channels, size, seed=0)
    assert encoder.feature_dim == dim
    with torch.no_grad():
        assert encoder.eval()(torch.rand(2, channels, size, size)).shape == (2, dim)


def test_unknown_backbones_are_named():
    with pytest.raises(ValueError, match="timm has no model 'vit_tiny_patch99'"):
        build_encoder("timm:vit_tiny_patch99", 1)
    with pytest.raises(ValueError, match="torchvision has no classification model 'resnet7'"):
        build_encoder("torchvision:resnet7", 1)
    with pytest.raises(ValueError, match="timm:<model> or torchvision:<model>"):
        build_encoder("keras:resnet50", 1)


def test_rgb_imagenet_style_checkpoints_load_into_one_channel_backbones(tmp_path):
    """A timm ViT-S/16 checkpoint (3 channels, 224 px grid, 10-class head) and a torchvision ResNet-50 one, as their
    libraries save them, go into 1-channel backbones for 28 px images: the first layer summed over RGB, the
    position grid resampled, the classifier left out; the features are the checkpoint's network's."""
    import timm
    import torchvision

    vit = timm.create_model("vit_small_patch16_224", num_classes=10)
    torch.save(vit.state_dict(), tmp_path / "vit.pt")
    encoder = build_encoder("timm:vit_small_patch16_224", 1, 28)
    loaded = load_backbone_weights(encoder, read_weights_file(tmp_path / "vit.pt"))
    assert sorted(loaded.ignored) == ["network.head.bias", "network.head.weight"] and len(loaded.adapted) == 2
    assert torch.allclose(encoder.network.patch_embed.proj.weight, vit.patch_embed.proj.weight.sum(1, keepdim=True))
    resnet = torchvision.models.resnet50(weights=None)
    torch.save(
        {"model": resnet.state_dict(), "epoch": 3}, tmp_path / "resnet.pth"
    )  # torchvision's reference-script checkpoint
    encoder = build_encoder("torchvision:resnet50", 1, 64).eval()
    load_backbone_weights(encoder, read_weights_file(tmp_path / "resnet.pth"))
    grey = torch.rand(2, 1, 64, 64)
    resnet.fc = torch.nn.Identity()
    with torch.no_grad():
        assert torch.allclose(encoder(grey), resnet.eval()(grey.expand(-1, 3, -1, -1)), atol=1e-4)


def test_weights_of_another_architecture_are_refused_naming_the_keys():
    import torchvision

    encoder = build_encoder("torchvision:resnet18", 1, 28)
    before = {key: value.clone() for key, value in encoder.state_dict().items()}
    with pytest.raises(
        WeightsMismatch, match=r"keys the backbone does not have \(network\.layer1\.0\.conv3\.weight.*of another shape"
    ):
        load_backbone_weights(
            encoder, torchvision.models.resnet50(weights=None).state_dict(), source="weights resnet50.pt"
        )
    missing = {
        key: value
        for key, value in torchvision.models.resnet18(weights=None).state_dict().items()
        if not key.startswith("layer4")
    }
    with pytest.raises(WeightsMismatch, match=r"backbone keys missing from them \(network\.layer4\.0\.conv1\.weight"):
        load_backbone_weights(encoder, missing)
    assert all(torch.equal(before[key], value) for key, value in encoder.state_dict().items())  # left unchanged


def test_vit_s16_at_224_pretrains_finetunes_and_exports_onnx(tmp_path):
    """One pretraining epoch and one fine-tune of a ViT-S/16 on four 224 px images, saved and read back as the
    tasks do, served with its ONNX copy within 1e-4 of PyTorch (export_onnx checks it)."""
    images = torch.randint(0, 256, (4, 1, 224, 224), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    encoder = build_encoder("timm:vit_small_patch16_224", 1, 224, seed=0)
    history = pretrain_contrastive(
        encoder,
        InMemoryPairs(images, list(range(4))),
        PretrainConfig(epochs=1, batch_size=4, augment=AugmentConfig(output_size=224)),
    )
    assert np.isfinite(history[0]["loss"])
    view = AugmentConfig(**{**FINETUNE_AUGMENT.__dict__, "output_size": 224})
    classifier, records = finetune(
        encoder,
        images,
        np.array([0, 1, 0, 1]),
        2,
        FinetuneConfig(epochs=1, batch_size=4, head_warmup_steps=1, augment=view),
    )
    assert records[-1]["step"] == 1
    path, _ = save_state_dict(classifier, tmp_path, "finetune", "classifier.pt")
    served = RegisteredClassifier(load_classifier(path, "timm:vit_small_patch16_224", 1, 224, 2), view).eval()
    assert export_onnx(served, images.numpy(), tmp_path / "model.onnx").exists()

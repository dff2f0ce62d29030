"""Our SimCLR vs lightly's on Fashion-MNIST: same backbone, epochs, batch, temperature and optimiser.

lightly side: its SimCLRTransform on PIL images in a torchvision DataLoader (one worker per core),
its SimCLRProjectionHead and NTXentLoss. Our side: ssl_models.pretraining.pretrain_contrastive. Both are
scored by weighted kNN (k=200, temperature 0.1, as lightly's own benchmarks) of frozen encoder
features, bank = the training images, queries = the test images; wall time covers training only.

lightly is a benchmark-only extra, installed outside the project's environment:
    make bench-deps                      # lightly + lightning-utilities into .bench-site (no other deps)
    PYTHONPATH=.bench-site python benchmarks/vs_lightly.py            # GPU: ResNet-18, all 60k, 20 epochs
    PYTHONPATH=.bench-site python benchmarks/vs_lightly.py --quick    # CPU: small_cnn, 4k images, 3 epochs
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import fashion_mnist_split, parse_arguments, write_result
from ssl_models.augment import AugmentConfig
from ssl_models.data import InMemoryPairs
from ssl_models.device import pick_device
from ssl_models.encoders import build_encoder
from ssl_models.evaluate import extract_features, knn_accuracy
from ssl_models.pretraining import PretrainConfig, pretrain_contrastive

SIZE = 28


class PilImages(Dataset):
    def __init__(self, images: np.ndarray, transform):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(self.images[index, 0]).convert("RGB"))


def simclr_transform(config: PretrainConfig):
    """lightly's SimCLRTransform with our view settings (crop scale, flip probability; no rotation; to [-1, 1])."""
    from lightly.transforms import SimCLRTransform

    return SimCLRTransform(
        input_size=SIZE,
        min_scale=config.augment.crop_scale[0],
        hf_prob=config.augment.flip_probability,
        rr_prob=0.0,
        normalize={"mean": [0.5] * 3, "std": [0.5] * 3},
    )


def pil_loader(images: np.ndarray, transform, config: PretrainConfig, device: torch.device) -> DataLoader:
    """lightly's side's loader: ``transform`` on the images (N, 1, H, W) uint8 as PIL images, config.batch_size a
    batch, shuffled, the last partial batch dropped, one worker process per core (kept between epochs)."""
    return DataLoader(
        PilImages(images, transform),
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=os.cpu_count() or 1,
        persistent_workers=True,
        pin_memory=device.type == "cuda",
    )


def seconds_since(started: float, device: torch.device) -> float:
    """Wall seconds from ``started`` (time.perf_counter) until the work queued on ``device`` is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def train_lightly(images: np.ndarray, encoder: torch.nn.Module, config: PretrainConfig, device: torch.device) -> float:
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead

    transform = simclr_transform(config)
    model = torch.nn.Sequential(encoder, SimCLRProjectionHead(encoder.feature_dim, 256, config.projection_dim)).to(
        device
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    loss_fn = NTXentLoss(temperature=config.settings.temperature)
    loader = pil_loader(images, transform, config, device)
    started = time.perf_counter()
    for _ in range(config.epochs):
        for view_a, view_b in loader:
            z_a, z_b = model(view_a.to(device)), model(view_b.to(device))
            loss = loss_fn(z_a, z_b)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return seconds_since(started, device)


def train_ours(images: np.ndarray, encoder: torch.nn.Module, config: PretrainConfig, device: torch.device) -> float:
    pixels = torch.from_numpy(np.repeat(images, 3, axis=1))
    started = time.perf_counter()
    pretrain_contrastive(encoder, InMemoryPairs(pixels, list(range(len(images))), seed=config.seed), config)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def knn(encoder, train_images, train_labels, test_images, test_labels) -> float:
    view = AugmentConfig(output_size=SIZE)
    to_rgb = lambda x: torch.from_numpy(np.repeat(x, 3, axis=1))  # noqa: E731
    bank = extract_features(encoder, to_rgb(train_images), view)
    queries = extract_features(encoder, to_rgb(test_images), view)
    return knn_accuracy(
        bank, torch.from_numpy(train_labels), queries, torch.from_numpy(test_labels), k=200, temperature=0.1
    )


def main() -> None:
    args = parse_arguments(__doc__)
    device = pick_device()
    train_images, train_labels, test_images, test_labels = fashion_mnist_split(quick=args.quick)
    encoder_name = "small_cnn" if args.quick else "resnet18"
    config = PretrainConfig(
        epochs=3 if args.quick else 20,
        batch_size=256 if args.quick else 512,
        method_settings={"temperature": 0.2},
        augment=AugmentConfig(output_size=SIZE, crop_scale=(0.3, 1.0), flip_probability=0.5, rotation_degrees=0.0),
    )
    rows = {}
    for name, train in (("lightly", train_lightly), ("sslflow", train_ours)):
        torch.manual_seed(config.seed)
        encoder = build_encoder(encoder_name, 3, SIZE)
        seconds = train(train_images, encoder, config, device)
        rows[name] = {
            "knn_accuracy": knn(encoder, train_images, train_labels, test_images, test_labels),
            "train_seconds": seconds,
        }
        print(f"{name:8s} kNN accuracy {rows[name]['knn_accuracy']:.4f}  train {seconds:7.1f} s", flush=True)
    summary = {
        "accuracy_difference": rows["sslflow"]["knn_accuracy"] - rows["lightly"]["knn_accuracy"],
        "time_ratio": rows["sslflow"]["train_seconds"] / rows["lightly"]["train_seconds"],
    }
    print(
        f"sslflow - lightly kNN accuracy: {summary['accuracy_difference']:+.4f}; "
        f"sslflow / lightly time: {summary['time_ratio']:.2f}"
    )
    settings = {
        "encoder": encoder_name,
        "train_images": len(train_images),
        "test_images": len(test_images),
        "epochs": config.epochs,
        "batch_size": config.batch_size,
    }
    path = write_result(
        "vs_lightly" + ("-quick" if args.quick else ""),
        {"device": str(device), "settings": settings, "results": rows, **summary},
        args.out,
    )
    print(f"saved {path}")


if __name__ == "__main__":
    main()

"""SimCLR pretraining throughput: our engine vs the usual DataLoader recipe vs the training-step ceiling.

(a) engine: ssl_models.pretraining.pretrain_contrastive end to end: uint8 images on the device, per-sample
    augmentation on the device, NT-Xent step (bf16 autocast and channels_last on CUDA).
(b) usual: torchvision transforms applied per sample in a DataLoader with one worker per CPU core,
    then the same training step.
(c) ceiling: the same training step on views already on the device (no data work at all).
Printed and saved: images/s (pairs of views per second) and peak memory of each, and a/b, a/c.

    python benchmarks/pretrain_throughput.py            # GPU: 32 px (batch 512) and 224 px (batch 256), ResNet-18
    python benchmarks/pretrain_throughput.py --quick    # CPU run: small batches, few steps
    python benchmarks/pretrain_throughput.py --smoke    # a few steps of tiny batches: the script works (tests use it)
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import parse_arguments, peak_memory_mb, write_result
from ssl_models.augment import AugmentConfig
from ssl_models.data import InMemoryPairs
from ssl_models.device import autocast, pick_device
from ssl_models.encoders import build_encoder
from ssl_models.methods.simclr import SimCLR
from ssl_models.pretraining import PretrainConfig, pretrain_contrastive


class TwoViews(Dataset):
    """The usual recipe: each __getitem__ draws two torchvision-augmented views of one uint8 image."""

    def __init__(self, images: torch.Tensor, size: int):
        self.images = images
        self.transform = v2.Compose(
            [
                v2.RandomResizedCrop(size, scale=(0.3, 1.0), antialias=True),
                v2.RandomHorizontalFlip(),
                v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
                v2.RandomGrayscale(p=0.2),
                v2.RandomApply([v2.GaussianBlur(kernel_size=max(3, size // 10 // 2 * 2 + 1), sigma=(0.1, 2.0))], p=0.5),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize([0.5] * 3, [0.5] * 3),
            ]
        )

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int):
        image = self.images[index]
        return self.transform(image), self.transform(image)


def _model(device: torch.device, size: int):
    model = SimCLR(build_encoder("resnet18", 3, size), projection_dim=128, temperature=0.2).to(
        device, memory_format=torch.channels_last
    )
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def _step(model, optimizer, view_a, view_b, device) -> None:
    """One SimCLR step: encoder, head and NT-Xent (ssl_models.methods.simclr)."""
    with autocast(device):
        loss = model(
            view_a.contiguous(memory_format=torch.channels_last), view_b.contiguous(memory_format=torch.channels_last)
        )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def measure_engine(images, size, batch, epochs, device) -> dict:
    _reset_peak(device)
    config = PretrainConfig(
        epochs=epochs,
        batch_size=batch,
        projection_dim=128,
        augment=AugmentConfig(output_size=size, flip_probability=0.5, rotation_degrees=0.0),
    )
    history = pretrain_contrastive(
        build_encoder("resnet18", 3, size),
        InMemoryPairs(images, list(range(images.shape[0])), seed=config.seed),
        config,
    )
    steady = history[1:] or history  # the first epoch pays for allocation and autotuning
    return {
        "images_per_second": sum(h["images_per_second"] for h in steady) / len(steady),
        "peak_memory_mb": peak_memory_mb(device),
    }


def measure_dataloader(images, size, batch, steps, device, workers) -> dict:
    _reset_peak(device)
    model, optimizer = _model(device, size)
    loader = DataLoader(
        TwoViews(images, size),
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    done, started = 0, None
    while done < steps + 1:
        for view_a, view_b in loader:
            _step(model, optimizer, view_a.to(device, non_blocking=True), view_b.to(device, non_blocking=True), device)
            done += 1
            if done == 1:  # warm-up step excluded
                _sync(device)
                started = time.perf_counter()
            if done == steps + 1:
                break
    _sync(device)
    return {
        "images_per_second": steps * batch / (time.perf_counter() - started),
        "peak_memory_mb": peak_memory_mb(device),
    }


def measure_ceiling(size, batch, steps, device) -> dict:
    _reset_peak(device)
    model, optimizer = _model(device, size)
    view_a = torch.randn(batch, 3, size, size, device=device)
    view_b = torch.randn(batch, 3, size, size, device=device)
    _step(model, optimizer, view_a, view_b, device)
    _sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        _step(model, optimizer, view_a, view_b, device)
    _sync(device)
    return {
        "images_per_second": steps * batch / (time.perf_counter() - started),
        "peak_memory_mb": peak_memory_mb(device),
    }


def main() -> None:
    args = parse_arguments(__doc__, extra_flags={"--smoke": "tiny settings: to check that the script works"})
    device = pick_device()
    torch.backends.cudnn.benchmark = True
    workers = os.cpu_count() or 1
    settings = {  # (image size, batch, images, measured steps)
        "gpu": [(32, 512, 4096, 30), (224, 256, 1024, 12)],
        "quick": [(32, 32, 128, 3), (224, 4, 16, 2)],
        "smoke": [(32, 8, 16, 1), (224, 2, 4, 1)],
    }["smoke" if args.smoke else "quick" if args.quick else "gpu"]
    results = {}
    for size, batch, count, steps in settings:
        images = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8)
        epochs = max(2, steps * batch // count + 1)
        engine = measure_engine(images, size, batch, epochs, device)
        usual = measure_dataloader(images, size, batch, steps, device, workers)
        ceiling = measure_ceiling(size, batch, steps, device)
        row = {
            "image_size": size,
            "batch_size": batch,
            "dataloader_workers": workers,
            "engine": engine,
            "dataloader": usual,
            "ceiling": ceiling,
            "engine_over_dataloader": engine["images_per_second"] / usual["images_per_second"],
            "engine_over_ceiling": engine["images_per_second"] / ceiling["images_per_second"],
        }
        results[f"{size}px"] = row
        print(
            f"{size:>3} px batch {batch:>3}: engine {engine['images_per_second']:8.1f} img/s "
            f"({engine['peak_memory_mb']:.0f} MB) | dataloader x{workers} {usual['images_per_second']:8.1f} img/s | "
            f"ceiling {ceiling['images_per_second']:8.1f} img/s | "
            f"a/b {row['engine_over_dataloader']:.2f}  a/c {row['engine_over_ceiling']:.2f}",
            flush=True,
        )
    path = write_result(
        "pretrain_throughput" + ("-smoke" if args.smoke else "-quick" if args.quick else ""),
        {"device": str(device), "results": results},
        args.out,
    )
    print(f"saved {path}")


if __name__ == "__main__":
    main()

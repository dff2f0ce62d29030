"""SimCLR, MoCo v2, BYOL and DINO: ours (ssl_models.methods through ssl_models.pretraining.pretrain_contrastive) and
lightly 1.6.0's building blocks for the same four methods, on Fashion-MNIST, in one run.

Both sides: the same encoder, initial weights, epochs, batch size, optimiser (AdamW, constant learning rate on lightly's
side as in its examples; ours warm-up + cosine, the engine's schedule), projection width, temperature (SimCLR, MoCo),
queue size and momentum (MoCo 0.99 fixed; BYOL 0.99 rising to 1 on a cosine), symmetrised MoCo and BYOL losses. lightly
side: its SimCLRTransform on PIL images in a torchvision DataLoader (one worker per core), SimCLRProjectionHead /
MoCoProjectionHead (MoCo v2's head, no BatchNorm; ours is SimCLR's, with BatchNorm) / BYOLProjectionHead +
BYOLPredictionHead, NTXentLoss (with memory_bank_size for MoCo), NegativeCosineSimilarity, update_momentum. DINO on both
sides: two global views and ``local_crops`` local ones (5-40% crops at 96/224 of the side), a head of hidden width 512,
bottleneck 128 and ``prototypes`` outputs (lightly's DINOProjectionHead, no BatchNorm, last layer weight-normalised),
teacher temperature 0.04 -> 0.07 (lightly: per epoch over the first 30% of the epochs; ours: per step over the first 30%
of the steps), student temperature 0.1, centre momentum 0.9, teacher EMA from ``momentum`` to 1 on a cosine. lightly's
side uses its DINOTransform (no solarisation, blur probability 0.5 on every view, as ours). Scored by weighted kNN
(k=200, temperature 0.1) of the frozen encoder's features, bank = the training images, queries = test images; wall time
and CPU time (this process and lightly's DataLoader workers) cover training only.

    make bench-deps                                                   # lightly 1.6.0 into .bench-site
    PYTHONPATH=.bench-site python benchmarks/methods.py --quick       # CPU: small_cnn, 4096 images, 3 epochs
    PYTHONPATH=.bench-site python benchmarks/methods.py               # GPU: ResNet-18, all 60k, 20 epochs
    PYTHONPATH=.bench-site python benchmarks/methods.py --quick --dino-only   # DINO alone, ours vs lightly's
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import fashion_mnist_split, parse_arguments, write_result
from benchmarks.vs_lightly import SIZE, knn, pil_loader, seconds_since, simclr_transform, train_ours
from ssl_models.augment import AugmentConfig
from ssl_models.device import pick_device
from ssl_models.encoders import build_encoder
from ssl_models.pretraining import PretrainConfig

METHODS = ("simclr", "moco", "byol", "dino")
TIME_RATIO_TARGET = 0.7  # sslflow's training time at most this share of lightly's, kNN accuracy at least lightly's
DIFFERENCES = (
    "augmentation: lightly's per-image PIL transforms in DataLoader worker processes (one per core); "
    "ours batched tensor ops on the training device",
    "learning rate: lightly's side constant (its examples); ours warm-up + cosine (the engine's schedule)",
    "MoCo projection head: lightly's MoCoProjectionHead (no BatchNorm); ours SimCLR's (with BatchNorm)",
    "DINO teacher temperature warm-up: lightly's per epoch; ours per step, over the first 30% of the run on both sides",
    "DINO head: lightly's DINOProjectionHead (weight_norm last layer); "
    "ours DINOHead (normalised prototypes): same widths",
    "channels_last memory format on our side (PretrainConfig.channels_last), lightly's default layout",
)


def cpu_seconds() -> float:
    """User + system CPU seconds used so far by this process and its finished child processes (lightly's DataLoader
    workers: joined, so counted, when its loader is freed at the end of its training function). On a machine other
    jobs load, CPU seconds measure the work; wall seconds also the wait for a core."""
    gc.collect()
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _lightly_heads(method: str, encoder: torch.nn.Module, config: PretrainConfig) -> torch.nn.ModuleDict:
    from lightly.models import modules

    dim = config.projection_dim
    if method == "simclr":
        return torch.nn.ModuleDict({"projection": modules.SimCLRProjectionHead(encoder.feature_dim, 256, dim)})
    if method == "moco":
        return torch.nn.ModuleDict({"projection": modules.MoCoProjectionHead(encoder.feature_dim, 256, dim)})
    return torch.nn.ModuleDict(
        {
            "projection": modules.BYOLProjectionHead(encoder.feature_dim, 256, dim),
            "prediction": modules.BYOLPredictionHead(dim, 256, dim),
        }
    )


def _lightly_loss(method: str, online: torch.nn.Module, heads, targets, views, loss_fn) -> torch.Tensor:
    """One batch's loss with lightly's modules; targets: (encoder, projection) EMA copies for MoCo and BYOL."""
    view_a, view_b = views
    z_a, z_b = heads["projection"](online(view_a)), heads["projection"](online(view_b))
    if method == "simclr":
        return loss_fn(z_a, z_b)
    with torch.no_grad():
        k_a, k_b = targets[1](targets[0](view_a)), targets[1](targets[0](view_b))
    if method == "moco":
        return 0.5 * (loss_fn(z_a, k_b) + loss_fn(z_b, k_a))
    p_a, p_b = heads["prediction"](z_a), heads["prediction"](z_b)
    return 0.5 * (loss_fn(p_a, k_b) + loss_fn(p_b, k_a))


def train_lightly(
    method: str, images: np.ndarray, encoder: torch.nn.Module, config: PretrainConfig, device: torch.device
) -> float:
    from lightly.loss import NegativeCosineSimilarity, NTXentLoss
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.utils.scheduler import cosine_schedule

    transform = simclr_transform(config)
    encoder, heads = encoder.to(device), _lightly_heads(method, encoder, config).to(device)
    targets = (copy.deepcopy(encoder), copy.deepcopy(heads["projection"])) if method != "simclr" else None
    for target in targets or ():
        deactivate_requires_grad(target)
    settings = config.settings  # the method's own (SimCLRSettings, MoCoSettings, BYOLSettings)
    loss_fn = {
        "simclr": lambda: NTXentLoss(temperature=settings.temperature),
        "moco": lambda: NTXentLoss(settings.temperature, memory_bank_size=(settings.queue_size, config.projection_dim)),
        "byol": NegativeCosineSimilarity,
    }[method]()
    optimizer = torch.optim.AdamW(
        [*encoder.parameters(), *heads.parameters()], lr=config.learning_rate, weight_decay=config.weight_decay
    )
    loader = pil_loader(images, transform, config, device)
    total, step, started = config.epochs * len(loader), 0, time.perf_counter()
    for _ in range(config.epochs):
        for view_a, view_b in loader:
            if targets is not None:
                momentum = (
                    settings.momentum if method == "moco" else cosine_schedule(step, total, settings.momentum, 1.0)
                )
                update_momentum(encoder, targets[0], momentum)
                update_momentum(heads["projection"], targets[1], momentum)
            loss = _lightly_loss(method, encoder, heads, targets, (view_a.to(device), view_b.to(device)), loss_fn)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    return seconds_since(started, device)


def _lightly_dino_transform(config: PretrainConfig):
    """lightly's DINOTransform with our view settings (crop scale, flips, local crops: the docstring's)."""
    from lightly.transforms import DINOTransform

    return DINOTransform(
        global_crop_size=SIZE,
        global_crop_scale=config.augment.crop_scale,
        local_crop_size=max(8, round(SIZE * 96 / 224)),
        n_local_views=config.settings.local_crops,
        hf_prob=config.augment.flip_probability,
        cj_strength=0.5,
        gaussian_blur=(0.5, 0.5, 0.5),
        solarization_prob=0.0,
        normalize={"mean": [0.5] * 3, "std": [0.5] * 3},
    )


def train_lightly_dino(
    images: np.ndarray, encoder: torch.nn.Module, config: PretrainConfig, device: torch.device
) -> float:
    """lightly's DINO (its DINOTransform, DINOProjectionHead, DINOLoss, update_momentum) with the settings of the
    docstring."""
    from lightly.loss import DINOLoss
    from lightly.models.modules import DINOProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.utils.scheduler import cosine_schedule

    settings = config.settings
    transform = _lightly_dino_transform(config)
    encoder = encoder.to(device)
    head = DINOProjectionHead(encoder.feature_dim, 512, 128, settings.prototypes).to(device)
    teacher_encoder, teacher_head = (
        copy.deepcopy(encoder),
        DINOProjectionHead(encoder.feature_dim, 512, 128, settings.prototypes).to(device),
    )
    teacher_head.load_state_dict(head.state_dict())  # a copy: its weight_norm parameters cannot be deep-copied
    deactivate_requires_grad(teacher_encoder)
    deactivate_requires_grad(teacher_head)
    loss_fn = DINOLoss(
        output_dim=settings.prototypes,
        warmup_teacher_temp=settings.teacher_warmup_temperature,
        teacher_temp=settings.teacher_temperature,
        warmup_teacher_temp_epochs=max(1, round(0.3 * config.epochs)),
    ).to(device)
    optimizer = torch.optim.AdamW(
        [*encoder.parameters(), *head.parameters()], lr=config.learning_rate, weight_decay=config.weight_decay
    )
    loader = pil_loader(images, transform, config, device)
    total, step, started = config.epochs * len(loader), 0, time.perf_counter()
    for epoch in range(config.epochs):
        for views in loader:
            momentum = cosine_schedule(step, total, settings.momentum, 1.0)
            update_momentum(encoder, teacher_encoder, momentum)
            update_momentum(head, teacher_head, momentum)
            views = [v.to(device) for v in views]
            with torch.no_grad():
                teacher_out = [teacher_head(teacher_encoder(v)) for v in views[:2]]
            student_out = [head(encoder(v)) for v in views]
            loss = loss_fn(teacher_out, student_out, epoch=epoch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    return seconds_since(started, device)


def summarise(rows: dict[str, dict], methods) -> dict[str, dict]:
    """Per method: ours minus lightly's kNN accuracy, our time over theirs (wall and CPU), and the targets met."""
    summary = {}
    for method in methods:
        ours, theirs = rows[f"{method}/sslflow"], rows[f"{method}/lightly"]
        numbers = {
            "accuracy_difference": ours["knn_accuracy"] - theirs["knn_accuracy"],
            "time_ratio": ours["train_seconds"] / theirs["train_seconds"],
            "cpu_time_ratio": ours["train_cpu_seconds"] / theirs["train_cpu_seconds"],
        }
        numbers["targets_met"] = {
            "knn_accuracy_at_least_lightly": numbers["accuracy_difference"] >= 0,
            "time_at_most_0.7x": numbers["time_ratio"] <= TIME_RATIO_TARGET,
        }
        print(
            f"{method}: sslflow - lightly kNN accuracy {numbers['accuracy_difference']:+.4f}; "
            f"sslflow / lightly time {numbers['time_ratio']:.2f}, CPU time {numbers['cpu_time_ratio']:.2f}"
        )
        summary[method] = numbers
    return summary


def main() -> None:
    args = parse_arguments(__doc__, extra_flags={"--dino-only": "only DINO, ours and lightly's"})
    device = pick_device()
    train_images, train_labels, test_images, test_labels = fashion_mnist_split(quick=args.quick)
    encoder_name = "small_cnn" if args.quick else "resnet18"
    queue_size = 1024 if args.quick else 4096
    base = PretrainConfig(
        epochs=3 if args.quick else 20,
        batch_size=256 if args.quick else 512,
        augment=AugmentConfig(output_size=SIZE, crop_scale=(0.3, 1.0), flip_probability=0.5, rotation_degrees=0.0),
    )
    rows = {}
    methods = ("dino",) if args.dino_only else METHODS
    for method in methods:
        settings = {"simclr": {"temperature": 0.2}, "moco": {"temperature": 0.2, "queue_size": queue_size}}
        config = dataclasses.replace(base, method=method, method_settings=settings.get(method, {}))
        for side in ("lightly", "sslflow"):
            encoder, cpu_before = build_encoder(encoder_name, 3, SIZE, seed=config.seed), cpu_seconds()
            if side == "sslflow":
                seconds = train_ours(train_images, encoder, config, device)
            else:
                seconds = (
                    train_lightly_dino(train_images, encoder, config, device)
                    if method == "dino"
                    else train_lightly(method, train_images, encoder, config, device)
                )
            cpu = cpu_seconds() - cpu_before
            rows[f"{method}/{side}"] = {
                "knn_accuracy": knn(encoder, train_images, train_labels, test_images, test_labels),
                "train_seconds": seconds,
                "train_cpu_seconds": cpu,
            }
            print(
                f"{method:6s} {side:8s} kNN accuracy {rows[f'{method}/{side}']['knn_accuracy']:.4f}  "
                f"train {seconds:7.1f} s, {cpu:7.1f} CPU s",
                flush=True,
            )
    summary = summarise(rows, methods)
    settings = {
        "encoder": encoder_name,
        "train_images": len(train_images),
        "test_images": len(test_images),
        "config": dataclasses.asdict(base),
        "differences": DIFFERENCES,
    }
    path = write_result(
        "methods" + ("-dino" if args.dino_only else "") + ("-quick" if args.quick else ""),
        {"device": str(device), "settings": settings, "results": rows, "summary": summary},
        args.out,
    )
    print(f"saved {path}")


if __name__ == "__main__":
    main()

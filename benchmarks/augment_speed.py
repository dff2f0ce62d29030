"""Per-sample view generation: ssl_models.augment vs kornia.augmentation, same SimCLR recipe, same device.

Both draw independent parameters for every image (kornia: same_on_batch=False). Printed and saved:
views per second for each at 32 px (batch 512) and 224 px (batch 256), and ours/kornia.

    make bench-deps && PYTHONPATH=.bench-site python benchmarks/augment_speed.py [--quick]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import parse_arguments, write_result
from ssl_models.augment import AugmentConfig, augment
from ssl_models.device import pick_device


def kornia_pipeline(size: int):
    import kornia.augmentation as K

    kernel = max(3, size // 10 // 2 * 2 + 1)
    return torch.nn.Sequential(
        K.RandomResizedCrop((size, size), scale=(0.3, 1.0)),
        K.RandomHorizontalFlip(),
        K.ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8),
        K.RandomGrayscale(p=0.2),
        K.RandomGaussianBlur((kernel, kernel), (0.1, 2.0), p=0.5),
        K.Normalize(torch.tensor([0.5] * 3), torch.tensor([0.5] * 3)),
    )


def views_per_second(fn, images: torch.Tensor, repeats: int, device: torch.device) -> float:
    fn(images)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        fn(images)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return repeats * images.shape[0] / (time.perf_counter() - started)


def main() -> None:
    args = parse_arguments(__doc__)
    device = pick_device()
    settings = [(32, 512, 20), (224, 256, 10)] if not args.quick else [(32, 128, 3), (224, 16, 2)]
    results = {}
    for size, batch, repeats in settings:
        images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
        config = AugmentConfig(output_size=size, flip_probability=0.5, rotation_degrees=0.0)
        ours = views_per_second(lambda x, config=config: augment(x, config), images, repeats, device)
        pipeline = kornia_pipeline(size).to(device)
        theirs = views_per_second(lambda x, pipeline=pipeline: pipeline(x.float() / 255.0), images, repeats, device)
        results[f"{size}px"] = {
            "batch_size": batch,
            "ours_views_per_second": ours,
            "kornia_views_per_second": theirs,
            "ours_over_kornia": ours / theirs,
        }
        print(
            f"{size:>3} px batch {batch:>3}: ours {ours:10.0f} views/s | kornia {theirs:10.0f} views/s | "
            f"ours/kornia {ours / theirs:.2f}",
            flush=True,
        )
    name = "augment_speed" + ("-quick" if args.quick else "")
    print(f"saved {write_result(name, {'device': str(device), 'results': results}, args.out)}")


if __name__ == "__main__":
    main()

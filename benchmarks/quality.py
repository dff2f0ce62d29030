"""Label efficiency and robustness at scale: the pipeline's evaluation without Flyte or MLflow, for a GPU box.

Same data, splits, seeds and steps as workflows/pipeline.py (it reuses the same functions), larger
settings: generic SimCLR on Fashion-MNIST, MICLe on MNIST-5k with PROXY cases (pixel neighbours;
MNIST has no patients), the ablation {scratch, SimCLR, SimCLR+MICLe} x {linear probe, fine-tune}
x label fractions, evaluated on the MNIST test split, optdigits and the corruption suite.
Prints the three comparisons of issue 6 and saves everything as JSON.

    python benchmarks/quality.py                 # GPU: all 70k Fashion-MNIST, ResNet-18, long schedules
    python benchmarks/quality.py --cpu-budget    # the largest setting that fits ~15 min on 2 CPU cores
"""

from __future__ import annotations

import copy
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import parse_arguments, write_result  # noqa: E402
from ssl_models.augment import FINETUNE_AUGMENT  # noqa: E402
from ssl_models.encoders import build_encoder  # noqa: E402
from ssl_models.evaluate import predict_probabilities  # noqa: E402
from ssl_models.label_fractions import stratified_subset  # noqa: E402
from ssl_models.metrics import classification_metrics  # noqa: E402
from ssl_models.corruptions import CORRUPTIONS, SEVERITIES, corrupt  # noqa: E402
from ssl_models.data import InMemoryPairs  # noqa: E402
from ssl_models.train import FinetuneConfig, PretrainConfig, finetune, pretrain_contrastive  # noqa: E402
from sslflow.config import IngestConfig  # noqa: E402
from sslflow.data.manifest import build_manifest, labelled_rows  # noqa: E402
from sslflow.data.labels import class_indices  # noqa: E402
from sslflow.data.sources import read_source  # noqa: E402

SETTINGS = {
    "gpu": dict(encoder="resnet18", generic_images=0, simclr=PretrainConfig(epochs=100, batch_size=512, learning_rate=1e-3),
                micle=PretrainConfig(epochs=200, batch_size=512, learning_rate=1e-3), finetune=FinetuneConfig(epochs=30, min_steps=300)),
    "cpu-budget": dict(encoder="small_cnn", generic_images=20000, simclr=PretrainConfig(epochs=8),
                       micle=PretrainConfig(epochs=30), finetune=FinetuneConfig(epochs=15, min_steps=150)),
}  # fmt: skip
FRACTIONS = (0.01, 0.1, 1.0)


def dataset(source: str, config: IngestConfig):
    manifest, pixels, _ = build_manifest(read_source(source, config), config)
    return manifest, pixels


def labelled(manifest, pixels, split: str, class_names: list[str] | None = None):
    images, labels, _ = labelled_rows(manifest, pixels, split)
    names = class_names or sorted(set(labels))
    return images, class_indices(labels, names, f"{split} split"), names


def pretrain_encoders(settings: dict, generic, generic_pixels, domain, domain_pixels):
    """(SimCLR encoder on the generic set, SimCLR + MICLe encoder on the domain set); test splits unused."""
    simclr_encoder = build_encoder(settings["encoder"], 1, 28)
    pool = (generic["split"] != "test").to_numpy()
    pretrain_contrastive(simclr_encoder, InMemoryPairs(torch.from_numpy(generic_pixels[pool]), list(range(int(pool.sum()))), seed=settings["simclr"].seed), settings["simclr"])
    micle_encoder = copy.deepcopy(simclr_encoder)
    pool = (domain["split"] != "test").to_numpy()
    pretrain_contrastive(micle_encoder, InMemoryPairs(torch.from_numpy(domain_pixels[pool]), domain.loc[pool, "case_id"].tolist(), seed=settings["micle"].seed), settings["micle"])
    return simclr_encoder, micle_encoder


def evaluation_sets(test_images, test_labels, shift_images, shift_labels) -> dict:
    eval_sets = {"in_domain": (test_images, test_labels), "shift": (shift_images, shift_labels)}
    for name in CORRUPTIONS:
        for severity in SEVERITIES:
            eval_sets[f"{name}@{severity}"] = (corrupt(torch.from_numpy(test_images), name, severity).numpy(), test_labels)
    return eval_sets


def ablation(settings: dict, encoders: dict, train_images, train_labels, class_names, eval_sets: dict) -> list[dict]:
    """{scratch, simclr, simclr+micle} x {linear, finetune} x FRACTIONS, each scored on every eval set."""
    results = []
    for fraction in FRACTIONS:
        chosen = stratified_subset(train_labels, fraction, seed=0)
        for probe in ("linear", "finetune"):
            config = dataclasses.replace(settings["finetune"], linear_probe=probe == "linear")
            for init, encoder in encoders.items():
                start = build_encoder(settings["encoder"], 1, 28) if encoder is None else copy.deepcopy(encoder)
                run_config = dataclasses.replace(config, head_warmup_steps=0) if encoder is None else config
                model, _ = finetune(start, torch.from_numpy(train_images[chosen]), train_labels[chosen], len(class_names), run_config)
                for eval_set, (images, labels) in eval_sets.items():
                    metrics = classification_metrics(predict_probabilities(model, torch.from_numpy(images), FINETUNE_AUGMENT), labels)
                    results.append({"init": init, "probe": probe, "label_fraction": fraction, "num_labels": len(chosen), "eval_set": eval_set, **metrics})
                row = [r for r in results if r["init"] == init and r["probe"] == probe and r["label_fraction"] == fraction]
                print(f"{init:13s} {probe:8s} {fraction:5g}: in-domain {row[0]['accuracy']:.4f}  optdigits {row[1]['accuracy']:.4f}", flush=True)
    return results


def compare(results: list[dict]) -> tuple[dict, dict]:
    """(comparisons: [SSL, scratch] per target, targets met) from the fine-tuned rows."""

    def accuracy(init: str, fraction: float, eval_set: str = "in_domain") -> float:
        return next(r["accuracy"] for r in results if r["init"] == init and r["probe"] == "finetune" and r["label_fraction"] == fraction and r["eval_set"] == eval_set)

    drop = lambda init: accuracy(init, 1.0) - accuracy(init, 1.0, "shift")  # noqa: E731
    comparisons = {
        "ssl_at_1pct_vs_scratch_at_10pct": [accuracy("simclr+micle", 0.01), accuracy("scratch", 0.1)],
        "ssl_at_10pct_vs_scratch_at_100pct": [accuracy("simclr+micle", 0.1), accuracy("scratch", 1.0)],
        "shift_drop_ssl_vs_scratch_at_100pct": [drop("simclr+micle"), drop("scratch")],
    }
    targets = {
        "ssl_at_1pct_vs_scratch_at_10pct": comparisons["ssl_at_1pct_vs_scratch_at_10pct"][0] >= comparisons["ssl_at_1pct_vs_scratch_at_10pct"][1],
        "ssl_at_10pct_vs_scratch_at_100pct": comparisons["ssl_at_10pct_vs_scratch_at_100pct"][0] >= comparisons["ssl_at_10pct_vs_scratch_at_100pct"][1],
        "shift_drop_ssl_vs_scratch_at_100pct": comparisons["shift_drop_ssl_vs_scratch_at_100pct"][0] <= 0.5 * comparisons["shift_drop_ssl_vs_scratch_at_100pct"][1],
    }
    return comparisons, targets


def main() -> None:
    args = parse_arguments(__doc__, "--cpu-budget")
    settings = SETTINGS["cpu-budget" if args.cpu_budget else "gpu"]
    started = time.perf_counter()

    generic, generic_pixels = dataset("fashion-mnist", IngestConfig(max_images=settings["generic_images"]))
    domain, domain_pixels = dataset("mnist-5k", IngestConfig(proxy_cases=True))
    shift, shift_pixels = dataset("optdigits", IngestConfig(all_test=True))
    simclr_encoder, micle_encoder = pretrain_encoders(settings, generic, generic_pixels, domain, domain_pixels)

    train_images, train_labels, class_names = labelled(domain, domain_pixels, "train")
    test_images, test_labels, _ = labelled(domain, domain_pixels, "test", class_names)
    shift_images, shift_labels, _ = labelled(shift, shift_pixels, "test", class_names)
    eval_sets = evaluation_sets(test_images, test_labels, shift_images, shift_labels)
    encoders = {"scratch": None, "simclr": simclr_encoder, "simclr+micle": micle_encoder}
    results = ablation(settings, encoders, train_images, train_labels, class_names, eval_sets)

    comparisons, targets = compare(results)
    for name, (ours, theirs) in comparisons.items():
        print(f"{name}: {ours:.4f} vs {theirs:.4f} -> target {'met' if targets[name] else 'NOT met'}")
    settings_record = {k: (dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v) for k, v in settings.items()}
    path = write_result("quality" + ("-cpu-budget" if args.cpu_budget else ""), {
        "settings": settings_record, "case_ids": "PROXY (pixel-neighbour pairs; MNIST has no patients)",
        "comparisons": comparisons, "targets_met": targets, "results": results, "wall_seconds": time.perf_counter() - started,
    }, args.out)  # fmt: skip
    print(f"saved {path}")


if __name__ == "__main__":
    main()

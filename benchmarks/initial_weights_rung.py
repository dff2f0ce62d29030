"""Does a ladder whose first rung starts from the user's weights beat one that starts from random weights, at 1% of
MNIST-5k's labels? The user's weights are those of a model this script trains itself (supervised, on Fashion-MNIST's
labels, with 3-channel input as ImageNet weights have) and saves to a file, standing in for ImageNet weights.

Per seed, without Flyte or MLflow but with the pipeline's functions:
- the user's weights: a small_cnn classifier trained on the generic set's labelled images
  (sslflow.training.labelled_subset at fraction 1), its encoder's state dict saved with torch.save;
- the generic rung twice, with the same compute (SimCLR, the same epochs, images, batch and seed): once from
  ``PretrainConfig.initial_weights`` = that file, loaded by the real loading code
  (sslflow.tracking.initial_weights.encoder_from_weights: checked key by key, RGB first layer summed to 1 channel), once
  from random weights; beside them the floor (scratch) and the user's weights alone (the generic rung with 0 epochs);
- fine-tuning at 1% of MNIST-5k's labels with the label budget of sslflow.training.labelled_subset (validation labels
  counted, every choice on the validation fold) and quality.py's search and budget (benchmarks/quality.py: train_arm);
  scored on the MNIST-5k test split (and optdigits, the shift set), the difference paired by seed and test image with
  the case-bootstrap interval of sslflow.reporting.comparisons.

    python benchmarks/initial_weights_rung.py --cpu-budget  # small_cnn, 28 px, 3,000 generic images, 2 epochs, 3 seeds
    python benchmarks/initial_weights_rung.py --smoke       # tiny settings, one seed: the script works
"""

from __future__ import annotations

import copy
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import parse_arguments, write_result
from benchmarks.quality import SETTINGS as QUALITY_SETTINGS
from benchmarks.quality import load_data, train_arm
from ssl_models.data import InMemoryPairs
from ssl_models.encoders import build_encoder
from ssl_models.finetuning import FinetuneConfig, finetune
from ssl_models.pretraining import PretrainConfig, pretrain_contrastive
from sslflow.evaluation import evaluate_classifier
from sslflow.reporting.comparisons import compare_arms
from sslflow.tracking.initial_weights import encoder_from_weights
from sslflow.training.labelled_subset import labelled_subset

FRACTION = 0.01
SEEDS = (0, 1, 2)
FROM_WEIGHTS, FROM_RANDOM, WEIGHTS_ALONE = "simclr from user weights", "simclr from random", "user weights alone"
USED = (
    "encoder",
    "generic_images",
    "domain_images",
    "shift_images",
    "generic_pretraining",
    "finetune",
    "seeds",
)  # of quality.py's settings
SETTINGS = {
    # quality.py's fine-tuning protocol (search, budget, early stopping); pretraining smaller than its cpu-budget's
    # (3,000 generic images, 2 epochs) so that 3 seeds fit a shared 2-core machine
    "cpu-budget": dict(
        {k: v for k, v in QUALITY_SETTINGS["cpu-budget"].items() if k in USED},
        generic_images=3000,
        generic_pretraining=PretrainConfig(epochs=2),
        user_weights=FinetuneConfig(epochs=2, eval_every=20, patience=3),
    ),
    "smoke": dict(
        {k: v for k, v in QUALITY_SETTINGS["smoke"].items() if k in USED},
        user_weights=FinetuneConfig(epochs=1, min_steps=2, learning_rates=[1e-3]),
    ),
}


def train_user_weights(settings: dict, data: SimpleNamespace, seed: int, path: Path) -> dict:
    """Train a classifier on the generic set's labels (3-channel input: the grey channel repeated, as ImageNet weights
    are RGB) and save its encoder's state dict at ``path``; returns its validation accuracy and the file's size."""
    subset = labelled_subset(data.generic, data.generic_pixels, 1.0, seed, "fashion-mnist")
    rgb = lambda images: torch.from_numpy(np.repeat(images, 3, axis=1))  # noqa: E731
    config = dataclasses.replace(settings["user_weights"], seed=seed)
    encoder = build_encoder(settings["encoder"], 3, 28, seed=seed + 1000)
    model, history = finetune(
        encoder,
        rgb(subset.images),
        subset.labels,
        len(subset.class_names),
        config,
        validation=(rgb(subset.val_images), subset.val_labels),
    )
    torch.save(model.encoder.state_dict(), path)
    return {
        "labels": len(subset.labels),
        "val_labels": len(subset.val_labels),
        "val_accuracy": float(history[-1].get("val_accuracy", float("nan"))),
        "bytes": path.stat().st_size,
    }


def generic_rung(settings: dict, data: SimpleNamespace, config: PretrainConfig, folder: Path) -> torch.nn.Module:
    """The pipeline's generic rung (tasks/pretrain.py): the encoder from ``config.initial_weights`` when given (the real
    loading code), else random weights from ``config.seed``; then ``config`` on the generic set's train + val images."""
    if config.initial_weights:
        encoder, _ = encoder_from_weights(config.initial_weights, settings["encoder"], 1, 28, folder)
    else:
        encoder = build_encoder(settings["encoder"], 1, 28, seed=config.seed)
    pool = data.generic["split"].isin(["train", "val"]).to_numpy()
    if config.epochs > 0:
        pretrain_contrastive(
            encoder,
            InMemoryPairs(torch.from_numpy(data.generic_pixels[pool]), list(range(int(pool.sum()))), seed=config.seed),
            config,
        )
    return encoder


def one_seed(settings: dict, data: SimpleNamespace, seed: int, folder: Path) -> tuple[list[dict], dict]:
    """(result rows of every arm at FRACTION, the user weights' training summary) for ``seed``."""
    weights_path = folder / f"fashion_mnist_{settings['encoder']}_seed{seed}.pt"
    user = train_user_weights(settings, data, seed, weights_path)
    simclr = dataclasses.replace(settings["generic_pretraining"], seed=seed)
    encoders = {
        "scratch": None,
        WEIGHTS_ALONE: generic_rung(
            settings, data, dataclasses.replace(simclr, epochs=0, initial_weights=str(weights_path)), folder
        ),
        FROM_WEIGHTS: generic_rung(
            settings, data, dataclasses.replace(simclr, initial_weights=str(weights_path)), folder
        ),
        FROM_RANDOM: generic_rung(settings, data, simclr, folder),
    }
    subset = labelled_subset(data.domain, data.domain_pixels, FRACTION, seed, "mnist-5k")
    rows = []
    for init, encoder in encoders.items():
        record = train_arm(settings, init, "finetune", copy.deepcopy(encoder), subset, seed)
        record.label_fraction = FRACTION
        scored, _ = evaluate_classifier(record.model, record, data.eval_sets, data.cases)
        print(
            f"seed {seed} {init:26s} ({record.num_labels} + {record.num_val_labels} labels, {record.chosen}): "
            f"test {scored[0]['accuracy']:.4f}",
            flush=True,
        )
        rows += scored
    return rows, user


def summary(results: list[dict]) -> dict:
    """Per-seed test accuracies of each arm, and the paired comparisons with their case-bootstrap intervals."""
    table = pd.DataFrame(results)
    in_domain = table[table["eval_set"] == "in_domain"]
    per_seed = {
        init: {int(r.seed): float(r.accuracy) for r in rows.itertuples()} for init, rows in in_domain.groupby("init")
    }
    compare = lambda ours, theirs: compare_arms(table, (ours, "finetune"), FRACTION, (theirs, "finetune"), FRACTION)  # noqa: E731
    target = compare(FROM_WEIGHTS, FROM_RANDOM)
    claim = {"claim": f"{FROM_WEIGHTS} >= {FROM_RANDOM} at {FRACTION:g} of the labels", **(target or {})}
    claim["mean_difference"] = round(target["ours_accuracy"] - target["theirs_accuracy"], 10) if target else None
    claim["met"] = (
        bool(target) and claim["mean_difference"] >= 0
    )  # the target: the mean over seeds, not the interval
    others = ((FROM_RANDOM, "scratch"), (WEIGHTS_ALONE, "scratch"), (FROM_WEIGHTS, WEIGHTS_ALONE))
    return {
        "test_accuracy_per_seed": per_seed,
        "target": claim,
        "comparisons": {f"{ours} - {theirs}": compare(ours, theirs) for ours, theirs in others},
    }


def main() -> None:
    args = parse_arguments(__doc__, "--cpu-budget", {"--smoke": "tiny settings: to check that the script works"})
    mode = "smoke" if args.smoke else "cpu-budget"
    settings, started = SETTINGS[mode], time.perf_counter()
    data = load_data(settings)
    settings_record = {k: (dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v) for k, v in settings.items()}
    results, user_weights = [], {}
    with tempfile.TemporaryDirectory(prefix="sslflow-initial-weights-") as folder:
        for seed in settings.get("seeds", SEEDS):
            rows, user_weights[seed] = one_seed(settings, data, seed, Path(folder))
            results += rows
            found = summary(results)
            record = {
                "settings": settings_record,
                "fraction": FRACTION,
                "user_weights": user_weights,
                **found,
                "results": results,
                "wall_seconds": time.perf_counter() - started,
            }
            path = write_result(f"initial_weights_rung-{mode}", record, args.out)
            print(found["target"], flush=True)
    print(f"saved {path}")


if __name__ == "__main__":
    main()

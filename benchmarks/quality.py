"""Label efficiency and robustness at scale: the pipeline's evaluation without Flyte or MLflow, for a GPU box.

Same data, splits, seeds and steps as workflows/pipeline.py (it reuses the same functions), larger
settings: generic SimCLR on Fashion-MNIST, MICLe on MNIST-5k with PROXY cases (pixel neighbours;
MNIST has no patients), the ablation {scratch, SimCLR, SimCLR+MICLe} x {linear probe, fine-tune}
x label fractions, plus a self-trained student per fraction (SimCLR v2 step 3: the best model on
validation labels the domain pool; sslflow/self_training.py), evaluated on the MNIST test split,
optdigits and the corruption suite. Prints the three comparisons of issue 6, the two label-efficiency
comparisons of issue 14 (best arm vs scratch with 10x the labels), pseudo-label accuracy and the
student's gain at each fraction, and saves everything as JSON.

    python benchmarks/quality.py                 # GPU: all 70k Fashion-MNIST, ResNet-18, long schedules
    python benchmarks/quality.py --cpu-budget    # the largest setting that fits ~15 min on 2 CPU cores
    python benchmarks/quality.py --smoke         # a minute of tiny settings: the script works (tests use it)
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import parse_arguments, write_result  # noqa: E402
from ssl_models.augment import FINETUNE_AUGMENT  # noqa: E402
from ssl_models.encoders import build_encoder  # noqa: E402
from ssl_models.evaluate import predict_probabilities  # noqa: E402
from ssl_models.label_fractions import stratified_subset  # noqa: E402
from ssl_models.metrics import classification_metrics  # noqa: E402
from ssl_models.corruptions import CORRUPTIONS, SEVERITIES, corrupt  # noqa: E402
from ssl_models.self_training import SelfTrainConfig  # noqa: E402
from ssl_models.train import FinetuneConfig, PretrainConfig, finetune, pretrain_contrastive  # noqa: E402
from sslflow.config import IngestConfig  # noqa: E402
from sslflow.data.manifest import build_manifest, labelled_rows  # noqa: E402
from sslflow.data.labels import class_indices  # noqa: E402
from sslflow.data.sources import read_source  # noqa: E402
from sslflow.reporting.comparisons import comparison_lines, label_efficiency_comparisons  # noqa: E402
from sslflow.self_training import STUDENT_INIT, run_self_training, self_training_data  # noqa: E402

SETTINGS = {
    "gpu": dict(encoder="resnet18", generic_images=0, simclr=PretrainConfig(epochs=100, batch_size=512, learning_rate=1e-3),
                micle=PretrainConfig(epochs=200, batch_size=512, learning_rate=1e-3), finetune=FinetuneConfig(epochs=30, min_steps=300),
                self_train=SelfTrainConfig(steps=2000, head_warmup_steps=200, batch_size=256)),
    "cpu-budget": dict(encoder="small_cnn", generic_images=20000, simclr=PretrainConfig(epochs=8),
                       micle=PretrainConfig(epochs=30), finetune=FinetuneConfig(epochs=15, min_steps=150),
                       self_train=SelfTrainConfig(steps=600, head_warmup_steps=50)),
    "smoke": dict(encoder="small_cnn", generic_images=300, domain_images=600, shift_images=200, simclr=PretrainConfig(epochs=1, batch_size=128),
                  micle=PretrainConfig(epochs=1, batch_size=128), finetune=FinetuneConfig(epochs=1, min_steps=3, head_warmup_steps=2),
                  self_train=SelfTrainConfig(steps=3, head_warmup_steps=1, confidence_threshold=0.0)),
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
    pretrain_contrastive(simclr_encoder, torch.from_numpy(generic_pixels[pool]), list(range(int(pool.sum()))), settings["simclr"])
    micle_encoder = copy.deepcopy(simclr_encoder)
    pool = (domain["split"] != "test").to_numpy()
    pretrain_contrastive(micle_encoder, torch.from_numpy(domain_pixels[pool]), domain.loc[pool, "case_id"].tolist(), settings["micle"])
    return simclr_encoder, micle_encoder


def evaluation_sets(test_images, test_labels, shift_images, shift_labels) -> dict:
    eval_sets = {"in_domain": (test_images, test_labels), "shift": (shift_images, shift_labels)}
    for name in CORRUPTIONS:
        for severity in SEVERITIES:
            eval_sets[f"{name}@{severity}"] = (corrupt(torch.from_numpy(test_images), name, severity).numpy(), test_labels)
    return eval_sets


def ablation(settings: dict, encoders: dict, train_images, train_labels, class_names, eval_sets: dict, val_set) -> tuple[list[dict], dict]:
    """{scratch, simclr, simclr+micle} x {linear, finetune} x FRACTIONS, each scored on every eval set and on
    val_set (images, labels); also {fraction: (val accuracy, "init probe", model)} of the best model on val."""
    results, teachers = [], {}
    for fraction in FRACTIONS:
        chosen = stratified_subset(train_labels, fraction, seed=0)
        for probe in ("linear", "finetune"):
            config = dataclasses.replace(settings["finetune"], linear_probe=probe == "linear")
            for init, encoder in encoders.items():
                start = build_encoder(settings["encoder"], 1, 28) if encoder is None else copy.deepcopy(encoder)
                run_config = dataclasses.replace(config, head_warmup_steps=0) if encoder is None else config
                model, _ = finetune(start, torch.from_numpy(train_images[chosen]), train_labels[chosen], len(class_names), run_config)
                val_accuracy = float((predict_probabilities(model, torch.from_numpy(val_set[0]), FINETUNE_AUGMENT).argmax(1) == val_set[1]).mean())
                if val_accuracy > teachers.get(fraction, (-1.0,))[0]:
                    teachers[fraction] = (val_accuracy, f"{init} {probe}", model)
                for eval_set, (images, labels) in eval_sets.items():
                    metrics = classification_metrics(predict_probabilities(model, torch.from_numpy(images), FINETUNE_AUGMENT), labels)
                    results.append({"init": init, "probe": probe, "label_fraction": fraction, "num_labels": len(chosen), "eval_set": eval_set, "val_accuracy": val_accuracy, **metrics})
                row = [r for r in results if r["init"] == init and r["probe"] == probe and r["label_fraction"] == fraction]
                print(f"{init:13s} {probe:8s} {fraction:5g}: in-domain {row[0]['accuracy']:.4f}  optdigits {row[1]['accuracy']:.4f}", flush=True)
    return results, teachers


def student_arm(settings: dict, micle_encoder, domain, domain_pixels, teachers: dict, eval_sets: dict) -> tuple[list[dict], list[dict]]:
    """A student per fraction, from the SimCLR + MICLe encoder, taught by that fraction's best model on val:
    (result rows like ablation's, pseudo-label quality reports)."""
    results, reports = [], []
    for fraction, (_, arm, teacher) in sorted(teachers.items()):
        if fraction > settings["self_train"].max_label_fraction:
            continue
        data = self_training_data(domain, domain_pixels, fraction, 0, "mnist-5k")
        outcome = run_self_training(teacher, copy.deepcopy(micle_encoder), data, settings["self_train"])
        reports.append({"label_fraction": fraction, "teacher": arm, **outcome.report})
        for eval_set, (images, labels) in eval_sets.items() if outcome.student is not None else ():
            metrics = classification_metrics(predict_probabilities(outcome.student, torch.from_numpy(images), FINETUNE_AUGMENT), labels)
            results.append({"init": STUDENT_INIT, "probe": "finetune", "label_fraction": fraction, "num_labels": len(data.labels),
                            "eval_set": eval_set, "val_accuracy": outcome.report["student_val_accuracy"], **metrics})  # fmt: skip
        print(f"student {fraction:5g} (teacher {arm}): pseudo-label accuracy {outcome.report['pseudo_label_accuracy']:.4f}, val gain {outcome.report['student_gain']:+.4f}", flush=True)
    return results, reports


def self_training_summary(results: list[dict], reports: list[dict]) -> dict:
    """{fraction: pseudo-label quality and the student's gain over its teacher on val and on the in-domain test split}."""

    def test_accuracy(arm: str, fraction: float) -> float:
        return next((r["accuracy"] for r in results if f"{r['init']} {r['probe']}" == arm and r["label_fraction"] == fraction and r["eval_set"] == "in_domain"), math.nan)  # no student: no row

    keys = ("teacher", "coverage", "pseudo_label_accuracy", "teacher_ece", "pseudo_labelled", "teacher_val_accuracy", "student_val_accuracy", "student_gain")
    return {
        f"{r['label_fraction']:g}": {**{k: r[k] for k in keys}, "student_test_gain": test_accuracy(f"{STUDENT_INIT} finetune", r["label_fraction"]) - test_accuracy(r["teacher"], r["label_fraction"])}
        for r in reports
    }  # fmt: skip


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
    args = parse_arguments(__doc__, "--cpu-budget", {"--smoke": "tiny settings, to check that the script works"})
    mode = "smoke" if args.smoke else "cpu-budget" if args.cpu_budget else "gpu"
    settings = SETTINGS[mode]
    started = time.perf_counter()

    generic, generic_pixels = dataset("fashion-mnist", IngestConfig(max_images=settings["generic_images"]))
    domain, domain_pixels = dataset("mnist-5k", IngestConfig(proxy_cases=True, max_images=settings.get("domain_images", 0)))
    shift, shift_pixels = dataset("optdigits", IngestConfig(all_test=True, max_images=settings.get("shift_images", 0)))
    simclr_encoder, micle_encoder = pretrain_encoders(settings, generic, generic_pixels, domain, domain_pixels)

    train_images, train_labels, class_names = labelled(domain, domain_pixels, "train")
    test_images, test_labels, _ = labelled(domain, domain_pixels, "test", class_names)
    val_images, val_labels, _ = labelled(domain, domain_pixels, "val", class_names)
    shift_images, shift_labels, _ = labelled(shift, shift_pixels, "test", class_names)
    eval_sets = evaluation_sets(test_images, test_labels, shift_images, shift_labels)
    encoders = {"scratch": None, "simclr": simclr_encoder, "simclr+micle": micle_encoder}
    results, teachers = ablation(settings, encoders, train_images, train_labels, class_names, eval_sets, (val_images, val_labels))
    student_results, reports = student_arm(settings, micle_encoder, domain, domain_pixels, teachers, eval_sets)
    results += student_results

    comparisons, targets = compare(results)
    for name, (ours, theirs) in comparisons.items():
        print(f"{name}: {ours:.4f} vs {theirs:.4f} -> target {'met' if targets[name] else 'NOT met'}")
    label_efficiency = label_efficiency_comparisons(pd.DataFrame(results))
    print("\n".join(comparison_lines(label_efficiency)))
    self_training = self_training_summary(results, reports)
    settings_record = {k: (dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v) for k, v in settings.items()}
    path = write_result("quality" + ("" if mode == "gpu" else f"-{mode}"), {
        "settings": settings_record, "case_ids": "PROXY (pixel-neighbour pairs; MNIST has no patients)",
        "comparisons": comparisons, "targets_met": targets, "label_efficiency": label_efficiency, "self_training": self_training,
        "pseudo_label_reports": reports, "seeds": "one (seed 0): no seeds input yet", "results": results, "wall_seconds": time.perf_counter() - started,
    }, args.out)  # fmt: skip
    print(f"saved {path}")


if __name__ == "__main__":
    main()

"""Label efficiency and robustness at scale: the pipeline's evaluation without Flyte or MLflow, for a GPU box.

Same data, splits, seeds and steps as workflows/pipeline.py (it reuses the same functions), larger
settings: generic SimCLR on Fashion-MNIST, domain SimCLR and MICLe (PROXY cases: pixel
neighbours; MNIST has no patients) continued from it on MNIST-5k, the ablation {pixels linear, scratch
fine-tuned, {SimCLR, + domain SimCLR, + MICLe} x {linear probe, fine-tune}} x label fractions x SEEDS,
plus a self-trained student per fraction and seed (SimCLR v2 step 3: FixMatch on the domain pool, continuing the
top rung's fine-tuned model, judged against the best model on validation; sslflow/training/student.py), evaluated on the MNIST test split, optdigits and the corruption
suite. Prints the comparisons of issues 6 and 12 as means with 95% t-intervals over the seeds (a gain only
when the intervals separate), issue 14's two label-efficiency comparisons (best arm vs scratch with 10x the
labels, by mean), the pseudo-label accuracy and the student's gain at each fraction, and saves everything
as JSON.

    python benchmarks/quality.py                 # GPU: all 70k Fashion-MNIST, ResNet-18, long schedules
    python benchmarks/quality.py --cpu-budget    # small_cnn, 2 CPU cores (3 seeds; its time is in the result JSON)
    python benchmarks/quality.py --smoke         # a minute of tiny settings, one seed: the script works (tests use it)
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import parse_arguments, write_result  # noqa: E402
from ssl_models.augment import FINETUNE_AUGMENT  # noqa: E402
from ssl_models.encoders import build_encoder  # noqa: E402
from ssl_models.evaluate import predict_probabilities  # noqa: E402
from ssl_models.data import InMemoryPairs  # noqa: E402
from ssl_models.fixmatch import SelfTrainConfig  # noqa: E402
from ssl_models.train import FinetuneConfig, PretrainConfig, finetune, pretrain_contrastive  # noqa: E402
from sslflow.config import IngestConfig  # noqa: E402
from sslflow.data.chunks import ingest_source  # noqa: E402
from sslflow.data.dataset import read_images  # noqa: E402
from sslflow.evaluation import evaluate_classifier, evaluation_sets, select_best  # noqa: E402
from sslflow.reporting.comparisons import comparison_lines, label_efficiency_comparisons  # noqa: E402
from sslflow.reporting.intervals import t_interval, verdict  # noqa: E402
from sslflow.ladder import LADDER, arm, ladder_arms, ladder_steps, student_arm as student_arm_of  # noqa: E402
from sslflow.training.labelled_subset import labelled_subset  # noqa: E402
from sslflow.training.student import run_self_training, self_training_data, student_start  # noqa: E402

SETTINGS = {
    "gpu": dict(encoder="resnet18", generic_images=0, simclr=PretrainConfig(epochs=100, batch_size=512, learning_rate=1e-3),
                micle=PretrainConfig(epochs=200, batch_size=512, learning_rate=1e-3), finetune=FinetuneConfig(epochs=30, min_steps=300),
                self_train=SelfTrainConfig(steps=2000, batch_size=64, unlabelled_ratio=7, confidence_threshold=0.95)),
    "cpu-budget": dict(encoder="small_cnn", generic_images=20000, simclr=PretrainConfig(epochs=8),
                       micle=PretrainConfig(epochs=30), finetune=FinetuneConfig(epochs=15, min_steps=150),
                       self_train=SelfTrainConfig(steps=600)),
    "smoke": dict(encoder="small_cnn", generic_images=300, domain_images=600, shift_images=200, simclr=PretrainConfig(epochs=1, batch_size=128),
                  micle=PretrainConfig(epochs=1, batch_size=128), finetune=FinetuneConfig(epochs=1, min_steps=3, head_warmup_steps=2),
                  self_train=SelfTrainConfig(steps=3, eval_every=2, confidence_threshold=0.0), seeds=(0,)),
}  # fmt: skip
FRACTIONS = (0.01, 0.1, 1.0)
SEEDS = (0, 1, 2)  # fine-tuning seeds (label subset, head, batch order); pretraining runs once, with seed 0


def dataset(source: str, config: IngestConfig):
    """(manifest, images (N, C, H, W) uint8 in its row order) of ``source``, ingested as the pipeline ingests it
    (plan -> decode chunks -> join: sslflow/data/chunks.py) into a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="sslflow-quality-") as folder:
        _, manifest, _ = ingest_source(source, config, Path(folder) / "dataset")
        return manifest, read_images(Path(folder) / "dataset", manifest)


def pretrain_encoders(settings: dict, generic, generic_pixels, domain, domain_pixels) -> dict:
    """{arm: encoder} for the ladder (sslflow.ladder) of the settings' method: the generic rung on the generic
    set, each rung above it continued from it on the domain set, with or without case pairs (same epochs and
    schedule); test splits unused."""
    method = settings["simclr"].method
    generic_encoder = build_encoder(settings["encoder"], 1, 28, seed=settings["simclr"].seed)
    pool = generic["split"].isin(["train", "val"]).to_numpy()
    pretrain_contrastive(generic_encoder, InMemoryPairs(torch.from_numpy(generic_pixels[pool]), list(range(int(pool.sum()))), seed=settings["simclr"].seed), settings["simclr"])
    pool = domain["split"].isin(["train", "val"]).to_numpy()
    encoders = {arm(method, LADDER[0].name): generic_encoder}
    for rung in LADDER[1:]:
        case_ids = domain.loc[pool, "case_id"].tolist() if rung.case_pairs else list(range(int(pool.sum())))
        encoders[arm(method, rung.name)] = copy.deepcopy(generic_encoder)
        pretrain_contrastive(encoders[arm(method, rung.name)], InMemoryPairs(torch.from_numpy(domain_pixels[pool]), case_ids, seed=settings["micle"].seed), settings["micle"])
    return encoders


def arms(encoders: dict) -> list[tuple[str, str]]:
    """(init, probe) pairs: the floors (pixels probed, scratch fine-tuned) and each pretrained encoder both ways."""
    pretrained = [init for init, encoder in encoders.items() if encoder is not None]
    return [("pixels", "linear"), ("scratch", "finetune")] + [(init, probe) for probe in ("linear", "finetune") for init in pretrained]


def train_arm(settings: dict, init: str, probe: str, encoder, train, validation, num_classes: int, seed: int):
    """(classifier, probe record) for one arm; (images, labels) train and validation sets; encoder None builds a fresh one."""
    config = dataclasses.replace(settings["finetune"], linear_probe=probe == "linear", seed=seed)
    if encoder is None:
        name = "pixels" if init == "pixels" else settings["encoder"]
        encoder, config = build_encoder(name, 1, 28, seed=seed), dataclasses.replace(config, head_warmup_steps=0)
    validation = (torch.from_numpy(validation[0]), validation[1])
    model, history = finetune(copy.deepcopy(encoder), torch.from_numpy(train[0]), train[1], num_classes, config, validation=validation)
    fit = ({"probe_converged": history[-1]["converged"], "probe_train_loss": history[-1]["loss"]} if probe == "linear"
           else {"stopped_step": history[-1]["stopped_step"], "best_step": history[-1]["best_step"]})  # fmt: skip
    return model, {"train_accuracy": history[-1]["accuracy"], **fit}


def _scored(model, record: SimpleNamespace, eval_sets: list, fit: dict) -> list[dict]:
    """The pipeline's scoring (sslflow.evaluation.evaluate_classifier) of one model on every set, with its fit record."""
    rows, _ = evaluate_classifier(model, record, eval_sets)
    return [{**row, **fit} for row in rows]


def _accuracy(rows: list[dict], eval_set: str) -> float:
    return next(row["accuracy"] for row in rows if row["eval_set"] == eval_set)


def ablation(settings: dict, encoders: dict, domain, domain_pixels, eval_sets: list, seed: int) -> tuple[list[dict], dict]:
    """arms(encoders) x FRACTIONS for one seed on the pipeline's labelled subset (sslflow.training.labelled_subset),
    each scored on every evaluation set; also {fraction: [record with its model per arm]}: the self-training teacher
    and the student's start are among them."""
    results, trained = [], {}
    for fraction in FRACTIONS:
        subset = labelled_subset(domain, domain_pixels, fraction, seed, "mnist-5k")
        candidates = []
        for init, probe in arms(encoders):
            model, fit = train_arm(settings, init, probe, encoders.get(init), (subset.images, subset.labels), (subset.val_images, subset.val_labels), len(subset.class_names), seed)
            val_accuracy = float((predict_probabilities(model, torch.from_numpy(subset.val_images), FINETUNE_AUGMENT).argmax(1) == subset.val_labels).mean())
            record = SimpleNamespace(class_names=subset.class_names, init=init, probe=probe, label_fraction=fraction, seed=seed,
                                     num_labels=len(subset.labels), val_accuracy=val_accuracy, selectable=True, model=model)  # fmt: skip
            candidates.append(record)
            rows = _scored(model, record, eval_sets, fit)
            results += rows
            print(f"seed {seed} {init:13s} {probe:8s} {fraction:5g}: in-domain {_accuracy(rows, 'in_domain'):.4f}  optdigits {_accuracy(rows, 'shift'):.4f}", flush=True)
        trained[fraction] = candidates
    return results, trained


def student_arm(settings: dict, domain, domain_pixels, trained: dict, eval_sets: list, seed: int) -> tuple[list[dict], list[dict]]:
    """A FixMatch student per fraction, continuing the top rung's (case pairs) fine-tuned model, judged against that
    fraction's best model on val by the pipeline's rule (sslflow.evaluation.select_best): (result rows like
    ablation's, pseudo-label quality reports)."""
    top = ladder_arms(settings["simclr"].method)[-1]
    results, reports = [], []
    for fraction, candidates in sorted(trained.items()):
        if fraction > settings["self_train"].max_label_fraction:
            continue
        teacher, start = select_best(candidates), student_start(candidates, top)
        arm = f"{teacher.init} {teacher.probe}"
        data = self_training_data(domain, lambda rows: domain_pixels[rows], fraction, seed, "mnist-5k", max_pool_images=settings["self_train"].max_pool_images)
        outcome = run_self_training(teacher.model, start.model, data, dataclasses.replace(settings["self_train"], seed=seed))
        reports.append({"label_fraction": fraction, "seed": seed, "teacher": arm, **outcome.report})
        record = SimpleNamespace(class_names=data.class_names, init=student_arm_of(top), probe="finetune", label_fraction=fraction, seed=seed, num_labels=len(data.labels),
                                 val_accuracy=outcome.report["student_val_accuracy"], selectable=bool(outcome.report["student_beats_teacher"]))  # fmt: skip
        results += _scored(outcome.student, record, eval_sets, {})
        print(f"seed {seed} student {fraction:5g} (teacher {arm}): mask rate {outcome.report['mask_rate']:.3f}, pseudo-label accuracy {outcome.report['pseudo_label_accuracy']:.4f}, val gain {outcome.report['student_gain']:+.4f}", flush=True)
    return results, reports


def self_training_summary(results: list[dict], reports: list[dict], method: str) -> dict:
    """{"fraction/seed": pseudo-label quality and the student's gain over its teacher on val and on the in-domain test split}."""

    def test_accuracy(arm: str, fraction: float, seed: int) -> float:
        rows = (r for r in results if f"{r['init']} {r['probe']}" == arm and (r["label_fraction"], r["seed"], r["eval_set"]) == (fraction, seed, "in_domain"))
        return next((r["accuracy"] for r in rows), math.nan)  # no student: no row

    keys = ("teacher", "coverage", "pseudo_label_accuracy", "ece", "mask_rate", "pseudo_labelled", "teacher_val_accuracy", "student_val_accuracy", "student_gain")
    return {
        f"{r['label_fraction']:g}/seed={r['seed']}": {
            **{k: r[k] for k in keys},
            "student_test_gain": test_accuracy(f"{student_arm_of(ladder_arms(method)[-1])} finetune", r["label_fraction"], r["seed"]) - test_accuracy(r["teacher"], r["label_fraction"], r["seed"]),
        }
        for r in reports
    }  # fmt: skip


def _per_seed(results: list[dict], init: str, probe: str, fraction: float, eval_set: str = "in_domain") -> list[float]:
    rows = [r for r in results if (r["init"], r["probe"], r["label_fraction"], r["eval_set"]) == (init, probe, fraction, eval_set)]
    return [r["accuracy"] for r in sorted(rows, key=lambda r: r["seed"])]


def compare(results: list[dict], method: str) -> dict:
    """{comparison: {"ours", "theirs": "mean ± half-width", "verdict"}}: a gain only when the 95% intervals separate.
    "ssl" is the top rung of ``method``'s ladder (case pairs); each ladder step is compared with the rung below."""
    top = ladder_arms(method)[-1]

    def drop(init: str) -> list[float]:
        return [a - b for a, b in zip(_per_seed(results, init, "finetune", 1.0), _per_seed(results, init, "finetune", 1.0, "shift"))]

    pairs = {
        "ssl_at_1pct_vs_scratch_at_10pct": (_per_seed(results, top, "finetune", 0.01), _per_seed(results, "scratch", "finetune", 0.1), True),
        "ssl_at_10pct_vs_scratch_at_100pct": (_per_seed(results, top, "finetune", 0.1), _per_seed(results, "scratch", "finetune", 1.0), True),
        "shift_drop_ssl_vs_scratch_at_100pct": (drop(top), drop("scratch"), False),
    }
    for probe in ("linear", "finetune"):
        for fraction in FRACTIONS:
            for ours, theirs, _ in ladder_steps(method):  # simclr: domain_simclr_vs_simclr, micle_pairs_vs_domain_simclr
                name = f"{_step_name(ours, method)}_vs_{_step_name(theirs, method)}"
                pairs[f"{name}_{probe}_{fraction:g}"] = (_per_seed(results, ours, probe, fraction), _per_seed(results, theirs, probe, fraction), True)
    comparisons = {}
    for name, (ours, theirs, higher_is_better) in pairs.items():
        ours_interval, theirs_interval = t_interval(ours), t_interval(theirs)
        comparisons[name] = {"ours": str(ours_interval), "theirs": str(theirs_interval), "verdict": verdict(ours_interval, theirs_interval, higher_is_better=higher_is_better)}
    drops = {init: t_interval(drop(init)).mean for init in (top, "scratch")}
    comparisons["shift_drop_ssl_vs_scratch_at_100pct"]["target_met"] = drops[top] <= 0.5 * drops["scratch"]  # Q2, on the means
    return comparisons


def _step_name(init: str, method: str) -> str:
    """A ladder arm in the comparison names of earlier results: "simclr" -> "simclr", "simclr+domain" ->
    "domain_simclr", "simclr+micle" -> "micle_pairs" (for SimCLR; the method's name for another)."""
    rung = LADDER[ladder_arms(method).index(init)]
    return {"generic": method, "domain": f"domain_{method}", "case_pairs": "micle_pairs"}[rung.name]


def floor_checks(results: list[dict]) -> dict:
    """Is the pixels floor monotone in labels (each mean at least the previous interval's low end)? Did every probe converge?"""
    floor = [t_interval(_per_seed(results, "pixels", "linear", fraction)) for fraction in FRACTIONS]
    probes = [r for r in results if r["probe"] == "linear" and r["eval_set"] == "in_domain"]
    return {
        "pixels_floor_in_domain": [str(interval) for interval in floor],
        "pixels_floor_monotone": all(later.mean >= earlier.low for earlier, later in zip(floor, floor[1:])),
        "all_probes_converged": all(r["probe_converged"] for r in probes),
    }


def run_seeds(settings: dict, encoders: dict, domain, domain_pixels, eval_sets: list) -> tuple[list[dict], list[dict]]:
    """(result rows of every arm and student, pseudo-label reports) over the settings' seeds."""
    results, reports = [], []
    for seed in settings.get("seeds", SEEDS):
        rows, trained = ablation(settings, encoders, domain, domain_pixels, eval_sets, seed)
        student_rows, seed_reports = student_arm(settings, domain, domain_pixels, trained, eval_sets, seed)
        results, reports = results + rows + student_rows, reports + seed_reports
    return results, reports


def main() -> None:
    args = parse_arguments(__doc__, "--cpu-budget", {"--smoke": "tiny settings, one seed: to check that the script works"})
    mode = "smoke" if args.smoke else "cpu-budget" if args.cpu_budget else "gpu"
    settings = SETTINGS[mode]
    started = time.perf_counter()

    generic, generic_pixels = dataset("fashion-mnist", IngestConfig(max_images=settings["generic_images"]))
    domain, domain_pixels = dataset("mnist-5k", IngestConfig(proxy_cases=True, max_images=settings.get("domain_images", 0)))
    shift, shift_pixels = dataset("optdigits", IngestConfig(all_test=True, max_images=settings.get("shift_images", 0)))
    pretrained = pretrain_encoders(settings, generic, generic_pixels, domain, domain_pixels)

    class_names = labelled_subset(domain, domain_pixels, 1.0, 0, "mnist-5k").class_names
    eval_sets = evaluation_sets((domain, domain_pixels), (shift, shift_pixels), class_names, names=("mnist-5k", "optdigits"))
    results, reports = run_seeds(settings, {"pixels": None, "scratch": None, **pretrained}, domain, domain_pixels, eval_sets)

    comparisons, floor = compare(results, settings["simclr"].method), floor_checks(results)
    for name, comparison in comparisons.items():
        print(f"{name}: {comparison['ours']} vs {comparison['theirs']} -> {comparison['verdict']}")
    print(json.dumps(floor))
    label_efficiency = label_efficiency_comparisons(pd.DataFrame(results))
    print("\n".join(comparison_lines(label_efficiency)))
    settings_record = {k: (dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v) for k, v in settings.items()}
    path = write_result("quality" + ("" if mode == "gpu" else f"-{mode}"), {
        "settings": settings_record, "case_ids": "PROXY (pixel-neighbour pairs; MNIST has no patients)",
        "seeds": list(settings.get("seeds", SEEDS)), "comparisons": comparisons, "floor": floor, "label_efficiency": label_efficiency,
        "self_training": self_training_summary(results, reports, settings["simclr"].method), "pseudo_label_reports": reports, "results": results,
        "wall_seconds": time.perf_counter() - started,
    }, args.out)  # fmt: skip
    print(f"saved {path}")


if __name__ == "__main__":
    main()

"""How many labels self-supervision saves, measured the way the pipeline measures it, at six label fractions and
several seeds: the label-savings curve, its controls and its headline, without Flyte or MLflow.

The protocol (the pipeline's functions, larger settings):
- per seed, pretraining from that seed: generic SimCLR on Fashion-MNIST, then the ladder's top rung, MICLe on
  MNIST-5k continued from it (PROXY cases: pixel neighbours; MNIST has no patients). The seeds vary pretraining as
  well as fine-tuning;
- at each fraction the label budget (sslflow.training.labelled_subset): training fold + validation fold, both
  counted as labels used; every choice is made on the validation fold;
- arms: pixels (linear probe), scratch (fine-tuned), the ladder's rungs of the settings' ``rungs`` (on 2 CPU cores
  the top rung only; linear probe and fine-tuned), and up to max_label_fraction two FixMatch students: the top
  rung's and the control, scratch's
  (sslflow.training.student.student_starts). Every fine-tuned arm gets the same search (learning_rates x
  weight_decays) on its own validation fold, no head warm-up, and a step budget that early stopping ends;
- scored on the MNIST test split and optdigits (the shift set); the corruption suite is left to the pipeline;
- the curves (sslflow/reporting/curves.py) and the headline "labels saved" against scratch, scratch + student and
  the best arm without self-supervision, with 95% intervals from a bootstrap over test cases and seeds; the paired
  comparisons of sslflow/reporting/comparisons.py. Per-image outcomes (``correct``, ``cases``) are in the JSON, so
  any interval can be recomputed.

    python benchmarks/quality.py                 # GPU: all 70k Fashion-MNIST, ResNet-18, long schedules
    python benchmarks/quality.py --cpu-budget    # small_cnn, 2 CPU cores, 3 seeds, about an hour; JSON written per seed
    python benchmarks/quality.py --smoke         # a minute of tiny settings, one seed: the script works (tests use it)
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import parse_arguments, write_result
from ssl_models.data import InMemoryPairs
from ssl_models.encoders import build_encoder
from ssl_models.finetuning import FinetuneConfig, finetune, validation_scores
from ssl_models.fixmatch import SelfTrainConfig
from ssl_models.pretraining import PretrainConfig, pretrain_contrastive
from sslflow.config import IngestConfig
from sslflow.data.chunks import ingest_source
from sslflow.data.dataset import read_images
from sslflow.evaluation import evaluate_classifier, evaluation_sets, in_domain_test_cases
from sslflow.ladder import LADDER, PIXELS_ARM, PIXELS_ENCODER, SCRATCH_ARM, arm, student_arm
from sslflow.reporting.comparisons import comparison_lines, label_efficiency_comparisons
from sslflow.reporting.curves import headlines, savings_curves
from sslflow.reporting.label_savings import savings_curve_figure
from sslflow.training.fit import fit_summary
from sslflow.training.labelled_subset import labelled_subset
from sslflow.training.student import run_self_training, self_training_data, student_starts

SEARCH = dict(learning_rates=[1e-3, 3e-3], weight_decays=[1e-4, 1e-2])
SETTINGS = {
    "gpu": dict(
        encoder="resnet18",
        generic_images=0,
        generic_pretraining=PretrainConfig(epochs=100, batch_size=512, learning_rate=1e-3),
        domain_pretraining=PretrainConfig(epochs=200, batch_size=512, learning_rate=1e-3),
        finetune=FinetuneConfig(epochs=30, min_steps=300, **SEARCH),
        self_train=SelfTrainConfig(steps=2000, batch_size=64, unlabelled_ratio=7),
    ),
    "cpu-budget": dict(
        encoder="small_cnn",
        generic_images=6000,
        generic_pretraining=PretrainConfig(epochs=4),
        domain_pretraining=PretrainConfig(epochs=6),
        finetune=FinetuneConfig(epochs=4, min_steps=100, eval_every=10, patience=3, **SEARCH),
        self_train=SelfTrainConfig(steps=150, max_label_fraction=0.05),
        fractions=(0.01, 0.02, 0.03, 0.05, 0.1, 1.0),
        rungs=("case_pairs",),
    ),
    "smoke": dict(
        encoder="small_cnn",
        generic_images=200,
        domain_images=400,
        shift_images=100,
        generic_pretraining=PretrainConfig(epochs=1, batch_size=128),
        domain_pretraining=PretrainConfig(epochs=1, batch_size=128),
        finetune=FinetuneConfig(epochs=1, min_steps=2, learning_rates=[1e-3, 3e-3], probe_inverse_l2=[1.0]),
        self_train=SelfTrainConfig(steps=2, eval_every=2, confidence_threshold=0.0, max_label_fraction=0.1),
        seeds=(0, 1),
        fractions=(0.1, 1.0),
    ),
}
FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
SEEDS = (0, 1, 2)  # each seed: pretraining, label budget, heads, batch order, augmentations, students
TARGETS = {"scratch": 10.0, "scratch + student": 3.0, "best without self-supervision": 3.0}  # labels saved aimed at


def dataset(source: str, config: IngestConfig):
    """(manifest, images (N, C, H, W) uint8 in its row order) of ``source``, ingested as the pipeline ingests it
    (plan -> decode chunks -> join: sslflow/data/chunks.py) into a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="sslflow-quality-") as folder:
        _, manifest, _ = ingest_source(source, config, Path(folder) / "dataset")
        return manifest, read_images(Path(folder) / "dataset", manifest)


def pretrain_encoders(settings: dict, data: SimpleNamespace, seed: int) -> dict:
    """{arm: encoder}: the generic rung on the generic set and the top rung (case pairs) continued from it on the
    domain set, both from ``seed``; test splits unused."""
    method, top = settings["generic_pretraining"].method, LADDER[-1]
    generic_config, domain_config = (
        dataclasses.replace(settings["generic_pretraining"], seed=seed),
        dataclasses.replace(settings["domain_pretraining"], seed=seed),
    )
    generic = build_encoder(settings["encoder"], 1, 28, seed=seed)
    pool = data.generic["split"].isin(["train", "val"]).to_numpy()
    pretrain_contrastive(
        generic,
        InMemoryPairs(torch.from_numpy(data.generic_pixels[pool]), list(range(int(pool.sum()))), seed=seed),
        generic_config,
    )
    pool = data.domain["split"].isin(["train", "val"]).to_numpy()
    continued = copy.deepcopy(generic)
    pretrain_contrastive(
        continued,
        InMemoryPairs(torch.from_numpy(data.domain_pixels[pool]), data.domain.loc[pool, "case_id"].tolist(), seed=seed),
        domain_config,
    )
    return {arm(method, LADDER[0].name): generic, arm(method, top.name): continued}


def train_arm(settings: dict, init: str, probe: str, encoder, subset, seed: int) -> SimpleNamespace:
    """One arm on one label budget: the model and what evaluation reads of it (sslflow.evaluation.EvaluatedModel)."""
    config = dataclasses.replace(settings["finetune"], linear_probe=probe == "linear", seed=seed)
    if encoder is None:
        encoder = build_encoder(PIXELS_ENCODER if init == PIXELS_ARM else settings["encoder"], 1, 28, seed=seed)
    validation = (torch.from_numpy(subset.val_images), subset.val_labels)
    model, history = finetune(
        copy.deepcopy(encoder),
        torch.from_numpy(subset.images),
        subset.labels,
        len(subset.class_names),
        config,
        validation=validation,
    )
    val_accuracy, val_loss = validation_scores(model, *validation, config.augment)
    fit = fit_summary(history[-1])
    return SimpleNamespace(
        class_names=subset.class_names,
        init=init,
        probe=probe,
        seed=seed,
        num_labels=len(subset.labels),
        num_val_labels=len(subset.val_labels),
        val_accuracy=val_accuracy,
        val_loss=val_loss,
        selectable=True,
        chosen=fit.chosen,
        best_step=fit.best_step,
        final_train_accuracy=fit.final_train_accuracy,
        best_at_budget_end=fit.best_at_budget_end,
        model=model,
    )


def _scored(record: SimpleNamespace, fraction: float, data: SimpleNamespace) -> list[dict]:
    """The pipeline's scoring (sslflow.evaluation.evaluate_classifier) of one model, with where it stopped."""
    record.label_fraction = fraction
    rows, _ = evaluate_classifier(record.model, record, data.eval_sets, data.cases)
    print(
        f"seed {record.seed} {record.init:22s} {record.probe:8s} {fraction:5g} ({record.num_labels} + "
        f"{record.num_val_labels} labels, {record.chosen},"
        f" best step {record.best_step}): in-domain {rows[0]['accuracy']:.4f}",
        flush=True,
    )
    return [{**row, "best_at_budget_end": getattr(record, "best_at_budget_end", False)} for row in rows]


def ablation(settings: dict, encoders: dict, data: SimpleNamespace, seed: int) -> tuple[list[dict], dict]:
    """Every arm at every fraction for one seed (the encoders of the settings' ``rungs``, all without); also
    {fraction: the trained records} for the students."""
    results, trained = [], {}
    method, rungs = settings["generic_pretraining"].method, settings.get("rungs", [rung.name for rung in LADDER])
    tried = [init for init in encoders if init in [arm(method, rung) for rung in rungs]]
    arms = [(PIXELS_ARM, "linear"), (SCRATCH_ARM, "finetune")] + [
        (init, probe) for init in tried for probe in ("linear", "finetune")
    ]
    for fraction in settings.get("fractions", FRACTIONS):
        subset = labelled_subset(data.domain, data.domain_pixels, fraction, seed, "mnist-5k")
        trained[fraction] = []
        for init, probe in arms:
            record = train_arm(settings, init, probe, encoders.get(init), subset, seed)
            results += _scored(record, fraction, data)
            trained[fraction].append(record)
    return results, trained


def students(
    settings: dict, top: str, trained: dict, data: SimpleNamespace, seed: int
) -> tuple[list[dict], list[dict]]:
    """Up to max_label_fraction, the top rung's student and scratch's (sslflow.training.student.student_starts):
    (result rows, pseudo-label quality reports)."""
    config = dataclasses.replace(settings["self_train"], seed=seed)
    results, reports = [], []
    for fraction, candidates in sorted(trained.items()):
        if fraction > config.max_label_fraction:
            continue
        parts = self_training_data(
            data.domain,
            lambda rows: data.domain_pixels[rows],
            fraction,
            seed,
            "mnist-5k",
            max_pool_images=config.max_pool_images,
        )
        for start, teacher in student_starts(candidates, top):
            outcome = run_self_training(teacher.model, start.model, parts, config)
            report = outcome.report
            reports.append(
                {
                    "label_fraction": fraction,
                    "seed": seed,
                    "start": start.init,
                    "teacher": f"{teacher.init} {teacher.probe}",
                    **report,
                }
            )
            record = SimpleNamespace(
                class_names=parts.class_names,
                init=student_arm(start.init),
                probe="finetune",
                seed=seed,
                num_labels=len(parts.labels),
                num_val_labels=len(parts.val_labels),
                val_accuracy=report["student_val_accuracy"],
                val_loss=report["student_val_loss"],
                selectable=bool(report["student_beats_teacher"]),
                chosen=f"threshold={config.confidence_threshold:g}",
                best_step=int(report["best_step"]),
                final_train_accuracy=report["final_train_accuracy"],
                model=outcome.student,
            )
            results += _scored(record, fraction, data)
    return results, reports


def load_data(settings: dict) -> SimpleNamespace:
    """The three datasets as the pipeline ingests them, the evaluation sets (in-domain test and shift) and the case
    of each in-domain test image."""
    generic, generic_pixels = dataset("fashion-mnist", IngestConfig(max_images=settings["generic_images"]))
    domain, domain_pixels = dataset(
        "mnist-5k", IngestConfig(proxy_cases=True, max_images=settings.get("domain_images", 0))
    )
    shift, shift_pixels = dataset("optdigits", IngestConfig(all_test=True, max_images=settings.get("shift_images", 0)))
    class_names = labelled_subset(domain, domain_pixels, 1.0, 0, "mnist-5k").class_names
    sets = evaluation_sets((domain, domain_pixels), (shift, shift_pixels), class_names, names=("mnist-5k", "optdigits"))
    return SimpleNamespace(
        generic=generic,
        generic_pixels=generic_pixels,
        domain=domain,
        domain_pixels=domain_pixels,
        eval_sets=[s for s in sets if s[1] in ("in_domain", "shift")],
        cases=in_domain_test_cases((domain, domain_pixels)),
    )


def summary(results: list[dict]) -> dict:
    """The curves, the headlines against their targets, the paired comparisons, and how many fits stopped at the end
    of their budget."""
    table = pd.DataFrame(results)
    fitted = table[
        (table["eval_set"] == "in_domain") & (table["probe"] == "finetune") & ~table["init"].str.endswith("+student")
    ]
    return {
        "curves": savings_curves(table),
        "labels_saved": headlines(table, TARGETS),
        "comparisons": label_efficiency_comparisons(table),
        "fine_tunes_best_at_budget_end": f"{int(fitted['best_at_budget_end'].sum())} of {len(fitted)}",
    }


def main() -> None:
    args = parse_arguments(__doc__, "--cpu-budget", {"--smoke": "tiny settings: to check that the script works"})
    mode = "smoke" if args.smoke else "cpu-budget" if args.cpu_budget else "gpu"
    settings, started = SETTINGS[mode], time.perf_counter()
    data = load_data(settings)
    results, reports, top = [], [], arm(settings["generic_pretraining"].method, LADDER[-1].name)
    settings_record = {k: (dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v) for k, v in settings.items()}
    for seed in settings.get("seeds", SEEDS):
        encoders = pretrain_encoders(settings, data, seed)
        rows, trained = ablation(settings, encoders, data, seed)
        student_rows, seed_reports = students(settings, top, trained, data, seed)
        results, reports = results + rows + student_rows, reports + seed_reports
        found = summary(results)
        name = "quality" + ("" if mode == "gpu" else f"-{mode}")
        path = write_result(
            name,
            {
                "settings": settings_record,
                "case_ids": "PROXY (pixel-neighbour pairs; MNIST has no patients)",
                "targets": TARGETS,
                "seeds_done": sorted({row["seed"] for row in results}),
                **found,
                "pseudo_label_reports": reports,
                "results": results,
                "wall_seconds": time.perf_counter() - started,
            },
            args.out,
        )
        seeds_done = sorted({row["seed"] for row in results})
        path.with_suffix(".png").write_bytes(
            savings_curve_figure(
                found["curves"], f"MNIST-5k test accuracy against labels used ({len(seeds_done)} seeds)"
            )
        )
        print(json.dumps({"seeds_done": seeds_done, "labels_saved": found["labels_saved"]}, indent=1), flush=True)
        print("\n".join(comparison_lines(found["comparisons"])), flush=True)
        print(f"saved {path}", flush=True)


if __name__ == "__main__":
    main()

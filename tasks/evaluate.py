"""evaluate: every fine-tuned model on the in-domain test split (and per site), the shift set, and a corruption suite.

Output: one row per (model, evaluation set) with accuracy, macro-F1, one-vs-rest AUC and expected
calibration error; per-class accuracy goes to the MLflow artifact ``per_class_accuracy.json``.
The report (label-efficiency curve, shift and corruption charts, tables) is a Flyte Deck and is
logged to MLflow as PNG, CSV and markdown.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from flytekit import Cache, Deck, Resources, task

from images.specs import cpu_image
from ssl_models.augment import FINETUNE_AUGMENT
from ssl_models.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from ssl_models.encoders import build_encoder
from ssl_models.evaluate import predict_probabilities
from ssl_models.heads import Classifier
from ssl_models.metrics import classification_metrics, per_class_accuracy
from tasks.artifacts import Dataset, FinetunedModel, read_dataset
from tasks.manifest import labelled_rows
from tasks.evaluation_report import report_figures, report_html, results_markdown
from tasks.tracking import stage_run

METRICS = ["accuracy", "macro_f1", "auc_ovr", "ece"]
# The corruption suite (15 sets) dominates evaluation time on a CPU: it runs on a fixed random subset of
# the in-domain test split of at most this many images (all of it when smaller).
CORRUPTION_IMAGES = 512
RESULT_COLUMNS = ["init", "probe", "label_fraction", "num_labels", "eval_set", "eval_kind", "images", *METRICS, "val_accuracy"]


def load_classifier(model: FinetunedModel) -> Classifier:
    classifier = Classifier(build_encoder(model.encoder_name, model.in_channels, model.image_size), len(model.class_names))
    classifier.load_state_dict(torch.load(model.checkpoint.download(), map_location="cpu", weights_only=True))
    return classifier.eval()


def model_accuracy(results: pd.DataFrame, model: FinetunedModel, eval_set: str) -> float:
    """The accuracy of ``model`` on ``eval_set`` ("in_domain", "shift", ...) from evaluate's table."""
    rows = results[
        (results["init"] == model.init) & (results["probe"] == model.probe)
        & (results["label_fraction"] == model.label_fraction) & (results["eval_set"] == eval_set)
    ]  # fmt: skip
    if len(rows) != 1:
        raise ValueError(f"expected one result for {model.init}/{model.probe}@{model.label_fraction:g} on {eval_set}, found {len(rows)}")
    return float(rows["accuracy"].iloc[0])


def _labelled_test_split(dataset: Dataset, class_names: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images (N, C, H, W) uint8, class indices (N,), sites (N,)) of the dataset's labelled test rows."""
    images, labels, sites = labelled_rows(*read_dataset(dataset), "test")
    unknown = sorted(set(labels) - set(class_names))
    if unknown:
        raise ValueError(f"dataset {dataset.name}: test labels {unknown} were never seen in training (classes {class_names})")
    index = {name: i for i, name in enumerate(class_names)}
    return images, np.array([index[label] for label in labels]), sites


def evaluation_sets(in_domain: Dataset, shift: Dataset, class_names: list[str]) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """(name, kind, images, labels) for: in-domain test, each site of it (if several), the shift set, and each
    corruption x severity of (at most CORRUPTION_IMAGES of) the in-domain test split."""
    images, labels, sites = _labelled_test_split(in_domain, class_names)
    sets = [("in_domain", "in_domain", images, labels)]
    if len(set(sites)) > 1:
        sets += [(f"in_domain/site={site}", "site", images[sites == site], labels[sites == site]) for site in sorted(set(sites))]
    shift_images, shift_labels, _ = _labelled_test_split(shift, class_names)
    sets.append(("shift", "shift", shift_images, shift_labels))
    subset = np.sort(np.random.default_rng(0).permutation(len(labels))[:CORRUPTION_IMAGES])
    pixels = torch.from_numpy(images[subset])
    for name in CORRUPTIONS:
        for severity in SEVERITIES:
            sets.append((f"{name}@{severity}", "corruption", corrupt(pixels, name, severity).numpy(), labels[subset]))
    return sets


@task(cache=Cache(version="3", ignored_inputs=("parent_run_id",)), container_image=cpu_image, requests=Resources(cpu="2", mem="8Gi"), enable_deck=True)
def evaluate(models: list[FinetunedModel], in_domain: Dataset, shift: Dataset, parent_run_id: str) -> pd.DataFrame:
    """One row per (model, evaluation set); see RESULT_COLUMNS."""
    rows, per_class = [], {}
    with stage_run(parent_run_id, "evaluate", {"in_domain": in_domain.name, "shift": shift.name, "corruptions": list(CORRUPTIONS)}):
        sets = evaluation_sets(in_domain, shift, models[0].class_names)
        for model in models:
            classifier = load_classifier(model)
            for eval_set, kind, images, labels in sets:
                probabilities = predict_probabilities(classifier, torch.from_numpy(images), FINETUNE_AUGMENT)
                metrics = classification_metrics(probabilities, labels)
                rows.append(
                    {"init": model.init, "probe": model.probe, "label_fraction": model.label_fraction, "num_labels": model.num_labels,
                     "eval_set": eval_set, "eval_kind": kind, "images": len(labels), **metrics, "val_accuracy": model.val_accuracy}
                )  # fmt: skip
                if kind in ("in_domain", "shift"):
                    key = f"{model.init}/{model.probe}@{model.label_fraction:g}/{eval_set}"
                    per_class[key] = {model.class_names[c]: acc for c, acc in per_class_accuracy(probabilities, labels).items()}
        results = pd.DataFrame(rows, columns=RESULT_COLUMNS)
        figures = report_figures(results)
        Deck("evaluation", report_html(results, figures))
        with tempfile.TemporaryDirectory() as folder:
            for name, png in figures.items():
                (Path(folder) / f"{name}.png").write_bytes(png)
            mlflow.log_artifacts(folder, "charts")
        mlflow.log_text(results.to_csv(index=False), "results.csv")
        mlflow.log_text(results_markdown(results), "results.md")
        mlflow.log_text(json.dumps(per_class, indent=1), "per_class_accuracy.json")
        headline = results[results["eval_kind"].isin(["in_domain", "shift"])]
        for row in headline.itertuples():
            mlflow.log_metric(f"{row.init}_{row.probe}_{row.label_fraction:g}_{row.eval_set}_accuracy".replace("+", "_"), row.accuracy)
    return results


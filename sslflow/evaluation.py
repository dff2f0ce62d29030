"""Evaluation of fine-tuned classifiers: in-domain test split (and per site), shift set, corruption suite.

One result row per (model, evaluation set) with accuracy, macro-F1, one-vs-rest AUC and expected
calibration error (RESULT_COLUMNS), and on the in-domain test split which images the model got right
(``correct``: for a paired comparison of two models on the same images, sslflow/reporting/intervals.py);
per-class accuracy separately. Test splits are only reported:
model selection happens on validation data (sslflow/registry/registration.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import pandas as pd
import torch
from torch import nn

from ssl_models.augment import FINETUNE_AUGMENT
from ssl_models.corruptions import CORRUPTIONS, corrupt
from ssl_models.evaluate import extract_features, knn_accuracy, predict_probabilities
from ssl_models.metrics import classification_metrics, per_class_accuracy
from sslflow.config import EvaluationConfig
from sslflow.data.labels import class_indices
from sslflow.data.manifest import labelled_rows
from sslflow.training.labelled_subset import labelled_subset
from sslflow.training.selection import select_best  # noqa: F401  (the selection rule, re-exported beside evaluation)

METRICS = ["accuracy", "macro_f1", "auc_ovr", "ece"]
# num_labels + val_labels: the labels a model used (its budget's training and validation folds); chosen, best_step and
# final_train_accuracy: what its search chose on validation and where it stopped; correct and cases (in-domain test rows
# only): which images it got right and the case of each, for intervals that resample cases (sslflow/reporting/).
RESULT_COLUMNS = [
    "init",
    "probe",
    "label_fraction",
    "seed",
    "num_labels",
    "val_labels",
    "eval_set",
    "eval_kind",
    "images",
    *METRICS,
    "val_accuracy",
    "val_loss",
    "selectable",
    "chosen",
    "best_step",
    "final_train_accuracy",
    "correct",
    "cases",
]

EvaluationSet = tuple[str, str, np.ndarray, np.ndarray]  # (name, kind, images (N, C, H, W) uint8, class indices (N,))
DatasetTable = tuple[
    pd.DataFrame, np.ndarray
]  # (manifest, images (N, C, H, W) uint8 of its rows): tasks.shared.read_rows


class EvaluatedModel(Protocol):
    """What evaluation reads of a fine-tuned model (tasks.shared.FinetunedModel has it)."""

    class_names: list[str]
    init: str
    probe: str
    label_fraction: float
    seed: int
    num_labels: int
    num_val_labels: int
    val_accuracy: float
    val_loss: float
    selectable: bool  # False: a student that did not beat its teacher on validation (never chosen)
    chosen: str
    best_step: int
    final_train_accuracy: float


def pack_correct(correct: np.ndarray) -> str:
    """Which of N images a model got right, (N,) bool, as hex text (N / 4 characters; unpack_correct reverses it)."""
    return f"{len(correct)}:" + np.packbits(np.asarray(correct, dtype=bool)).tobytes().hex()


def unpack_correct(packed: str) -> np.ndarray:
    """(N,) bool from pack_correct's text."""
    count, bits = packed.split(":", 1)
    return np.unpackbits(np.frombuffer(bytes.fromhex(bits), dtype=np.uint8), count=int(count)).astype(bool)


def pack_cases(case_ids: np.ndarray) -> str:
    """The case of each of N images, (N,) ids of any type, as text: "N:" and each image's case number (cases numbered
    in order of first appearance), comma-separated; unpack_cases reverses it up to the numbering."""
    codes, _ = pd.factorize(pd.Series(case_ids).astype(str), sort=False)
    return f"{len(codes)}:" + ",".join(map(str, codes))


def unpack_cases(packed: str) -> np.ndarray:
    """(N,) int case numbers from pack_cases's text."""
    count, codes = packed.split(":", 1)
    cases = np.array([int(code) for code in codes.split(",")] if codes else [], dtype=np.int64)
    if len(cases) != int(count):
        raise ValueError(f"packed cases say {count} images but hold {len(cases)}")
    return cases


def in_domain_test_cases(in_domain: DatasetTable) -> np.ndarray:
    """(N,) the case id of each labelled in-domain test image, in the order of evaluation_sets' "in_domain" set."""
    manifest = in_domain[0]
    rows = ((manifest["split"] == "test") & manifest["label"].notna()).to_numpy()
    return manifest.loc[rows, "case_id"].astype(str).to_numpy()


def _labelled_test_split(
    dataset: DatasetTable, name: str, class_names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images (N, C, H, W) uint8, class indices (N,), sites (N,)) of a dataset's labelled test rows."""
    images, labels, sites = labelled_rows(*dataset, "test")
    return images, class_indices(labels, class_names, f"dataset {name} (test labels never seen in training)"), sites


def evaluation_sets(
    in_domain: DatasetTable,
    shift: DatasetTable,
    class_names: Sequence[str],
    *,
    names: tuple[str, str],
    config: EvaluationConfig = EvaluationConfig(),
) -> list[EvaluationSet]:
    """In-domain test, each site of it (if several), the shift set, and each corruption x config.severities of (at
    most config.corruption_images of: a fixed random subset) the in-domain test split. names: (in-domain, shift)
    dataset names for messages. The corruption suite dominates evaluation time on a CPU (15 sets by default)."""
    images, labels, sites = _labelled_test_split(in_domain, names[0], class_names)
    sets = [("in_domain", "in_domain", images, labels)]
    if len(set(sites)) > 1:
        sets += [
            (f"in_domain/site={site}", "site", images[sites == site], labels[sites == site])
            for site in sorted(set(sites))
        ]
    shift_images, shift_labels, _ = _labelled_test_split(shift, names[1], class_names)
    sets.append(("shift", "shift", shift_images, shift_labels))
    subset = np.sort(np.random.default_rng(0).permutation(len(labels))[: config.corruption_images])
    pixels = torch.from_numpy(images[subset])
    for name in CORRUPTIONS:
        for severity in config.severities:
            sets.append((f"{name}@{severity}", "corruption", corrupt(pixels, name, severity).numpy(), labels[subset]))
    return sets


def evaluate_classifier(
    classifier: nn.Module, model: EvaluatedModel, sets: list[EvaluationSet], cases: np.ndarray | None = None
) -> tuple[list[dict], dict]:
    """(result rows, {"init/probe@fraction/eval_set": {class name: accuracy}} for in-domain and shift). cases: (N,) the
    case of each in-domain test image (test_cases), packed into the in-domain row."""
    rows, per_class = [], {}
    packed_cases = None if cases is None else pack_cases(cases)
    for eval_set, kind, images, labels in sets:
        probabilities = predict_probabilities(classifier, torch.from_numpy(images), FINETUNE_AUGMENT)
        metrics = classification_metrics(probabilities, labels)
        rows.append(
            {
                "init": model.init,
                "probe": model.probe,
                "label_fraction": model.label_fraction,
                "seed": model.seed,
                "num_labels": model.num_labels,
                "val_labels": model.num_val_labels,
                "eval_set": eval_set,
                "eval_kind": kind,
                "images": len(labels),
                **metrics,
                "val_accuracy": model.val_accuracy,
                "val_loss": model.val_loss,
                "selectable": model.selectable,
                "chosen": model.chosen,
                "best_step": model.best_step,
                "final_train_accuracy": model.final_train_accuracy,
                "correct": pack_correct(probabilities.argmax(1) == labels) if kind == "in_domain" else None,
                "cases": packed_cases if kind == "in_domain" else None,
            }
        )
        if kind in ("in_domain", "shift"):
            key = f"{model.init}/{model.probe}@{model.label_fraction:g}/seed={model.seed}/{eval_set}"
            per_class[key] = {model.class_names[c]: acc for c, acc in per_class_accuracy(probabilities, labels).items()}
    return rows, per_class


KNN_COLUMNS = ["init", "probe", "label_fraction", "seed", "num_labels", "eval_set", "accuracy"]


def accuracy_metric_key(row) -> str:
    """The MLflow metric name of a results row's accuracy (a RESULT_COLUMNS or KNN_COLUMNS row, any object with
    init, probe, label_fraction, seed, eval_set): ``simclr_micle_linear_0.1_seed0_in_domain_accuracy``."""
    return f"{row.init}_{row.probe}_{row.label_fraction:g}_seed{row.seed}_{row.eval_set}_accuracy".replace("+", "_")


def knn_probe_row(
    encoder: nn.Module, model: EvaluatedModel, train: DatasetTable, test: tuple[np.ndarray, np.ndarray], *, name: str
) -> dict:
    """The kNN probe of a pretrained encoder beside the linear probe and the fine-tune: weighted kNN (k=200,
    temperature 0.1, on L2-normalised features; the protocol lightly and solo-learn report) with the model's
    labelled subset of the train split (same fraction and seed as its fine-tuning) as the memory bank, scored on
    the in-domain test images (N, C, H, W) uint8 and class indices (N,). train: (manifest, images) of the
    labelled train rows of dataset ``name``. One KNN_COLUMNS row."""
    subset = labelled_subset(*train, model.label_fraction, model.seed, name)
    bank_labels = torch.from_numpy(subset.labels)
    bank = extract_features(encoder, torch.from_numpy(subset.images), FINETUNE_AUGMENT)
    queries = extract_features(encoder, torch.from_numpy(test[0]), FINETUNE_AUGMENT)
    accuracy = knn_accuracy(bank, bank_labels, queries, torch.from_numpy(test[1]), k=200, temperature=0.1)
    return {
        "init": model.init,
        "probe": "knn",
        "label_fraction": model.label_fraction,
        "seed": model.seed,
        "num_labels": len(subset.labels),
        "eval_set": "in_domain",
        "accuracy": accuracy,
    }

"""evaluate: accuracy of every fine-tuned model on the in-domain test split and on the shift set."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import torch
from flytekit import Cache, Resources, task

from images.specs import cpu_image
from ssl_models.augment import FINETUNE_AUGMENT
from ssl_models.encoders import build_encoder
from ssl_models.evaluate import accuracy, predict_probabilities
from ssl_models.heads import Classifier
from tasks.artifacts import Dataset, FinetunedModel, read_dataset
from tasks.tracking import stage_run

RESULT_COLUMNS = ["init", "label_fraction", "num_labels", "eval_set", "images", "accuracy", "val_accuracy"]


def load_classifier(model: FinetunedModel) -> Classifier:
    classifier = Classifier(build_encoder(model.encoder_name, model.in_channels, model.image_size), len(model.class_names))
    classifier.load_state_dict(torch.load(model.checkpoint.download(), map_location="cpu", weights_only=True))
    return classifier.eval()


def _test_set(dataset: Dataset, class_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    manifest, images = read_dataset(dataset)
    rows = ((manifest["split"] == "test") & manifest["label"].notna()).to_numpy()
    labels = manifest.loc[rows, "label"].astype(str).to_numpy()
    unknown = sorted(set(labels) - set(class_names))
    if unknown:
        raise ValueError(f"dataset {dataset.name}: test labels {unknown} were never seen in training (classes {class_names})")
    index = {name: i for i, name in enumerate(class_names)}
    return images[rows], np.array([index[label] for label in labels])


def results_markdown(results: pd.DataFrame) -> str:
    """label fraction x {ssl, scratch} x eval set accuracy, as a markdown table."""
    table = results.pivot_table(index=["label_fraction", "num_labels"], columns=["init", "eval_set"], values="accuracy").sort_index()
    header = ["label fraction", "labels", *[f"{init} / {eval_set}" for init, eval_set in table.columns]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (fraction, labels), values in table.iterrows():
        lines.append("| " + " | ".join([f"{fraction:g}", str(int(labels)), *[f"{value:.4f}" for value in values]]) + " |")
    return "\n".join(lines)


@task(cache=Cache(version="1", ignored_inputs=("parent_run_id",)), container_image=cpu_image, requests=Resources(cpu="2", mem="8Gi"))
def evaluate(models: list[FinetunedModel], in_domain: Dataset, shift: Dataset, parent_run_id: str) -> pd.DataFrame:
    """One row per (model, eval set): the in-domain test split and the shift set."""
    rows = []
    with stage_run(parent_run_id, "evaluate", {"in_domain": in_domain.name, "shift": shift.name}):
        eval_sets = {name: _test_set(dataset, models[0].class_names) for name, dataset in (("in_domain", in_domain), ("shift", shift))}
        for model in models:
            classifier = load_classifier(model)
            for eval_set, (images, labels) in eval_sets.items():
                probabilities = predict_probabilities(classifier, torch.from_numpy(images), FINETUNE_AUGMENT)
                rows.append(
                    {
                        "init": model.init, "label_fraction": model.label_fraction, "num_labels": model.num_labels,
                        "eval_set": eval_set, "images": len(labels), "accuracy": accuracy(probabilities, labels),
                        "val_accuracy": model.val_accuracy,
                    }
                )  # fmt: skip
                mlflow.log_metric(f"{model.init}_{model.label_fraction:g}_{eval_set}_accuracy", rows[-1]["accuracy"])
        results = pd.DataFrame(rows, columns=RESULT_COLUMNS)
        mlflow.log_table(results, "results.json")
        mlflow.log_text(results.to_csv(index=False), "results.csv")
        mlflow.log_text(results_markdown(results), "results.md")
    return results

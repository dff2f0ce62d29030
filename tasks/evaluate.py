"""evaluate: every fine-tuned model on the in-domain test split (and per site), the shift set, and a
corruption suite (sslflow/evaluation.py); beside the linear probe and the fine-tune, the kNN probe of each
frozen pretrained encoder on the in-domain test split (knn_probe.csv and metrics in MLflow). The report
(label-efficiency curve, shift and corruption charts, a UMAP picture of the self-supervised features by label
and by site, tables) is a Flyte Deck
and is logged to MLflow as PNG (charts/), CSV and markdown.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from flytekit import Deck, Resources, task

from images.specs import cpu_image
from ssl_models.augment import FINETUNE_AUGMENT
from ssl_models.corruptions import CORRUPTIONS
from ssl_models.evaluate import extract_features
from sslflow.config import EvaluationConfig
from sslflow.data.manifest import labelled_rows
from sslflow.evaluation import (
    KNN_COLUMNS,
    RESULT_COLUMNS,
    EvaluationSet,
    accuracy_metric_key,
    evaluate_classifier,
    evaluation_sets,
    in_domain_test_cases,
    knn_probe_row,
)
from sslflow.ladder import arm_order, method_of
from sslflow.reporting.charts import EMBEDDING_MIN_POINTS, embedding_figure, report_figures
from sslflow.reporting.curves import savings_figure
from sslflow.reporting.html import evaluation_html
from sslflow.reporting.tables import results_markdown
from sslflow.tracking.runs import stage_run
from sslflow.training.model_files import load_classifier
from sslflow.training.progress import show_progress
from tasks.shared import (
    MLFLOW_SECRETS,
    REPORT_DECKS,
    Dataset,
    FinetunedModel,
    labelled_in,
    outages_are_recoverable,
    pipeline_cache,
    read_rows,
)

log = logging.getLogger(__name__)


def _labelled_test_rows(dataset: Dataset) -> tuple[pd.DataFrame, np.ndarray]:
    """(manifest, images (N, C, H, W) uint8) of the labelled test rows, the only ones scored: no other shard is
    fetched."""
    return read_rows(dataset, labelled_in("test"))


def _embedding(models: list[FinetunedModel], in_domain_test: tuple[pd.DataFrame, np.ndarray]) -> dict[str, bytes]:
    """{"embedding": PNG}: UMAP (seed 0) of a pretrained encoder's features of the labelled in-domain test images, by
    label and by site. The encoder is that of a linear probe, so it holds the self-supervised weights unchanged."""
    ladder = [
        m for m in models if m.probe == "linear" and method_of(m.init) is not None
    ]  # the top rung present is pictured
    probes = sorted(ladder, key=lambda m: arm_order(m.init), reverse=True)
    if not probes:
        return {}
    model = probes[0]
    classifier = load_classifier(
        model.checkpoint.download(), model.encoder_name, model.in_channels, model.image_size, len(model.class_names)
    )
    images, labels, sites = labelled_rows(*in_domain_test, "test")
    if len(labels) < EMBEDDING_MIN_POINTS:
        log.warning(
            "evaluate: no embedding picture: %d labelled in-domain test images, fewer than %d",
            len(labels),
            EMBEDDING_MIN_POINTS,
        )
        return {}
    features = extract_features(classifier.encoder, torch.from_numpy(images), FINETUNE_AUGMENT).numpy()
    log.info("evaluate: the UMAP picture of the %s encoder's features of %d test images", model.init, len(labels))
    return {
        "embedding": embedding_figure(
            features, labels, sites, f"{model.init} encoder features, in-domain test split (UMAP)"
        )
    }


def _knn_probes(models: list[FinetunedModel], in_domain: Dataset, sets: list[EvaluationSet]) -> pd.DataFrame:
    """KNN_COLUMNS rows: the kNN probe of every pretrained encoder that a linear probe kept frozen, its bank the
    probe's labelled subset of the train split (only those rows' shards are read)."""
    frozen = [model for model in models if model.probe == "linear" and method_of(model.init) is not None]
    if not frozen:
        return pd.DataFrame(columns=KNN_COLUMNS)
    train = read_rows(in_domain, labelled_in("train"))
    if len(train[0]) == 0:  # an evaluation-only dataset: nothing to put in the memory bank
        log.warning("evaluate: no kNN probe: dataset %s has no labelled train images", in_domain.name)
        return pd.DataFrame(columns=KNN_COLUMNS)
    test = next((images, labels) for name, _, images, labels in sets if name == "in_domain")
    rows = []
    log.info("evaluate: the kNN probe of %d frozen encoders", len(frozen))
    for model in frozen:
        classifier = load_classifier(
            model.checkpoint.download(), model.encoder_name, model.in_channels, model.image_size, len(model.class_names)
        )
        rows.append(knn_probe_row(classifier.encoder, model, train, test, name=in_domain.name))
    knn = pd.DataFrame(rows, columns=KNN_COLUMNS)
    mlflow.log_text(knn.to_csv(index=False), "knn_probe.csv")
    for row in knn.itertuples():
        mlflow.log_metric(accuracy_metric_key(row), row.accuracy)
    return knn


def _log_report(results: pd.DataFrame, per_class: dict, embedding: dict[str, bytes]) -> None:
    """The Deck and the MLflow artifacts (charts/, results.csv, results.md, per_class_accuracy.json) and metrics."""
    figures = {**report_figures(results), **savings_figure(results), **embedding}
    Deck("evaluation", evaluation_html(results, figures))
    with tempfile.TemporaryDirectory() as folder:
        for name, png in figures.items():
            (Path(folder) / f"{name}.png").write_bytes(png)
        mlflow.log_artifacts(folder, "charts")
    mlflow.log_text(results.to_csv(index=False), "results.csv")
    mlflow.log_text(results_markdown(results), "results.md")
    mlflow.log_text(json.dumps(per_class, indent=1), "per_class_accuracy.json")
    headline = results[results["eval_kind"].isin(["in_domain", "shift"])]
    for row in headline.itertuples():
        mlflow.log_metric(accuracy_metric_key(row), row.accuracy)


@task(
    cache=pipeline_cache("11"),
    container_image=cpu_image,
    requests=Resources(cpu="2", mem="8Gi"),
    **REPORT_DECKS,
    retries=2,
    secret_requests=MLFLOW_SECRETS,
)
@outages_are_recoverable
def evaluate(
    models: list[FinetunedModel],
    in_domain: Dataset,
    shift: Dataset,
    parent_run_id: str,
    config: EvaluationConfig = EvaluationConfig(),
) -> pd.DataFrame:
    """One row per (model, evaluation set); see sslflow.evaluation.RESULT_COLUMNS. config: the corruption suite."""
    rows, per_class = [], {}
    show_progress()
    with stage_run(
        parent_run_id,
        "evaluate",
        {
            "in_domain": in_domain.name,
            "shift": shift.name,
            "corruptions": list(CORRUPTIONS),
            "severities": list(config.severities),
            "corruption_images": config.corruption_images,
        },
    ):
        tables = tuple(_labelled_test_rows(data) for data in (in_domain, shift))
        sets = evaluation_sets(*tables, models[0].class_names, names=(in_domain.name, shift.name), config=config)
        cases = in_domain_test_cases(tables[0])
        log.info(
            "evaluate: %d models on %d sets (%d images)",
            len(models),
            len(sets),
            sum(len(labels) for *_, labels in sets),
        )
        for number, model in enumerate(models, 1):
            classifier = load_classifier(
                model.checkpoint.download(),
                model.encoder_name,
                model.in_channels,
                model.image_size,
                len(model.class_names),
            )
            model_rows, model_per_class = evaluate_classifier(classifier, model, sets, cases)
            log.info(
                "evaluate: model %d/%d %s %s@%g seed %d: in-domain accuracy %.4f",
                number,
                len(models),
                model.init,
                model.probe,
                model.label_fraction,
                model.seed,
                model_rows[0]["accuracy"],
            )
            rows += model_rows
            per_class.update(model_per_class)
        results = pd.DataFrame(rows, columns=RESULT_COLUMNS)
        _knn_probes(models, in_domain, sets)
        _log_report(results, per_class, _embedding(models, tables[0]))
    return results

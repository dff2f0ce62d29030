"""self_train: SimCLR v2's third step with a FixMatch student. At each label fraction a student continues the model
fine-tuned from the top rung's encoder and learns from the labelled images and, by FixMatch's consistency on
confident pseudo-labels, from the unlabelled domain pool (ssl_models/fixmatch.py, sslflow/training/student.py); the
best fine-tuned model (by validation score) at that fraction is the teacher it must beat. Beside it the control: the
same student continuing the model fine-tuned from scratch ("scratch+student"), which a user without self-supervised
pretraining would run; the difference between the two is what pretraining adds when a student follows.

The pseudo-label quality report (the label budget's validation fold only) is a Flyte Deck and MLflow artifacts. A
student that does not beat its teacher on validation is kept for evaluation but flagged not selectable for registration.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from flytekit import Deck, current_context, task
from flytekit.types.file import FlyteFile

from ssl_models.fixmatch import SelfTrainConfig
from sslflow.data.dataset import read_manifest
from sslflow.ladder import student_arm
from sslflow.reporting.pseudo_labels import (
    per_class_table,
    quality_chart,
    quality_html,
    quality_markdown,
    quality_table,
)
from sslflow.tracking.runs import stage_run
from sslflow.training.model_files import load_classifier, save_state_dict
from sslflow.training.progress import show_progress
from sslflow.training.student import run_self_training, self_training_data, student_starts
from tasks.shared import (
    REPORT_DECKS,
    Dataset,
    EncoderCheckpoint,
    FinetunedModel,
    dataset_without_shards,
    outages_are_recoverable,
    pipeline_cache,
    read_rows,
)
from tasks.training_pods import FINETUNE_TASK_SETTINGS, gpus_usable

log = logging.getLogger(__name__)


def _manifest_and_reader(domain: Dataset) -> tuple:
    """(the domain's manifest, read_images(rows) -> the images (len(rows), C, H, W) uint8 of the rows at those
    positions): only the rows self_training_data asks for are fetched and read, never the test split or the rest of the
    pool."""
    manifest = read_manifest(dataset_without_shards(domain)[0])

    def read_images(rows: np.ndarray) -> np.ndarray:
        return read_rows(domain, lambda table: pd.Series(np.isin(np.arange(len(table)), rows), index=table.index))[1]

    return manifest, read_images


def _classifier(model: FinetunedModel):
    return load_classifier(
        model.checkpoint.download(), model.encoder_name, model.in_channels, model.image_size, len(model.class_names)
    )


def _log_curve(history: list[dict]) -> None:
    """The student's training curve on its stage run, per step."""
    for record in history:
        curve = {
            "train_loss": record["loss"],
            "labelled_loss": record["labelled_loss"],
            "unlabelled_loss": record["unlabelled_loss"],
            "step_mask_rate": record["mask_rate"],
            "val_accuracy_at_step": record.get("val_accuracy"),
        }
        mlflow.log_metrics({k: v for k, v in curve.items() if v is not None}, step=record["step"])


def _train_student(
    data_source,
    teacher: FinetunedModel,
    start: FinetunedModel,
    domain_name: str,
    seed: int,
    config: SelfTrainConfig,
    parent_run_id: str,
) -> tuple[FinetunedModel, dict]:
    """One student at the teacher's label fraction, continuing ``start`` (its arm: start's init + "+student"); its
    report gains label_fraction, seed, teacher and start."""
    fraction, arm = teacher.label_fraction, student_arm(start.init)
    data = self_training_data(*data_source, fraction, seed, domain_name, max_pool_images=config.max_pool_images)
    params = {
        "config": config,
        "label_fraction": fraction,
        "start.init": start.init,
        "start.sha256": start.content_sha256,
    }
    params |= {"teacher.init": teacher.init, "teacher.probe": teacher.probe, "teacher.sha256": teacher.content_sha256}
    with stage_run(parent_run_id, f"self_train:{arm}@{fraction:g}/seed={seed}", params) as run:
        sizes = len(data.labels), len(data.val_labels), len(data.pool_images)
        log.info("self-training %s at %g (seed %d): %d labelled + %d val, %d pool images", arm, fraction, seed, *sizes)
        seeded = dataclasses.replace(config, seed=seed)  # the seed of its teacher
        result = run_self_training(_classifier(teacher), _classifier(start), data, seeded)
        _log_curve(result.history)
        report = {"label_fraction": fraction, "seed": seed, "teacher": f"{teacher.init} {teacher.probe}"}
        report |= {"start": start.init, **result.report}
        numbers = {k: float(v) for k, v in report.items() if isinstance(v, (int, float)) and k != "label_fraction"}
        mlflow.log_metrics(numbers)
        mlflow.log_text(json.dumps(report, indent=1), "pseudo_label_quality.json")
        work = Path(current_context().working_directory)
        path, sha256 = save_state_dict(result.student, work, "student", "classifier.pt")
        mlflow.log_artifact(str(path), artifact_path="checkpoint")
    student = FinetunedModel(
        checkpoint=FlyteFile(str(path)),
        encoder_name=start.encoder_name,
        in_channels=start.in_channels,
        image_size=start.image_size,
        class_names=data.class_names,
        init=arm,
        probe="finetune",
        label_fraction=fraction,
        num_labels=len(data.labels),
        val_accuracy=report["student_val_accuracy"],
        content_sha256=sha256,
        mlflow_run_id=run.info.run_id,
        selectable=bool(report["student_beats_teacher"]),
        seed=seed,
        num_val_labels=len(data.val_labels),
        val_loss=report["student_val_loss"],
        chosen=f"threshold={config.confidence_threshold:g}",
        best_step=int(report["best_step"]),
        final_train_accuracy=report["final_train_accuracy"],
        initial_weights=start.initial_weights,
        initial_weights_sha256=start.initial_weights_sha256,
    )
    return student, report


def _log_report(reports: list[dict]) -> None:
    """The Deck and the MLflow artifacts: pseudo_labels.md/.csv, pseudo_labels_per_class.csv,
    charts/pseudo_labels.png."""
    chart = quality_chart(reports)
    Deck("self-training", quality_html(reports, chart))
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "pseudo_labels.png").write_bytes(chart)
        mlflow.log_artifacts(folder, "charts")
    mlflow.log_text(quality_markdown(reports), "pseudo_labels.md")
    mlflow.log_text(quality_table(reports).to_csv(index=False), "pseudo_labels.csv")
    mlflow.log_text(per_class_table(reports).to_csv(index=False), "pseudo_labels_per_class.csv")


@task(cache=pipeline_cache("8"), **REPORT_DECKS, **FINETUNE_TASK_SETTINGS)
@gpus_usable
@outages_are_recoverable
def self_train(
    models: list[FinetunedModel],
    domain: Dataset,
    encoder: EncoderCheckpoint,
    config: SelfTrainConfig,
    parent_run_id: str,
) -> list[FinetunedModel]:
    """``models`` followed by two FixMatch students per label fraction up to config.max_label_fraction: one continuing
    the model fine-tuned from ``encoder`` (the top rung), judged against the fraction's best model on validation, and
    the control, one continuing the model fine-tuned from scratch, judged against the best model without
    self-supervision (sslflow.training.student.student_starts).

    Each fine-tuning seed (FinetunedModel.seed) has its own teachers and students, on that seed's label budget.
    """
    show_progress()
    data_source = _manifest_and_reader(domain)
    students, reports = [], []
    runs = sorted(
        {(model.seed, model.label_fraction) for model in models if model.label_fraction <= config.max_label_fraction}
    )
    for seed, fraction in runs:
        candidates = [model for model in models if (model.seed, model.label_fraction) == (seed, fraction)]
        for start, teacher in student_starts(candidates, encoder.arm):
            student, report = _train_student(data_source, teacher, start, domain.name, seed, config, parent_run_id)
            students.append(student)
            reports.append(report)
    if not reports:
        return models
    with stage_run(
        parent_run_id,
        "self_train",
        {"config": config, "label_fractions": sorted({r["label_fraction"] for r in reports})},
    ):
        _log_report(reports)
    return models + students

"""Self-training (SimCLR v2 step 3, a FixMatch student): the FixMatch loss and views, determinism, the bounded pool,
the quality report, the label-efficiency comparisons, and the stage end to end on a tiny synthetic set."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ssl_models.augment import FINETUNE_AUGMENT, STRONG_AUGMENT, augment, normalise
from ssl_models.encoders import build_encoder
from ssl_models.finetuning import FinetuneConfig, finetune
from ssl_models.fixmatch import SelfTrainConfig, fixmatch_loss, train_fixmatch
from ssl_models.heads import Classifier
from sslflow.reporting.pseudo_labels import (
    per_class_table,
    quality_chart,
    quality_html,
    quality_markdown,
    quality_table,
)
from sslflow.training.labelled_subset import labelled_subset
from sslflow.training.student import pseudo_label_quality, run_self_training, self_training_data


def test_fixmatch_loss_masks_the_images_below_the_threshold():
    weak = torch.tensor(
        [[0.0, 0.1, 0.0], [0.2, 0.0, 0.0], [0.0, 0.0, 8.0]], requires_grad=True
    )  # two unsure, one sure of class 2
    strong = torch.tensor([[1.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.5, 0.0, 1.0]], requires_grad=True)
    loss, mask = fixmatch_loss(weak, strong, 0.95)
    assert mask.tolist() == [False, False, True]
    expected = (
        torch.nn.functional.cross_entropy(strong[2:].detach(), torch.tensor([2])) / 3
    )  # mean over all 3 images, as the paper
    assert loss.item() == pytest.approx(expected.item())
    loss.backward()
    assert weak.grad is None or not weak.grad.any()  # the pseudo-label is a target: no gradient into the weak view
    assert strong.grad[:2].abs().sum() == 0 and strong.grad[2].abs().sum() > 0  # the masked images teach nothing
    nothing, none_passed = fixmatch_loss(weak, strong, 0.9999)
    assert not none_passed.any() and nothing.item() == 0.0
    with pytest.raises(ValueError, match="must both be"):
        fixmatch_loss(weak, strong[:2], 0.9)
    with pytest.raises(ValueError, match="confidence_threshold"):
        SelfTrainConfig(confidence_threshold=1.5)


def test_the_strong_view_differs_from_the_weak_one_and_has_a_cutout_square():
    images = torch.from_numpy(_tiny_domain({"train": 22})[1][:64])  # a bright band over faint noise
    clean = normalise(images, FINETUNE_AUGMENT)
    weak = augment(images, FINETUNE_AUGMENT, torch.Generator().manual_seed(1))
    strong = augment(images, STRONG_AUGMENT, torch.Generator().manual_seed(1))
    assert weak.shape == strong.shape == clean.shape and not torch.equal(weak, strong)
    assert (strong - clean).abs().mean() > 1.5 * (
        weak - clean
    ).abs().mean()  # further from the image than the weak view
    grey = (0.5 - STRONG_AUGMENT.mean) / STRONG_AUGMENT.std
    assert ((strong == grey).flatten(1).sum(1) > 0).float().mean() > 0.9  # a Cutout square on (nearly) every image
    assert not (weak == grey).flatten(1).sum(1).gt(8).any()


def _fixmatch_inputs(seed: int = 0):
    manifest, images = _tiny_domain({"train": 10, "val": 4})
    data = self_training_data(manifest, lambda rows: images[rows], 0.2, seed, "tiny", max_pool_images=1000)
    return data, (torch.from_numpy(data.val_images), data.val_labels)


def test_the_fixmatch_student_is_determined_by_its_seed():
    data, validation = _fixmatch_inputs()
    config = SelfTrainConfig(steps=4, batch_size=4, eval_every=2, confidence_threshold=0.0)

    def student(seed: int):
        start = Classifier(build_encoder("small_cnn", 1, 28, seed=5), 3)
        start.linear.load_state_dict(
            {"weight": torch.full((3, start.linear.in_features), 0.01), "bias": torch.zeros(3)}
        )  # the same start every time
        model, history = train_fixmatch(
            start,
            torch.from_numpy(data.labelled_images),
            data.labels,
            torch.from_numpy(data.pool_images),
            dataclasses.replace(config, seed=seed),
            validation=validation,
        )
        return model.state_dict(), history

    (first, history), (again, _), (other, _) = student(0), student(0), student(1)
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not all(torch.equal(first[name], other[name]) for name in first)
    assert [record["step"] for record in history] == [2, 4] and history[0][
        "mask_rate"
    ] == 1.0  # threshold 0: every pool image passes
    assert history[-1]["best_step"] in (2, 4) and history[-1]["stopped_step"] == 4


def test_the_student_returned_is_the_moving_average_of_the_trained_weights():
    data, _ = _fixmatch_inputs()
    config = SelfTrainConfig(steps=1, batch_size=4, eval_every=1, confidence_threshold=0.0, ema_decay=0.0)

    def student(config: SelfTrainConfig) -> dict:
        start = Classifier(build_encoder("small_cnn", 1, 28, seed=5), 3)
        start.linear.load_state_dict(
            {"weight": torch.full((3, start.linear.in_features), 0.01), "bias": torch.zeros(3)}
        )  # the same start every time
        model, _ = train_fixmatch(
            start, torch.from_numpy(data.labelled_images), data.labels, torch.from_numpy(data.pool_images), config
        )
        return model.state_dict()

    after_one_step = student(config)
    # decay 1: the average is the weights after the first step (AveragedModel copies them), and never moves again
    frozen_average = student(dataclasses.replace(config, steps=4, ema_decay=1.0))
    trained = student(dataclasses.replace(config, steps=4))
    assert all(
        torch.equal(after_one_step[name], frozen_average[name]) for name in after_one_step
    )  # BatchNorm statistics too
    assert not all(torch.equal(after_one_step[name], trained[name]) for name in after_one_step)
    with pytest.raises(ValueError, match="ema_decay"):
        SelfTrainConfig(ema_decay=1.5)


def test_the_pool_held_in_memory_is_bounded_when_the_train_split_is_larger():
    manifest, images = _tiny_domain({"train": 40, "val": 4, "test": 4})  # 120 train images, a pool budget of 30
    read = []

    def read_images(rows):
        read.append(np.asarray(rows))
        return images[rows]

    data = self_training_data(manifest, read_images, 0.1, 0, "tiny", max_pool_images=30)
    (rows,) = read  # one read, of the rows the parts need
    assert len(data.pool_images) == 30 and data.train_images == 120
    assert len(rows) <= 30 + len(data.labels) + len(data.val_labels) < 120
    assert not np.isin(
        rows, np.flatnonzero((manifest["split"] == "test").to_numpy())
    ).any()  # the test split is never read
    again = self_training_data(manifest, lambda rows: images[rows], 0.1, 0, "tiny", max_pool_images=30)
    other = self_training_data(manifest, lambda rows: images[rows], 0.1, 1, "tiny", max_pool_images=30)
    assert np.array_equal(again.pool_images, data.pool_images) and not np.array_equal(
        other.pool_images, data.pool_images
    )
    assert np.array_equal(
        data.labelled_images, labelled_subset(manifest, images, 0.1, 0, "tiny").images
    )  # fine-tuning's subset
    whole = self_training_data(manifest, lambda rows: images[rows], 0.1, 0, "tiny", max_pool_images=1000)
    assert len(whole.pool_images) == 120


def test_pseudo_label_quality_arithmetic():
    probabilities = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.55, 0.45], [0.2, 0.8]])
    labels = np.array([0, 1, 1, 1, 0])
    report = pseudo_label_quality(probabilities, labels, 0.65, ["a", "b"])
    # passing 0.65: images 0 (right), 2 (right), 4 (wrong)
    assert report["coverage"] == pytest.approx(3 / 5)
    assert report["pseudo_label_accuracy"] == pytest.approx(2 / 3)
    assert report["per_class"][0] == {"class": "a", "images": 2, "coverage": 1.0, "accuracy": 0.5}
    assert report["per_class"][1] == {"class": "b", "images": 3, "coverage": pytest.approx(1 / 3), "accuracy": 1.0}
    assert 0 <= report["ece"] <= 1
    nothing = pseudo_label_quality(probabilities, labels, 0.95, ["a", "b"])
    assert nothing["coverage"] == 0 and math.isnan(nothing["pseudo_label_accuracy"])


def _tiny_domain(per_split: dict[str, int], seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """3 classes of 28 px images, class c a bright band in rows 9c..9c+8 over noise; per_split images per class."""
    rng = np.random.default_rng(seed)
    rows, images = [], []
    for split, count in per_split.items():
        for c in range(3):
            for _ in range(count):
                image = rng.integers(0, 60, size=(1, 28, 28), dtype=np.uint8)
                image[:, 9 * c : 9 * c + 9, :] = 220
                images.append(image)
                rows.append({"split": split, "label": f"class{c}", "site": "site0"})
    return pd.DataFrame(rows), np.stack(images)


def _teacher(data) -> torch.nn.Module:
    model, _ = finetune(
        build_encoder("small_cnn", 1, 28),
        torch.from_numpy(data.labelled_images),
        data.labels,
        3,
        FinetuneConfig(epochs=1, min_steps=20, head_warmup_steps=0),
    )
    return model


TINY = SelfTrainConfig(steps=6, batch_size=16, eval_every=3, confidence_threshold=0.0)


def _data(manifest, images, fraction):
    return self_training_data(manifest, lambda rows: images[rows], fraction, 0, "tiny", max_pool_images=1000)


def test_self_training_end_to_end_on_a_tiny_set_never_reads_the_test_split():
    manifest, images = _tiny_domain({"train": 20, "val": 10, "test": 5})
    data = _data(manifest, images, 0.2)
    assert (len(data.labels), len(data.pool_images), len(data.val_labels)) == (
        12,
        60,
        6,
    )  # the budget's validation fold: 20% of val
    teacher = _teacher(data)
    start = copy.deepcopy(teacher)  # stands for the top rung's fine-tuned model
    result = run_self_training(teacher, start, data, TINY)
    report = result.report
    assert (
        0 < report["pseudo_labelled"] <= 60
        and sum(row["pool_pseudo_labels"] for row in report["per_class"]) == report["pseudo_labelled"]
    )
    assert (
        report["mask_rate"] == 1.0 and report["pool_images"] == report["train_images"] == 60
    )  # threshold 0; the pool is not capped
    assert report["student_gain"] == pytest.approx(report["student_val_accuracy"] - report["teacher_val_accuracy"])
    scores = (
        (report["student_val_accuracy"], -report["student_val_loss"]),
        (report["teacher_val_accuracy"], -report["teacher_val_loss"]),
    )
    assert report["student_beats_teacher"] == (scores[0] > scores[1]) and result.history[-1]["step"] == 6
    assert not torch.equal(
        result.student.encoder.state_dict()["layers.0.weight"], start.encoder.state_dict()["layers.0.weight"]
    )
    assert all(
        torch.equal(tensor, teacher.state_dict()[name]) for name, tensor in start.state_dict().items()
    )  # the start is left as it was

    # Poisoned test split (other pixels, a label no class has): the same student, the same report.
    poisoned_manifest, poisoned = manifest.copy(), images.copy()
    test_rows = (manifest["split"] == "test").to_numpy()
    poisoned[test_rows] = 255 - poisoned[test_rows]
    poisoned_manifest.loc[test_rows, "label"] = "poison"
    again = run_self_training(teacher, start, _data(poisoned_manifest, poisoned, 0.2), TINY)
    assert again.report == report
    for name, tensor in result.student.state_dict().items():
        assert torch.equal(tensor, again.student.state_dict()[name]), name

    reports = [{"label_fraction": 0.2, "teacher": "scratch finetune", **report}]
    assert quality_table(reports).iloc[0]["pseudo_labelled"] == report["pseudo_labelled"]
    assert len(per_class_table(reports)) == 3 and "pseudo_label_accuracy" in quality_markdown(reports)
    chart = quality_chart(reports)
    assert chart.startswith(b"\x89PNG") and "<img" in quality_html(reports, chart)


def test_a_threshold_no_image_reaches_leaves_only_the_labelled_loss_and_says_so():
    manifest, images = _tiny_domain({"train": 4, "val": 2})
    data = _data(manifest, images, 0.5)
    config = SelfTrainConfig(steps=2, batch_size=4, eval_every=1, confidence_threshold=1.0)
    result = run_self_training(
        _teacher(data), Classifier(build_encoder("small_cnn", 1, 28, seed=0), 3), data, config
    )  # an untrained start: unsure
    assert all(record["mask_rate"] == 0 and record["unlabelled_loss"] == 0 for record in result.history)
    assert result.report["mask_rate"] == 0 and result.report["pseudo_labelled"] == 0 and result.report["coverage"] == 0
    assert math.isnan(result.report["pseudo_label_accuracy"]) and "nan" in quality_markdown(
        [{"label_fraction": 0.5, "teacher": "t", **result.report}]
    )


def test_quality_benchmark_smoke_reports_the_curve_the_controls_and_the_headline(tmp_path):
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "benchmarks/quality.py", "--smoke", "--out", str(tmp_path)]
    completed = subprocess.run(
        command, cwd=root, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(root)}
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    result = next(tmp_path.glob("quality-smoke-*.json"))
    record = json.loads(result.read_text())
    assert record["seeds_done"] == [0, 1] and result.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    inits = {r["init"] for r in record["results"]}
    assert inits == {"pixels", "scratch", "scratch+student", "simclr", "simclr+micle", "simclr+micle+student"}
    students = {(r["init"], r["label_fraction"]) for r in record["results"] if r["init"].endswith("+student")}
    assert students == {("scratch+student", 0.1), ("simclr+micle+student", 0.1)}  # max_label_fraction 0.1: not at 100%
    assert set(record["curves"]) == {
        "scratch",
        "scratch + student",
        "best without self-supervision",
        "best self-supervised",
    }
    assert record["curves"]["scratch"]["fractions"] == [0.1, 1.0]
    assert set(record["labels_saved"]) == set(record["targets"]) and all(
        "verdict" in v for v in record["labels_saved"].values()
    )
    models = [r for r in record["results"] if r["eval_set"] == "in_domain"]
    assert all(r["val_labels"] >= 1 and r["correct"] and r["cases"] for r in models)
    assert {r["chosen"] for r in models if r["probe"] == "finetune" and "student" not in r["init"]} <= {
        "lr=0.001 wd=0.0001",
        "lr=0.003 wd=0.0001",
    }
    assert "pretraining_adds_with_student_at_0.1" in record["comparisons"] and "labels_saved" in completed.stdout

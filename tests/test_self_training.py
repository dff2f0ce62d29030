"""Self-training (SimCLR v2 step 3): pseudo-label selection arithmetic, the distillation loss, the quality
report, the label-efficiency comparisons, and the stage end to end on a tiny synthetic set."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from ssl_models.augment import FINETUNE_AUGMENT
from ssl_models.encoders import build_encoder
from ssl_models.distillation import SelfTrainConfig, distillation_loss, select_pseudo_labels, soft_targets
from ssl_models.train import FinetuneConfig, finetune
from sslflow.evaluation import select_best
from sslflow.reporting.comparisons import comparison_lines, label_efficiency_comparisons
from sslflow.reporting.pseudo_labels import per_class_table, quality_chart, quality_html, quality_markdown, quality_table
from sslflow.training.student import pseudo_label_quality, run_self_training, self_training_data

UNIFORM3 = np.full(3, 1 / 3)


def test_threshold_keeps_only_confident_images():
    probabilities = np.array([[0.9, 0.05, 0.05], [0.4, 0.3, 0.3], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.5, 0.25, 0.25]])
    assert select_pseudo_labels(probabilities, 0.5, 10.0, UNIFORM3).tolist() == [0, 2, 3, 4]  # >= threshold, 0.4 dropped
    assert select_pseudo_labels(probabilities, 0.85, 10.0, UNIFORM3).tolist() == [0]
    assert select_pseudo_labels(probabilities, 0.95, 10.0, UNIFORM3).tolist() == []


def test_class_balance_caps_an_over_predicted_class_at_its_share():
    # 8 confident images: 6 predicted class 0 (confidence 0.60..0.95), 1 class 1, 1 class 2.
    rows = [[c, (1 - c) / 2, (1 - c) / 2] for c in (0.6, 0.7, 0.8, 0.85, 0.9, 0.95)] + [[0.1, 0.8, 0.1], [0.1, 0.1, 0.8]]
    probabilities = np.array(rows)
    kept = select_pseudo_labels(probabilities, 0.5, 1.5, UNIFORM3)
    # cap of class 0: ceil(1.5 x 1/3 x 8) = 4, its four most confident (indices 2..5); classes 1 and 2 keep theirs
    assert kept.tolist() == [2, 3, 4, 5, 6, 7]
    # the prior is the labelled share: a class that is 3/4 of the labels may keep ceil(1.5 x 0.75 x 8) = 9 >= 6
    assert select_pseudo_labels(probabilities, 0.5, 1.5, np.array([0.75, 0.125, 0.125])).tolist() == list(range(8))


def test_soft_targets_and_distillation_loss():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    assert soft_targets(logits, 1.0).sum(1).tolist() == pytest.approx([1.0, 1.0])
    assert soft_targets(logits, 0.1)[0, 0] > soft_targets(logits, 1.0)[0, 0]  # lower temperature: sharper
    one_hot = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1]))
    assert distillation_loss(logits, one_hot, 1.0).item() == pytest.approx(expected.item())  # hard targets: cross-entropy
    with pytest.raises(ValueError, match="temperature must be > 0"):
        soft_targets(logits, 0.0)
    with pytest.raises(ValueError, match="confidence_threshold"):
        SelfTrainConfig(confidence_threshold=1.0)


def test_pseudo_label_quality_arithmetic():
    probabilities = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.55, 0.45], [0.2, 0.8]])
    labels = np.array([0, 1, 1, 1, 0])
    report = pseudo_label_quality(probabilities, labels, 0.65, ["a", "b"])
    # passing 0.65: images 0 (right), 2 (right), 4 (wrong)
    assert report["coverage"] == pytest.approx(3 / 5)
    assert report["pseudo_label_accuracy"] == pytest.approx(2 / 3)
    assert report["per_class"][0] == {"class": "a", "images": 2, "coverage": 1.0, "accuracy": 0.5}
    assert report["per_class"][1] == {"class": "b", "images": 3, "coverage": pytest.approx(1 / 3), "accuracy": 1.0}
    assert 0 <= report["teacher_ece"] <= 1
    nothing = pseudo_label_quality(probabilities, labels, 0.95, ["a", "b"])
    assert nothing["coverage"] == 0 and math.isnan(nothing["pseudo_label_accuracy"])


def _results(rows: list[tuple], seeds=(0, 1, 2)) -> pd.DataFrame:
    """(init, probe, fraction, test accuracy, val accuracy[, selectable]) per arm; seed s adds 0.01 * s to both accuracies."""
    return pd.DataFrame([
        {"init": row[0], "probe": row[1], "label_fraction": row[2], "seed": seed, "eval_set": eval_set, "accuracy": row[3] + 0.01 * seed,
         "val_accuracy": row[4] + 0.01 * seed, "selectable": row[5] if len(row) > 5 else True}
        for row in rows for seed in seeds for eval_set in ("in_domain", "shift")
    ])  # fmt: skip


def test_label_efficiency_comparisons_choose_the_best_arm_on_validation_and_need_an_interval():
    rows = [
        ("scratch", "finetune", 0.01, 0.5, 0.5), ("simclr+micle", "finetune", 0.01, 0.7, 0.75), ("simclr", "linear", 0.01, 0.9, 0.6),
        ("simclr+micle+student", "finetune", 0.01, 0.95, 0.9, False),  # not selectable: never the best, whatever it scores
        ("scratch", "finetune", 0.1, 0.6, 0.6), ("scratch", "linear", 0.1, 0.95, 0.6), ("simclr+micle", "finetune", 0.1, 0.9, 0.9),
        ("scratch", "finetune", 1.0, 0.97, 0.97),
    ]  # fmt: skip
    comparisons = label_efficiency_comparisons(_results(rows))
    first = comparisons["best_at_1pct_vs_scratch_at_10pct"]
    assert first["best_arm"] == "simclr+micle finetune"  # best on validation, not "simclr linear" (best on test)
    assert first["best_accuracy"] == pytest.approx(0.71) and first["scratch_accuracy"] == pytest.approx(0.61)  # scratch fine-tuned, not linear
    assert first["verdict"] == "met" and comparisons["best_at_10pct_vs_scratch_at_100pct"]["verdict"] == "NOT met"
    assert "chosen on validation" in comparison_lines(comparisons)[0] and "NOT met" in comparison_lines(comparisons)[1]
    one_seed = label_efficiency_comparisons(_results(rows, seeds=(0,)))
    assert one_seed["best_at_1pct_vs_scratch_at_10pct"]["verdict"] == "undetermined (1 seed)"
    close = label_efficiency_comparisons(_results([("simclr", "linear", 0.01, 0.605, 0.7), ("scratch", "finetune", 0.1, 0.6, 0.6)]))
    assert close["best_at_1pct_vs_scratch_at_10pct"]["verdict"].startswith("undetermined")
    results = _results(rows)
    assert label_efficiency_comparisons(results[results["label_fraction"] < 1]).keys() == {"best_at_1pct_vs_scratch_at_10pct"}


def test_registration_never_selects_a_student_that_did_not_beat_its_teacher():
    def model(init, val_accuracy, selectable=True):
        return SimpleNamespace(init=init, val_accuracy=val_accuracy, label_fraction=0.1, selectable=selectable)

    teacher, student = model("simclr+micle", 0.9), model("simclr+micle+student", 0.95, selectable=False)
    assert select_best([teacher, student]) is teacher
    good_student = model("simclr+micle+student", 0.95)
    assert select_best([teacher, good_student]) is good_student
    with pytest.raises(ValueError, match="none of the 1 models is selectable"):
        select_best([student])


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
    model, _ = finetune(build_encoder("small_cnn", 1, 28), torch.from_numpy(data.labelled_images), data.labels, 3,
                        FinetuneConfig(epochs=1, min_steps=20, head_warmup_steps=0))  # fmt: skip
    return model


TINY = SelfTrainConfig(steps=6, head_warmup_steps=2, batch_size=16, confidence_threshold=0.0)


def test_self_training_end_to_end_on_a_tiny_set_never_reads_the_test_split():
    manifest, images = _tiny_domain({"train": 20, "val": 10, "test": 5})
    data = self_training_data(manifest, images, 0.2, 0, "tiny")
    assert (len(data.labels), len(data.pool_images), len(data.val_labels)) == (12, 60, 30)
    teacher = _teacher(data)
    torch.manual_seed(1)
    encoder = build_encoder("small_cnn", 1, 28)  # stands for the self-supervised encoder
    result = run_self_training(teacher, copy.deepcopy(encoder), data, TINY)
    report = result.report
    assert 0 < report["pseudo_labelled"] <= 60 and sum(row["pool_pseudo_labels"] for row in report["per_class"]) == report["pseudo_labelled"]
    assert report["student_gain"] == pytest.approx(report["student_val_accuracy"] - report["teacher_val_accuracy"])
    assert report["student_beats_teacher"] == (report["student_gain"] > 0) and result.history[-1]["step"] == 6
    assert not torch.equal(result.student.encoder.state_dict()["layers.0.weight"], encoder.state_dict()["layers.0.weight"])

    # Poisoned test split (other pixels, a label no class has): the same student, the same report.
    poisoned_manifest, poisoned = manifest.copy(), images.copy()
    test_rows = (manifest["split"] == "test").to_numpy()
    poisoned[test_rows] = 255 - poisoned[test_rows]
    poisoned_manifest.loc[test_rows, "label"] = "poison"
    again = run_self_training(teacher, copy.deepcopy(encoder), self_training_data(poisoned_manifest, poisoned, 0.2, 0, "tiny"), TINY)
    assert again.report == report
    for name, tensor in result.student.state_dict().items():
        assert torch.equal(tensor, again.student.state_dict()[name]), name

    reports = [{"label_fraction": 0.2, "teacher": "scratch finetune", **report}]
    assert quality_table(reports).iloc[0]["pseudo_labelled"] == report["pseudo_labelled"]
    assert len(per_class_table(reports)) == 3 and "pseudo_label_accuracy" in quality_markdown(reports)
    chart = quality_chart(reports)
    assert chart.startswith(b"\x89PNG") and "<img" in quality_html(reports, chart)


def test_a_teacher_confident_about_nothing_trains_no_student_and_says_so():
    manifest, images = _tiny_domain({"train": 4, "val": 2})
    data = self_training_data(manifest, images, 0.5, 0, "tiny")
    teacher = _teacher(data)
    with torch.no_grad():  # uniform predictions: top probability 1/3 everywhere
        teacher.linear.weight.zero_()
        teacher.linear.bias.zero_()
    result = run_self_training(teacher, build_encoder("small_cnn", 1, 28), data, SelfTrainConfig(steps=2, head_warmup_steps=0, confidence_threshold=0.5))
    assert result.student is None and result.history == []
    assert result.report["pseudo_labelled"] == 0 and result.report["coverage"] == 0 and result.report["student_beats_teacher"] is False
    assert math.isnan(result.report["student_gain"]) and "nan" in quality_markdown([{"label_fraction": 0.5, "teacher": "t", **result.report}])


def test_quality_benchmark_smoke_reports_the_student_arm_and_both_comparisons(tmp_path):
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "benchmarks/quality.py", "--smoke", "--out", str(tmp_path)]
    completed = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(root)})
    assert completed.returncode == 0, completed.stderr[-2000:]
    record = json.loads(next(tmp_path.glob("quality-smoke-*.json")).read_text())
    assert set(record["label_efficiency"]) == {"best_at_1pct_vs_scratch_at_10pct", "best_at_10pct_vs_scratch_at_100pct"}
    assert set(record["self_training"]) == {"0.01/seed=0", "0.1/seed=0"}  # SelfTrainConfig.max_label_fraction: not at 100%
    for fraction in record["self_training"].values():
        assert {"pseudo_label_accuracy", "student_gain", "student_test_gain", "teacher"} <= set(fraction)
    assert {r["init"] for r in record["results"]} >= {"pixels", "scratch", "simclr", "simclr+domain", "simclr+micle", "simclr+micle+student"}
    assert "best_at_1pct_vs_scratch_at_10pct" in completed.stdout

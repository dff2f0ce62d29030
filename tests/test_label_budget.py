"""How many labels self-supervision saves, measured as a reviewer would accept it: a label budget that counts its
validation fold, the same search for every arm, the scratch + student control, verdicts from intervals that resample
cases, and the label-savings curve with its headline."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from ssl_models.encoders import build_encoder
from ssl_models.finetuning import FinetuneConfig, finetune
from ssl_models.loop import BestOnValidation
from sslflow.evaluation import pack_cases, pack_correct, unpack_cases
from sslflow.reporting.comparisons import comparison_lines, label_efficiency_comparisons
from sslflow.reporting.curves import headlines, savings_curves, savings_figure
from sslflow.training.fit import fit_summary
from sslflow.training.labelled_subset import labelled_subset_rows
from sslflow.training.selection import select_best
from sslflow.training.student import student_starts


def _manifest(train_per_class: int, val_per_class: int) -> pd.DataFrame:
    rows = [
        {"split": split, "label": f"class{c}", "case_id": f"{split}-{c}-{i}"}
        for split, count in (("train", train_per_class), ("val", val_per_class), ("test", 5))
        for c in range(10)
        for i in range(count)
    ]
    return pd.DataFrame(rows)


def test_the_validation_fold_comes_from_the_same_fraction_of_the_val_split():
    manifest = _manifest(train_per_class=300, val_per_class=50)
    few, more = labelled_subset_rows(manifest, 0.01, 0, "mnist"), labelled_subset_rows(manifest, 0.1, 0, "mnist")
    assert (len(few.rows), len(few.val_rows)) == (
        30,
        10,
    )  # 1% of 3,000 training labels and of 500 validation labels (one a class)
    assert (len(more.rows), len(more.val_rows)) == (300, 50)
    assert set(manifest.loc[few.val_rows, "split"]) == {"val"} and set(few.val_rows) <= set(
        more.val_rows
    )  # nested, like the training fold
    assert np.bincount(few.val_labels).tolist() == [1] * 10
    assert len(labelled_subset_rows(manifest, 1.0, 0, "mnist").val_rows) == 500


def _blobs(count: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Two classes of 28 px images: a bright top or bottom half over noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 2
    images = rng.integers(0, 60, size=(count, 1, 28, 28), dtype=np.uint8)
    for index, label in enumerate(labels):
        images[index, :, 14 * label : 14 * label + 14] = 200
    return torch.from_numpy(images), labels


def test_fine_tuning_searches_its_settings_on_validation_and_records_the_choice():
    images, labels = _blobs(32, 0)
    validation = _blobs(16, 1)
    config = FinetuneConfig(
        epochs=1,
        min_steps=6,
        batch_size=16,
        eval_every=2,
        patience=0,
        learning_rates=[1e-4, 3e-3],
        weight_decays=[1e-4, 1e-2],
    )
    model, history = finetune(
        build_encoder("small_cnn", 1, 28, seed=0), images, labels, 2, config, validation=validation
    )
    last = history[-1]
    assert len(last["search"]) == 4 and {
        (point["learning_rate"], point["weight_decay"]) for point in last["search"]
    } == {(rate, decay) for rate in (1e-4, 3e-3) for decay in (1e-4, 1e-2)}
    best = max(last["search"], key=lambda point: (point["best_val_accuracy"], -point["best_val_loss"]))
    assert (last["learning_rate"], last["weight_decay"]) == (best["learning_rate"], best["weight_decay"])
    fit = fit_summary(last)
    assert (
        fit.chosen == f"lr={best['learning_rate']:g} wd={best['weight_decay']:g}" and 0 <= fit.final_train_accuracy <= 1
    )
    assert fit.best_step == last["best_step"] and fit.best_at_budget_end == (
        last["best_step"] == last["budget_steps"] == 6
    )
    with pytest.raises(ValueError, match="chooses on validation"):
        finetune(build_encoder("small_cnn", 1, 28), images, labels, 2, config)
    assert (
        FinetuneConfig().head_warmup_steps == 0
    )  # one rule for every arm: no head warm-up unless asked, for all alike


def test_ties_on_validation_accuracy_go_to_the_lower_validation_loss_never_to_pretraining():
    stopping, model = BestOnValidation(patience=1), torch.nn.Linear(2, 2)
    assert not stopping.update(10, 0.9, model, loss=0.5)
    assert not stopping.update(20, 0.9, model, loss=0.3)  # the same accuracy, surer: the new best
    assert stopping.update(30, 0.9, model, loss=0.4) and stopping.record()["best_step"] == 20

    def model_(init, loss, selectable=True):
        return SimpleNamespace(init=init, val_accuracy=0.8, val_loss=loss, label_fraction=0.01, selectable=selectable)

    scratch, pretrained = model_("scratch", 0.4), model_("simclr+micle", 0.6)
    assert select_best([pretrained, scratch]) is scratch
    assert select_best([scratch, model_("simclr+micle+student", 0.1, selectable=False)]) is scratch


def test_each_fraction_gets_the_top_rungs_student_and_the_scratch_control():
    def model(init, probe, val_accuracy):
        return SimpleNamespace(
            init=init, probe=probe, val_accuracy=val_accuracy, val_loss=0.5, label_fraction=0.01, selectable=True
        )

    models = [
        model("pixels", "linear", 0.5),
        model("scratch", "finetune", 0.6),
        model("simclr+micle", "linear", 0.9),
        model("simclr+micle", "finetune", 0.8),
    ]
    (top_start, top_teacher), (control_start, control_teacher) = student_starts(models, "simclr+micle")
    assert (top_start.init, top_start.probe, top_teacher.init, top_teacher.probe) == (
        "simclr+micle",
        "finetune",
        "simclr+micle",
        "linear",
    )
    assert (control_start.init, control_teacher.init) == (
        "scratch",
        "scratch",
    )  # judged against the best arm without pretraining


def _row(init, fraction, correct, cases, *, seed=0, val_accuracy=0.8, labels=(30, 10), selectable=True):
    return {
        "init": init,
        "probe": "finetune",
        "label_fraction": fraction,
        "seed": seed,
        "num_labels": labels[0],
        "val_labels": labels[1],
        "eval_set": "in_domain",
        "accuracy": float(np.mean(correct)),
        "val_accuracy": val_accuracy,
        "val_loss": 1 - val_accuracy,
        "selectable": selectable,
        "correct": pack_correct(np.asarray(correct)),
        "cases": pack_cases(cases),
    }


def test_verdicts_come_from_a_paired_interval_that_resamples_cases():
    cases = np.repeat(np.arange(40), 10)  # 400 test images, 10 of each case, which share their outcome
    scratch = np.repeat(np.arange(40) < 30, 10)
    ours = np.repeat(np.arange(40) < 33, 10)  # right on 3 more cases (30 more images)
    rows = [
        _row("simclr+micle", 0.01, ours, cases, val_accuracy=0.9),
        _row("scratch", 0.01, scratch, cases, val_accuracy=0.7),
        _row("scratch", 0.1, scratch, cases, labels=(300, 50)),
    ]
    comparisons = label_efficiency_comparisons(pd.DataFrame(rows))
    ten_times = comparisons["best_at_1pct_vs_scratch_at_10pct"]
    # image by image, 30 of 400 images better and none worse would be a clear gain; 3 of 40 cases is not
    assert ten_times["ours"] == "simclr+micle finetune" and ten_times["low"] <= 0 < ten_times["high"]
    assert ten_times["verdict"].startswith("undetermined") and "bootstrap over 40 test cases" in ten_times["difference"]
    assert comparisons["pretraining_adds_at_0.01"]["theirs"] == "scratch finetune"
    line = comparison_lines({"x": ten_times})[0]
    assert "(40 labels)" in line and "(350 labels)" in line  # training + validation labels on each side
    clear = [_row("simclr+micle", 0.01, np.repeat(np.arange(40) < 39, 10), cases, val_accuracy=0.9), rows[2]]
    assert label_efficiency_comparisons(pd.DataFrame(clear))["best_at_1pct_vs_scratch_at_10pct"]["verdict"] == "met"
    assert np.array_equal(unpack_cases(pack_cases(np.array(["b", "a", "b"]))), [0, 1, 0])


def test_the_curve_and_the_labels_saved_read_off_it():
    cases = np.repeat(np.arange(100), 4)
    budgets = {0.01: (30, 10), 0.1: (300, 50), 1.0: (3000, 500)}
    scratch_cases = {0.01: 50, 0.1: 70, 1.0: 90}  # cases right out of 100, at each fraction
    rows = []
    for seed in (0, 1):
        rows.append(_row("simclr+micle", 0.01, np.repeat(np.arange(100) < 80, 4), cases, seed=seed, val_accuracy=0.85))
        rows += [
            _row(
                "scratch",
                f,
                np.repeat(np.arange(100) < right, 4),
                cases,
                seed=seed,
                labels=budgets[f],
                val_accuracy=0.5,
            )
            for f, right in scratch_cases.items()
        ]
    results = pd.DataFrame(rows)
    curves = savings_curves(results)
    assert curves["scratch"]["labels"] == [40, 350, 3500] and curves["scratch"]["accuracy"] == pytest.approx(
        [0.5, 0.7, 0.9]
    )
    assert curves["best self-supervised"]["arms"] == ["simclr+micle finetune"]
    found = headlines(results, {"scratch": 10.0})["scratch"]
    # 0.8 lies halfway from 0.7 (350 labels) to 0.9 (3,500) in log labels: sqrt(350 * 3500) = 1,107 labels,
    # 27.7x the 40 used
    assert found["ratio"] == pytest.approx(np.sqrt(350 * 3500) / 40) and found["low"] < found["ratio"] < found["high"]
    assert (
        found["verdict"] in ("met", "undetermined (the interval holds the target)")
        and found["reference"] == "simclr+micle finetune at 0.01"
    )
    assert savings_figure(results)["label_savings"].startswith(b"\x89PNG")


def test_a_test_split_of_one_case_gives_no_interval_and_no_crash():
    one_case = np.zeros(20, dtype=int)
    rows = [
        _row("simclr+micle", 0.01, np.arange(20) < 15, one_case, val_accuracy=0.9),
        _row("scratch", 0.1, np.arange(20) < 10, one_case, labels=(300, 50)),
    ]
    results = pd.DataFrame(rows)
    assert (
        label_efficiency_comparisons(results) == {} and savings_curves(results) == {} and savings_figure(results) == {}
    )
    assert headlines(results, {"scratch": 10.0}) == {}

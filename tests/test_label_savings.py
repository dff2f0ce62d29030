"""The label-savings curve and its headline ratio (sslflow/reporting/label_savings.py) on hand-made curves."""

import math

import numpy as np
import pytest

from sslflow.reporting.label_savings import LabelsSaved, labels_needed, labels_saved, savings_curve_figure

LABELS = np.array([10, 100, 1000, 10000])


def test_labels_needed_interpolates_in_log_labels():
    accuracies = np.array([0.5, 0.7, 0.9, 0.95])
    assert labels_needed(LABELS, accuracies, 0.8) == pytest.approx(math.sqrt(100 * 1000))  # halfway in log
    assert labels_needed(LABELS, accuracies, 0.55) == pytest.approx(10 * 10**0.25)
    assert labels_needed(LABELS, accuracies, 0.7) == pytest.approx(100)  # on a point
    assert labels_needed(LABELS, accuracies, 0.4) == 10  # already reached with the fewest labels
    assert labels_needed(LABELS, accuracies, 0.5) == 10
    assert labels_needed(LABELS, accuracies, 0.96) == math.inf  # never reached


def test_labels_needed_takes_the_first_crossing():
    accuracies = np.array([0.5, 0.85, 0.7, 0.9])  # crosses 0.8 between 10 and 100, drops below, crosses again
    assert labels_needed(LABELS, accuracies, 0.8) == pytest.approx(10 ** (1 + 0.3 / 0.35))


def test_labels_needed_checks_its_curve():
    with pytest.raises(ValueError, match="strictly increasing"):
        labels_needed(np.array([10, 10, 100]), np.array([0.5, 0.6, 0.7]), 0.6)
    with pytest.raises(ValueError, match="same length"):
        labels_needed(LABELS, np.array([0.5, 0.6]), 0.6)


CASES, IMAGES_PER_CASE = 300, 3
BUDGETS = np.array([40, 80, 160, 320, 640, 1280])


def _right_below(thresholds, difficulty: np.ndarray) -> np.ndarray:
    """(..., N) answers per image: a model of accuracy t gets a case right when its difficulty is below t."""
    per_case = np.asarray(thresholds)[..., None] > difficulty
    return np.repeat(per_case, IMAGES_PER_CASE, axis=-1)


def _difficulties(seed: int) -> np.ndarray:
    """(CASES,) evenly spaced difficulties in (0, 1), shuffled: a threshold t gets exactly t of the cases right."""
    return np.random.default_rng(seed).permutation((np.arange(CASES) + 0.5) / CASES)


CASE_IDS = np.repeat(np.arange(CASES), IMAGES_PER_CASE)


def test_the_baseline_needs_eight_times_the_labels_to_reach_the_reference():
    reference = _right_below(0.8, _difficulties(1))  # 0.8 with 40 labels
    baseline = _right_below([0.6, 0.7, 0.75, 0.8, 0.85, 0.9], _difficulties(2))  # reaches 0.8 at 320 labels
    saved = labels_saved(reference, 40, BUDGETS, baseline, CASE_IDS)
    assert saved.reference_accuracy == pytest.approx(0.8) and saved.needed == pytest.approx(320) and not saved.censored
    assert saved.ratio == pytest.approx(8.0) and saved.low < 8.0 < saved.high < 32
    assert str(saved).startswith(f"8.0x [{saved.low:.1f}x, ")
    assert str(saved).endswith("(the baseline needs 320 labels to reach 0.8000; reference 40 labels)")
    assert labels_saved(reference, 40, BUDGETS, baseline, CASE_IDS) == saved  # a fixed resampling seed


def test_three_seeds_are_resampled_with_the_cases():
    reference = _right_below([0.79, 0.8, 0.81], _difficulties(1))
    baseline = _right_below(np.array([[0.6, 0.7, 0.75, t, 0.85, 0.9] for t in (0.78, 0.8, 0.82)]), _difficulties(2))
    saved = labels_saved(reference, 40, BUDGETS, baseline, CASE_IDS)
    assert saved.ratio == pytest.approx(8.0) and saved.low < 8.0 < saved.high


def test_both_arms_are_resampled_with_the_same_draw():
    difficulty = _difficulties(1)
    reference = _right_below(0.8, difficulty)
    baseline = _right_below(
        [0.6, 0.7, 0.8, 0.85, 0.9, 0.95], difficulty
    )  # right on the same cases as the reference at 160
    saved = labels_saved(reference, 40, BUDGETS, baseline, CASE_IDS)
    assert (saved.ratio, saved.low, saved.high) == pytest.approx((4.0, 4.0, 4.0))  # in every resample: 160 labels


def test_a_baseline_that_never_reaches_the_reference_is_censored():
    reference = _right_below(0.95, _difficulties(1))
    baseline = _right_below([0.6, 0.7, 0.75, 0.8, 0.85, 0.9], _difficulties(2))
    saved = labels_saved(reference, 40, BUDGETS, baseline, CASE_IDS, resamples=500)
    assert saved.censored and saved.ratio == math.inf and saved.needed == math.inf and saved.high == math.inf
    assert str(saved).startswith(">32.0x [") and "does not reach 0.9500 within 1280 labels" in str(saved)
    assert str(LabelsSaved(12.3, 6.1, math.inf, 410, 40, 0.9306, False, 3440)) == (
        "12.3x [6.1x, >86.0x] (the baseline needs 410 labels to reach 0.9306; reference 40 labels)"
    )


def test_labels_saved_checks_its_shapes():
    reference = _right_below(0.8, _difficulties(1))
    baseline = _right_below([0.6, 0.7, 0.75, 0.8, 0.85, 0.9], _difficulties(2))
    with pytest.raises(ValueError, match="baseline_correct must be \\(seeds, budgets, images\\)"):
        labels_saved(reference, 40, BUDGETS[:-1], baseline, CASE_IDS)
    with pytest.raises(ValueError, match="positive label count"):
        labels_saved(reference, 0, BUDGETS, baseline, CASE_IDS)
    with pytest.raises(ValueError, match="one case id per test image"):
        labels_saved(reference, 40, BUDGETS, baseline, CASE_IDS[:-1])


def test_the_savings_curve_is_a_png():
    curve = {
        "labels": BUDGETS,
        "accuracy": [0.6, 0.7, 0.75, 0.8, 0.85, 0.9],
        "low": [0.55, 0.66, 0.7, 0.76, 0.82, 0.87],
        "high": [0.65, 0.74, 0.8, 0.84, 0.88, 0.93],
    }
    png = savings_curve_figure(
        {"scratch": curve, "simclr": {**curve, "accuracy": [0.8, 0.82, 0.84, 0.86, 0.88, 0.9]}}, "Labels saved"
    )
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000

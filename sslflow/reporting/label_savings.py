"""How many labels self-supervision saves: the label-savings curve and its headline ratio.

A label-efficiency curve gives accuracy against the labels used. The headline reads it sideways: the self-supervised
arm reaches accuracy a* with ``reference_labels`` labels; the baseline needs ``labels_needed`` labels to reach a*
(linear interpolation in log labels between its budgets); the ratio of the two is how many times more labels the
baseline needs. Its interval comes from the case bootstrap of ``sslflow.reporting.intervals`` (cases, and seeds,
drawn with replacement), the same draw for both arms, so their shared test cases move together. A baseline that never
reaches a* within its largest budget gives an infinite ratio: "more than largest/reference times".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np

from sslflow.reporting.charts import finish_accuracy_curve
from sslflow.reporting.intervals import CONFIDENCE, answers_per_seed, bootstrap_draws, case_totals, percentile_interval


def labels_needed(labels: np.ndarray, accuracies: np.ndarray, target: float) -> float:
    """The labels a curve needs to reach accuracy ``target``.

    labels: (F,) increasing label counts (train + validation labels used at each budget); accuracies: (F,) the curve's
    accuracy there. labels[0] when accuracies[0] >= target; otherwise linear interpolation in log(labels) between the
    first two consecutive points whose accuracies bracket the target, walking up from the fewest labels (the first
    crossing); math.inf when the curve never reaches it.
    """
    labels, accuracies = np.asarray(labels, dtype=float), np.asarray(accuracies, dtype=float)
    if labels.ndim != 1 or labels.shape != accuracies.shape or labels.size == 0:
        raise ValueError(
            f"labels and accuracies must be two 1-D arrays of the same length; got shapes {labels.shape} and "
            f"{accuracies.shape}"
        )
    if not (labels > 0).all() or not (np.diff(labels) > 0).all() or not np.isfinite(accuracies).all():
        raise ValueError(
            f"labels must be positive and strictly increasing and accuracies finite; got {labels.tolist()} and "
            f"{accuracies.tolist()}"
        )
    reached = np.flatnonzero(accuracies >= target)
    if reached.size == 0:
        return math.inf
    first = int(reached[0])
    if first == 0:
        return float(labels[0])
    fraction = (target - accuracies[first - 1]) / (accuracies[first] - accuracies[first - 1])
    return float(
        math.exp(math.log(labels[first - 1]) + fraction * (math.log(labels[first]) - math.log(labels[first - 1])))
    )


@dataclass(frozen=True)
class LabelsSaved:
    """How many times more labels the baseline needs to reach the self-supervised arm's accuracy."""

    ratio: float  # needed / reference_labels; math.inf: the baseline never reaches it within its largest budget
    low: float  # percentile interval of the ratio over the bootstrap (either may be inf)
    high: float
    needed: float  # the baseline's labels needed at the point estimate (inf when censored)
    reference_labels: int
    reference_accuracy: float
    censored: bool  # at the point estimate, the baseline never reaches reference_accuracy within its largest budget
    largest_labels: float | None = None  # the baseline's largest budget: an infinite ratio reads "> largest/reference"

    def _times(self, ratio: float) -> str:
        if math.isfinite(ratio):
            return f"{ratio:.1f}x"
        return f">{self.largest_labels / self.reference_labels:.1f}x" if self.largest_labels else "infx"

    def __str__(self) -> str:
        if self.censored:
            needs = f"does not reach {self.reference_accuracy:.4f} within {self.largest_labels or math.inf:.0f} labels"
        else:
            needs = f"needs {self.needed:.0f} labels to reach {self.reference_accuracy:.4f}"
        interval = f"[{self._times(self.low)}, {self._times(self.high)}]"
        return f"{self._times(self.ratio)} {interval} (the baseline {needs}; reference {self.reference_labels} labels)"


def labels_saved(
    reference_correct: np.ndarray,
    reference_labels: int,
    baseline_labels: np.ndarray,
    baseline_correct: np.ndarray,
    cases,
    *,
    confidence: float = CONFIDENCE,
    resamples: int = 2000,
    seed: int = 0,
) -> LabelsSaved:
    """The labels the baseline needs to match the reference arm, as a multiple of the reference's labels.

    reference_correct: (S, N) bool, which of N test images the reference (self-supervised) arm trained on
    ``reference_labels`` labels got right, per seed ((N,): one seed). baseline_labels: (F,) increasing label counts;
    baseline_correct: (S, F, N) bool ((F, N): one seed), the baseline arm at each budget, same seeds and images.
    cases: (N,) the case (patient) of each image. Point estimate: labels_needed(baseline_labels, the baseline's
    mean-over-seeds accuracy per budget, the reference's mean accuracy) / reference_labels. Interval: the same on
    each resample (cases, and seeds when S > 1, drawn with replacement; the same draw for both arms), percentile,
    an infinite ratio counting as larger than any finite one.
    """
    reference = answers_per_seed(reference_correct, "reference_correct", ndim=2)
    baseline = answers_per_seed(baseline_correct, "baseline_correct", ndim=3)
    baseline_labels = np.asarray(baseline_labels, dtype=float)
    if baseline.shape[:2] != (reference.shape[0], baseline_labels.size) or baseline.shape[2] != reference.shape[1]:
        raise ValueError(
            f"baseline_correct must be (seeds, budgets, images) = ({reference.shape[0]}, {baseline_labels.size}, "
            f"{reference.shape[1]}) to match reference_correct {reference.shape} and baseline_labels; got "
            f"{baseline.shape}"
        )
    if reference_labels <= 0:
        raise ValueError(f"reference_labels must be a positive label count; got {reference_labels}")
    totals = case_totals(np.concatenate([reference[:, None, :], baseline], axis=1), cases)  # (S, 1 + F, C)
    seeds, _, n_cases = totals.correct.shape
    point = totals.accuracy(np.ones((1, n_cases)), np.ones((1, seeds)))[0]
    resampled = totals.accuracy(*bootstrap_draws(resamples, n_cases, seeds, seed))
    ratios = [labels_needed(baseline_labels, row[1:], row[0]) / reference_labels for row in resampled]
    needed = labels_needed(baseline_labels, point[1:], point[0])
    low, high = percentile_interval(np.array(ratios), confidence)
    ratio, largest = needed / reference_labels, float(baseline_labels[-1])
    return LabelsSaved(ratio, low, high, needed, int(reference_labels), float(point[0]), math.isinf(needed), largest)


def savings_curve_figure(curves: dict[str, dict], title: str) -> bytes:
    """PNG of accuracy against labels used (log x axis), one curve per arm with its interval as a band.

    curves: {arm name: {"labels": (F,), "accuracy": (F,), "low": (F,), "high": (F,)}}, labels the train + validation
    labels used at each budget, low/high the interval of the accuracy there (e.g. ``case_bootstrap_accuracy``).
    """
    figure, axis = plt.subplots(figsize=(6, 4))
    for arm, curve in curves.items():
        labels = np.asarray(curve["labels"], dtype=float)
        (line,) = axis.plot(labels, np.asarray(curve["accuracy"], dtype=float), marker="o", label=arm)
        axis.fill_between(
            labels,
            np.asarray(curve["low"], dtype=float),
            np.asarray(curve["high"], dtype=float),
            color=line.get_color(),
            alpha=0.2,
        )
    return finish_accuracy_curve(figure, axis, "labels used (train + validation)", title)

"""Mean and 95% confidence interval over seeds, and when a difference counts as one.

The interval is Student's t: mean ± t_{0.975, n-1} · s / sqrt(n), s the sample standard deviation
(ddof 1). With one seed there is no interval. A difference is called a gain (or a loss) only when
the two intervals do not overlap; otherwise it is "no difference" at this number of seeds. With one seed,
or an interval of zero width (an arm the seeds do not vary, such as a converged probe on all labels), the
verdict is "undetermined": there is no estimate of the spread to separate.

With one seed, two models evaluated on the same test images can still be compared: ``paired_bootstrap``
resamples the images (each resample keeps both models' answers on an image together) and gives a 95% interval
of the difference in accuracy (scipy.stats.bootstrap, BCa); ``paired_verdict`` calls a gain or a loss only
when that interval excludes 0. The interval is over test images, not over training seeds: it says whether
these two trained models differ on this population of images, not whether retraining would keep the order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    mean: float
    half_width: float | None  # None: one value, no interval
    n: int

    @property
    def low(self) -> float:
        return self.mean - (self.half_width or 0.0)

    @property
    def high(self) -> float:
        return self.mean + (self.half_width or 0.0)

    def __str__(self) -> str:
        return f"{self.mean:.4f}" if self.half_width is None else f"{self.mean:.4f} ± {self.half_width:.4f}"


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean and t-interval half-width of values (one per seed)."""
    if len(values) == 0:
        raise ValueError("an interval over no values is undefined")
    n = len(values)
    mean = math.fsum(values) / n
    if n == 1:
        return Interval(mean, None, 1)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    return Interval(mean, float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n), n)


def verdict(ours: Interval, theirs: Interval, *, higher_is_better: bool = True) -> str:
    """"gain", "loss" or "no difference" (intervals overlap); "undetermined (...)" when either has one seed or zero width."""
    if ours.half_width is None or theirs.half_width is None:
        return "undetermined (1 seed)"
    if ours.half_width == 0 or theirs.half_width == 0:
        return "undetermined (zero-width interval: the seeds do not vary this arm)"
    if ours.low > theirs.high:
        return "gain" if higher_is_better else "loss"
    if ours.high < theirs.low:
        return "loss" if higher_is_better else "gain"
    return "no difference"


BOOTSTRAP_RESAMPLES = 10000


@dataclass(frozen=True)
class PairedDifference:
    """Accuracy of one model minus another's on the same test images, and the 95% interval of that difference."""

    difference: float
    low: float
    high: float
    images: int

    def __str__(self) -> str:
        return f"{self.difference:+.4f} [{self.low:+.4f}, {self.high:+.4f}] (paired bootstrap over {self.images} test images)"


def paired_bootstrap(ours: np.ndarray, theirs: np.ndarray, confidence: float = CONFIDENCE, *, seed: int = 0) -> PairedDifference:
    """ours - theirs in accuracy with its paired-bootstrap interval. ours, theirs: (N,) bool, which of the same N
    test images (same order) each model got right. BCa interval (scipy.stats.bootstrap, BOOTSTRAP_RESAMPLES
    resamples, fixed seed: the same answers give the same interval); identical answers: a zero-width interval."""
    ours, theirs = np.asarray(ours, dtype=float), np.asarray(theirs, dtype=float)
    if ours.shape != theirs.shape or ours.ndim != 1 or len(ours) < 2:
        raise ValueError(f"a paired bootstrap needs two answers on the same 2+ images; got shapes {ours.shape} and {theirs.shape}")
    difference = float(ours.mean() - theirs.mean())
    if np.array_equal(ours, theirs):
        return PairedDifference(difference, difference, difference, len(ours))
    result = stats.bootstrap(
        (ours, theirs), lambda a, b, axis: a.mean(axis=axis) - b.mean(axis=axis), paired=True, vectorized=True,
        n_resamples=BOOTSTRAP_RESAMPLES, confidence_level=confidence, method="BCa", rng=np.random.default_rng(seed),
    )  # fmt: skip
    return PairedDifference(difference, float(result.confidence_interval.low), float(result.confidence_interval.high), len(ours))


def paired_verdict(difference: PairedDifference) -> str:
    """"gain" (the whole interval of ours - theirs above 0), "loss" (below 0), or "no difference" (it holds 0)."""
    if difference.low > 0:
        return "gain"
    if difference.high < 0:
        return "loss"
    return "no difference"

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

Images of one patient are not independent, so ``paired_case_bootstrap`` resamples cases (patients) instead: each
resample draws cases with replacement, all images of a drawn case together (a cluster bootstrap; Field & Welsh 2007,
"Bootstrapping clustered data", JRSS B 69(3)), and, with several seeds, draws the seeds with replacement too, so the
interval also holds the spread between retrainings. ``case_bootstrap_accuracy`` gives one model's accuracy the same
way. Both report the percentile interval of the resampled statistic.
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
    """ "gain", "loss" or "no difference" (intervals overlap); "undetermined (...)" when either has one seed or zero
    width."""
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
    cases: int | None = None  # None: the image-level bootstrap (paired_bootstrap)
    seeds: int = 1

    def __str__(self) -> str:
        interval = f"{self.difference:+.4f} [{self.low:+.4f}, {self.high:+.4f}]"
        if self.cases is None:
            return f"{interval} (paired bootstrap over {self.images} test images)"
        return f"{interval} (bootstrap over {self.cases} test cases, {self.seeds} seed{'s' if self.seeds > 1 else ''})"


def paired_bootstrap(
    ours: np.ndarray, theirs: np.ndarray, confidence: float = CONFIDENCE, *, seed: int = 0
) -> PairedDifference:
    """ours - theirs in accuracy with its paired-bootstrap interval. ours, theirs: (N,) bool, which of the same N
    test images (same order) each model got right. BCa interval (scipy.stats.bootstrap, BOOTSTRAP_RESAMPLES
    resamples, fixed seed: the same answers give the same interval); identical answers: a zero-width interval."""
    ours, theirs = np.asarray(ours, dtype=float), np.asarray(theirs, dtype=float)
    if ours.shape != theirs.shape or ours.ndim != 1 or len(ours) < 2:
        raise ValueError(
            f"a paired bootstrap needs two answers on the same 2+ images; got shapes {ours.shape} and {theirs.shape}"
        )
    difference = float(ours.mean() - theirs.mean())
    if np.array_equal(ours, theirs):
        return PairedDifference(difference, difference, difference, len(ours))
    result = stats.bootstrap(
        (ours, theirs),
        lambda a, b, axis: a.mean(axis=axis) - b.mean(axis=axis),
        paired=True,
        vectorized=True,
        n_resamples=BOOTSTRAP_RESAMPLES,
        confidence_level=confidence,
        method="BCa",
        rng=np.random.default_rng(seed),
    )
    return PairedDifference(
        difference, float(result.confidence_interval.low), float(result.confidence_interval.high), len(ours)
    )


def paired_verdict(difference: PairedDifference) -> str:
    """ "gain" (the whole interval of ours - theirs above 0), "loss" (below 0), or "no difference" (it holds 0)."""
    if difference.low > 0:
        return "gain"
    if difference.high < 0:
        return "loss"
    return "no difference"


@dataclass(frozen=True)
class CaseTotals:
    """Test answers summed per case (patient): what a case bootstrap resamples.

    correct: (S, K, C) images right, per seed S, per model or budget K, per case C; images: (C,) images per case.
    """

    correct: np.ndarray
    images: np.ndarray

    def accuracy(self, case_draws: np.ndarray, seed_draws: np.ndarray) -> np.ndarray:
        """(R, K) accuracy per resample: case_draws (R, C) and seed_draws (R, S) count how often each case and seed
        was drawn; a seed's accuracy is over the drawn cases' images (a case drawn twice counts twice), and the
        resample's accuracy is the mean over the drawn seeds. All-ones draws give the accuracy on the data itself."""
        seeds, models, cases = self.correct.shape
        case_draws = np.asarray(case_draws, dtype=float)
        right = case_draws @ self.correct.reshape(seeds * models, cases).T  # (R, S*K)
        per_seed = right.reshape(-1, seeds, models) / (case_draws @ self.images)[:, None, None]
        return np.einsum("rs,rsk->rk", np.asarray(seed_draws, dtype=float), per_seed) / seeds


def answers_per_seed(correct: np.ndarray, name: str, *, ndim: int) -> np.ndarray:
    """correct as float 0/1 with a leading seed axis: (N,) -> (1, N) when ndim is 2, (F, N) -> (1, F, N) when 3."""
    correct = np.asarray(correct)
    if correct.ndim == ndim - 1:
        correct = correct[None]
    if correct.ndim != ndim or correct.size == 0:
        raise ValueError(
            f"{name} must be a non-empty {ndim}-D array with one row per seed (a single seed may drop that axis); "
            f"got shape {correct.shape}"
        )
    if correct.dtype != bool and not np.isin(correct, (0, 1)).all():
        raise ValueError(f"{name} must say right (True/1) or wrong (False/0) per image; it holds other values")
    return correct.astype(float)


def case_totals(correct: np.ndarray, cases) -> CaseTotals:
    """Sum correct (S, K, N) 0/1 answers per case; cases: (N,) the case id (patient) of each image, any hashable."""
    cases = np.asarray(cases, dtype=object)
    if cases.shape != correct.shape[-1:]:
        raise ValueError(f"cases must give one case id per test image ({correct.shape[-1]}); got shape {cases.shape}")
    index: dict = {}
    codes = np.array([index.setdefault(case, len(index)) for case in cases], dtype=np.intp)
    if len(index) < 2:
        raise ValueError(
            f"a case bootstrap needs test images from 2 or more cases; these {len(cases)} images come from {len(index)}"
        )
    totals = np.zeros((len(index),) + correct.shape[:-1])
    np.add.at(totals, codes, np.moveaxis(correct, -1, 0))
    return CaseTotals(np.moveaxis(totals, 0, -1), np.bincount(codes, minlength=len(index)).astype(float))


def bootstrap_draws(resamples: int, cases: int, seeds: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(R, C) case counts and (R, S) seed counts of R resamples, each drawing C of the cases and S of the seeds with
    replacement (one seed: always drawn once). Fixed ``seed``: the same draws every time."""
    if resamples < 1:
        raise ValueError(f"a bootstrap needs 1 or more resamples; got {resamples}")
    rng = np.random.default_rng(seed)

    def counts(n: int) -> np.ndarray:
        drawn = rng.integers(0, n, size=(resamples, n)) + n * np.arange(resamples)[:, None]
        return np.bincount(drawn.ravel(), minlength=resamples * n).reshape(resamples, n)

    return counts(cases), (counts(seeds) if seeds > 1 else np.ones((resamples, 1), dtype=np.int64))


def percentile_interval(statistics: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The (1 - confidence)/2 and (1 + confidence)/2 percentiles of statistics (R,), linear between order
    statistics; +inf counts as larger than any finite value (a percentile that falls among infinities is inf)."""
    ordered = np.sort(np.asarray(statistics, dtype=float))
    if ordered.size == 0 or np.isnan(ordered).any():
        raise ValueError("a percentile interval needs one or more statistics, none of them NaN")
    bounds = []
    for quantile in ((1 - confidence) / 2, (1 + confidence) / 2):
        position = quantile * (len(ordered) - 1)
        below, above = ordered[math.floor(position)], ordered[math.ceil(position)]
        fraction = position - math.floor(position)
        bounds.append(float(below if below == above or fraction == 0 else below + (above - below) * fraction))
    return bounds[0], bounds[1]


@dataclass(frozen=True)
class BootstrapInterval:
    """A mean and its bootstrap percentile interval."""

    mean: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.mean:.4f} [{self.low:.4f}, {self.high:.4f}]"


def case_bootstrap_accuracy(
    correct: np.ndarray, cases, *, confidence: float = CONFIDENCE, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> BootstrapInterval:
    """One model's accuracy and its case-bootstrap percentile interval. correct: (S, N) bool, which of N test images
    the model trained with each of S seeds got right ((N,): one seed); cases: (N,) case id of each image. Resampling
    as in ``paired_case_bootstrap``; mean = the accuracy over all images, averaged over seeds."""
    totals = case_totals(answers_per_seed(correct, "correct", ndim=2)[:, None, :], cases)
    seeds, _, n_cases = totals.correct.shape
    mean = float(totals.accuracy(np.ones((1, n_cases)), np.ones((1, seeds)))[0, 0])
    low, high = percentile_interval(
        totals.accuracy(*bootstrap_draws(resamples, n_cases, seeds, seed))[:, 0], confidence
    )
    return BootstrapInterval(mean, low, high)


def paired_case_bootstrap(
    ours: np.ndarray,
    theirs: np.ndarray,
    cases,
    *,
    confidence: float = CONFIDENCE,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> PairedDifference:
    """ours - theirs in accuracy with a case-level (cluster) bootstrap percentile interval.

    ours, theirs: (S, N) bool, which of the same N test images the model trained with each of S seeds got right
    ((N,): one seed); row s of ours is paired with row s of theirs (same seed, same label subset). cases: (N,) the
    case (patient) id of each image, any hashable. Each of ``resamples`` resamples draws the cases with replacement,
    all images of a drawn case together, and when S > 1 the seeds with replacement; its statistic is the mean over
    the drawn seeds of the accuracy difference over the drawn cases' images. difference: on all cases and seeds.
    Fixed ``seed``: the same answers give the same interval; identical answers give a zero-width interval.
    """
    ours, theirs = answers_per_seed(ours, "ours", ndim=2), answers_per_seed(theirs, "theirs", ndim=2)
    if ours.shape != theirs.shape:
        raise ValueError(
            f"ours and theirs must be answers of the same seeds on the same images; got shapes {ours.shape} and "
            f"{theirs.shape}"
        )
    totals = case_totals(np.stack([ours, theirs], axis=1), cases)  # (S, 2, C)
    seeds, _, n_cases = totals.correct.shape
    point = totals.accuracy(np.ones((1, n_cases)), np.ones((1, seeds)))[0]
    resampled = totals.accuracy(*bootstrap_draws(resamples, n_cases, seeds, seed))
    low, high = percentile_interval(resampled[:, 0] - resampled[:, 1], confidence)
    return PairedDifference(float(point[0] - point[1]), low, high, ours.shape[1], cases=n_cases, seeds=seeds)

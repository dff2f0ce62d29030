"""Mean and 95% confidence interval over seeds, and when a difference counts as one.

The interval is Student's t: mean ± t_{0.975, n-1} · s / sqrt(n), s the sample standard deviation
(ddof 1). With one seed there is no interval. A difference is called a gain (or a loss) only when
the two intervals do not overlap; otherwise it is "no difference" at this number of seeds. With one seed,
or an interval of zero width (an arm the seeds do not vary, such as a converged probe on all labels), the
verdict is "undetermined": there is no estimate of the spread to separate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

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

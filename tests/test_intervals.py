"""Intervals over seeds (sslflow/reporting/intervals.py) against scipy.stats.t."""

import numpy as np
import pytest
from scipy import stats

from sslflow.reporting.intervals import Interval, t_interval, verdict


@pytest.mark.parametrize("values", [[0.91, 0.93, 0.92], [0.5, 0.7], [0.1, 0.4, 0.35, 0.2, 0.3]])
def test_t_interval_matches_scipy(values):
    interval = t_interval(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert interval.mean == pytest.approx(np.mean(values))
    assert (interval.low, interval.high) == pytest.approx((low, high))


def test_one_seed_has_no_interval():
    interval = t_interval([0.8])
    assert interval.half_width is None and str(interval) == "0.8000"
    assert verdict(interval, t_interval([0.1])) == "undetermined (1 seed)"
    assert verdict(Interval(0.9, 0.0, 3), Interval(0.85, 0.01, 3)).startswith("undetermined (zero-width")
    with pytest.raises(ValueError, match="no values"):
        t_interval([])


def test_a_gain_needs_separated_intervals():
    assert verdict(Interval(0.9, 0.01, 3), Interval(0.85, 0.01, 3)) == "gain"
    assert verdict(Interval(0.85, 0.01, 3), Interval(0.9, 0.01, 3)) == "loss"
    assert verdict(Interval(0.9, 0.03, 3), Interval(0.85, 0.03, 3)) == "no difference"
    assert verdict(Interval(0.05, 0.01, 3), Interval(0.2, 0.01, 3), higher_is_better=False) == "gain"  # a smaller drop


@pytest.mark.parametrize("seeds", [[], [0, 0], [0.5], [True]])
def test_seeds_must_be_distinct_integers(seeds):
    from sslflow.config import SeedsError, check_seeds

    with pytest.raises(SeedsError, match="non-empty list of distinct integers"):
        check_seeds(seeds)
    check_seeds([0, 1, 2])

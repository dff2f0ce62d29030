"""Intervals over seeds (sslflow/reporting/intervals.py) against scipy.stats.t."""

import numpy as np
import pytest
from scipy import stats

from sslflow.reporting.intervals import Interval, paired_bootstrap, paired_verdict, t_interval, verdict


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


def test_the_paired_bootstrap_interval_of_a_difference_in_accuracy():
    theirs = np.zeros(456, dtype=bool)
    theirs[:400] = True
    better = theirs.copy()
    better[400:430] = True  # right on 30 more images, wrong on none theirs got right
    difference = paired_bootstrap(better, theirs)
    assert difference.difference == pytest.approx(30 / 456) and difference.low > 0 and difference.high < 0.12 and difference.images == 456
    assert paired_verdict(difference) == "gain" and paired_verdict(paired_bootstrap(theirs, better)) == "loss"
    assert paired_bootstrap(better, theirs) == difference  # a fixed resampling seed: the same answers, the same interval
    swapped = theirs.copy()
    swapped[:3], swapped[400:403] = False, True  # as many images gained as lost: no difference
    near = paired_bootstrap(swapped, theirs)
    assert near.difference == 0 and near.low < 0 < near.high and paired_verdict(near) == "no difference"
    same = paired_bootstrap(theirs, theirs)
    assert (same.low, same.high) == (0, 0) and paired_verdict(same) == "no difference"
    assert "paired bootstrap over 456 test images" in str(difference)
    with pytest.raises(ValueError, match="same 2\\+ images"):
        paired_bootstrap(better, theirs[:-1])

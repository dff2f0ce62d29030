"""Intervals over seeds (sslflow/reporting/intervals.py) against scipy.stats.t."""

import numpy as np
import pytest
from scipy import stats

from sslflow.reporting.intervals import (
    BootstrapInterval,
    Interval,
    case_bootstrap_accuracy,
    paired_bootstrap,
    paired_case_bootstrap,
    paired_verdict,
    percentile_interval,
    t_interval,
    verdict,
)


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
    assert (
        difference.difference == pytest.approx(30 / 456)
        and difference.low > 0
        and difference.high < 0.12
        and difference.images == 456
    )
    assert paired_verdict(difference) == "gain" and paired_verdict(paired_bootstrap(theirs, better)) == "loss"
    assert (
        paired_bootstrap(better, theirs) == difference
    )  # a fixed resampling seed: the same answers, the same interval
    swapped = theirs.copy()
    swapped[:3], swapped[400:403] = False, True  # as many images gained as lost: no difference
    near = paired_bootstrap(swapped, theirs)
    assert near.difference == 0 and near.low < 0 < near.high and paired_verdict(near) == "no difference"
    same = paired_bootstrap(theirs, theirs)
    assert (same.low, same.high) == (0, 0) and paired_verdict(same) == "no difference"
    assert "paired bootstrap over 456 test images" in str(difference)
    with pytest.raises(ValueError, match="same 2\\+ images"):
        paired_bootstrap(better, theirs[:-1])


def _answers_in_cases(per_case: np.ndarray, images_per_case: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(..., C) answers per case -> (..., C * images_per_case) answers per image (every image of a case alike), case
    ids."""
    return np.repeat(per_case, images_per_case, axis=-1), np.repeat(
        [f"case-{i}" for i in range(per_case.shape[-1])], images_per_case
    )


def test_the_case_bootstrap_is_wider_than_the_image_bootstrap_when_images_of_a_case_agree():
    rng = np.random.default_rng(3)
    theirs_per_case = rng.random(100) < 0.8
    ours_per_case = theirs_per_case | (rng.random(100) < 0.15)  # right on some cases theirs got wrong
    ours_per_case[np.flatnonzero(theirs_per_case)[:3]] = False  # and wrong on a few theirs got right
    (ours, theirs), cases = _answers_in_cases(np.stack([ours_per_case, theirs_per_case]))
    by_case = paired_case_bootstrap(ours, theirs, cases)
    by_image = paired_case_bootstrap(
        ours, theirs, np.arange(len(ours))
    )  # every image its own case: the image bootstrap
    old = paired_bootstrap(ours, theirs)
    assert by_case.difference == by_image.difference == pytest.approx(ours.mean() - theirs.mean())
    assert by_case.cases == 100 and by_case.images == 500 and by_image.cases == 500
    # 5 images that always agree carry the information of 1: the interval is about sqrt(5) = 2.24 times wider
    assert by_case.high - by_case.low > 1.8 * (by_image.high - by_image.low)
    assert by_case.high - by_case.low > 1.8 * (old.high - old.low)
    assert (by_image.high - by_image.low) == pytest.approx(old.high - old.low, rel=0.15)  # same width as the old one


def test_resampling_the_seeds_widens_the_interval_when_the_seeds_disagree():
    theirs_per_case = np.arange(100) < 60
    agreeing = np.stack([theirs_per_case | (np.arange(100) >= 90)] * 3)  # every seed 10 cases better
    disagreeing = np.stack(
        [theirs_per_case | (np.arange(100) >= 100 - gained) for gained in (0, 10, 20)]
    )  # 0, 10, 20 cases better
    (theirs,), cases = _answers_in_cases(theirs_per_case[None])
    theirs = np.stack([theirs] * 3)
    agree = paired_case_bootstrap(_answers_in_cases(agreeing)[0], theirs, cases)
    disagree = paired_case_bootstrap(_answers_in_cases(disagreeing)[0], theirs, cases)
    assert agree.difference == pytest.approx(0.1) and disagree.difference == pytest.approx(0.1)
    assert agree.seeds == disagree.seeds == 3
    assert disagree.high - disagree.low > 1.5 * (agree.high - agree.low)
    one_seed = paired_case_bootstrap(_answers_in_cases(agreeing[0])[0], theirs[0], cases)
    assert (one_seed.low, one_seed.high) == pytest.approx(
        (agree.low, agree.high), abs=0.01
    )  # agreeing seeds add nothing


def test_the_case_bootstrap_reports_and_checks_its_input():
    (ours, theirs), cases = _answers_in_cases(
        np.stack([np.arange(40) % 3 > 0, np.arange(40) % 4 > 0]), images_per_case=3
    )
    difference = paired_case_bootstrap(ours, theirs, cases)
    assert paired_case_bootstrap(ours[None], theirs[None], cases) == difference  # (N,) is one seed
    assert (
        paired_case_bootstrap(ours, theirs, cases, seed=0) == difference
    )  # a fixed resampling seed: the same interval
    assert str(difference).endswith("(bootstrap over 40 test cases, 1 seed)")
    assert str(difference).startswith(f"{difference.difference:+.4f} [{difference.low:+.4f}, {difference.high:+.4f}]")
    same = paired_case_bootstrap(np.stack([ours, theirs]), np.stack([ours, theirs]), cases)
    assert (same.difference, same.low, same.high) == (0, 0, 0) and paired_verdict(same) == "no difference"
    assert str(same) == "+0.0000 [+0.0000, +0.0000] (bootstrap over 40 test cases, 2 seeds)"
    with pytest.raises(ValueError, match="same seeds on the same images"):
        paired_case_bootstrap(ours, theirs[:-1], cases)
    with pytest.raises(ValueError, match="one case id per test image"):
        paired_case_bootstrap(ours, theirs, cases[:-1])
    with pytest.raises(ValueError, match="2 or more cases"):
        paired_case_bootstrap(ours, theirs, np.zeros(len(ours)))
    with pytest.raises(ValueError, match="right \\(True/1\\) or wrong"):
        paired_case_bootstrap(ours * 0.5, theirs, cases)


def test_the_case_bootstrap_of_one_models_accuracy():
    correct, cases = _answers_in_cases(np.arange(200) % 10 < 9, images_per_case=2)  # 90% right
    accuracy = case_bootstrap_accuracy(correct, cases)
    assert accuracy.mean == pytest.approx(0.9)
    half_width = 1.96 * np.sqrt(0.9 * 0.1 / 200)  # binomial over the 200 cases
    assert (accuracy.low, accuracy.high) == pytest.approx((0.9 - half_width, 0.9 + half_width), abs=0.01)
    assert str(BootstrapInterval(0.93061, 0.91, 0.95)) == "0.9306 [0.9100, 0.9500]"
    two_seeds = case_bootstrap_accuracy(np.stack([correct, np.ones_like(correct)]), cases)
    assert two_seeds.mean == pytest.approx(0.95) and two_seeds.high == 1.0


def test_the_percentile_interval_puts_infinity_above_every_number():
    assert percentile_interval(np.arange(101.0), 0.9) == pytest.approx((5.0, 95.0))
    assert percentile_interval(np.array([1.0, 2.0, 3.0, np.inf]), 0.5) == (1.75, np.inf)
    assert percentile_interval(np.full(10, np.inf)) == (np.inf, np.inf)

"""The scorecard's intervals against textbook references: normal-theory intervals of a mean
and of a paired mean difference, coverage on simulated data, Holm's procedure by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from saekit.eval.scorecard import Score, Units, difference, holm, p_value, score

Z95 = 1.959964


def mean_units(values: np.ndarray, key: str = "") -> Units:
    return Units("features", key, values, np.ones(len(values)))


def test_interval_of_a_mean_matches_the_normal_interval():
    x = np.random.default_rng(0).normal(3.0, 2.0, size=400)
    s = score(mean_units(x))
    half = Z95 * x.std(ddof=1) / math.sqrt(len(x))
    assert s.value == pytest.approx(x.mean(), abs=1e-12)
    # percentile-bootstrap endpoints within 15% of the normal interval's half-width (the
    # Monte-Carlo error of 1,000 resamples is ~5% of the width; a wrong scale is 100%+ off)
    assert s.ci[0] == pytest.approx(x.mean() - half, abs=0.15 * half)
    assert s.ci[1] == pytest.approx(x.mean() + half, abs=0.15 * half)
    assert s.resampled == "400 features"


def test_intervals_cover_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    hits = 0
    reps = 200
    for r in range(reps):
        x = rng.normal(0.0, 1.0, size=60)
        lo, hi = score(mean_units(x), seed=r).ci
        hits += lo <= 0.0 <= hi
    # binomial sd at 95% over 200 draws is 1.5%; the percentile bootstrap runs ~1% narrow
    assert 0.89 <= hits / reps <= 0.99, hits


def test_ratio_of_sums_is_resampled_by_unit():
    """FVU-like ratio: Σ num / Σ den, not the mean of per-unit ratios."""
    num = np.array([1.0, 2.0, 3.0, 100.0])
    den = np.array([10.0, 10.0, 10.0, 1000.0])
    u = Units("held-out windows", "w", num, den)
    assert u.value == pytest.approx(106 / 1030)
    assert score(u).value == u.value
    lo, hi = score(u).ci
    assert 0.1 <= lo <= u.value <= hi <= 0.3  # within the extreme per-unit ratios


def test_paired_difference_matches_the_normal_interval_of_unit_differences():
    rng = np.random.default_rng(2)
    common = rng.normal(0.0, 5.0, size=300)  # shared by both: the windows' difficulty
    a = common + rng.normal(0.3, 0.5, size=300)
    b = common + rng.normal(0.0, 0.5, size=300)
    d = difference(mean_units(a, "same"), mean_units(b, "same"))
    diffs = a - b
    half = Z95 * diffs.std(ddof=1) / math.sqrt(len(diffs))
    assert d.paired and d.value == pytest.approx(diffs.mean())
    assert d.ci[0] == pytest.approx(diffs.mean() - half, abs=0.12 * half)
    assert d.ci[1] == pytest.approx(diffs.mean() + half, abs=0.12 * half)
    assert d.p < 0.01
    # the same values measured on different units: independent resamples, a ~10x wider interval
    u = difference(mean_units(a, "first"), mean_units(b, "second"))
    assert not u.paired and (u.ci[1] - u.ci[0]) > 5 * (d.ci[1] - d.ci[0])
    assert u.p > 0.05


def test_margin_is_over_the_strongest_control_in_the_score_direction():
    rng = np.random.default_rng(3)
    mine = mean_units(rng.normal(0.8, 0.1, 200))
    weak, strong = mean_units(rng.normal(0.5, 0.1, 200)), mean_units(rng.normal(0.7, 0.1, 200))
    s = score(mine, {"random": weak, "init": strong})
    assert s.strongest_control == "init"
    assert s.margin == pytest.approx(mine.value - strong.value)
    assert s.margin_ci is not None and 0 < s.margin_ci[0] < s.margin < s.margin_ci[1]
    # lower is better: the strongest control is the lowest; the margin stays > 0 when better
    low = score(mean_units(np.full(5, 0.1)), {"random": mean_units(np.full(5, 0.4)),
                                              "init": mean_units(np.full(5, 0.3))},
                higher_is_better=False)  # fmt: skip
    assert low.strongest_control == "init" and low.margin == pytest.approx(0.2)


def test_holm_by_hand_and_p_values():
    # sorted: 0.005 <= 0.05/4, 0.01 <= 0.05/3, 0.03 > 0.05/2: stop
    assert holm([0.01, 0.04, 0.03, 0.005]) == [True, False, False, True]
    assert holm([0.2, 0.001]) == [False, True]
    assert p_value(np.array([1.0, 2.0, 3.0])) == 0.0
    assert p_value(np.array([-1.0, 1.0, -2.0, 2.0])) == pytest.approx(1.0)


def test_json_round_trip_keeps_units_and_margins():
    rng = np.random.default_rng(4)
    s = score(mean_units(rng.random(50), "k"), {"random": mean_units(rng.random(50), "k")})
    back = Score.from_json(s.to_json())
    assert back.value == pytest.approx(s.value) and back.ci == pytest.approx(s.ci)
    assert back.margin == pytest.approx(s.margin) and back.margin_ci == pytest.approx(s.margin_ci)
    assert back.units.key == "k" and np.allclose(back.units.num, s.units.num, rtol=1e-6)


def test_none_and_nan_values_are_left_out_of_a_mean():
    u = Units.mean_of([0.5, None, float("nan"), 0.7], "features")
    assert len(u) == 2 and u.value == pytest.approx(0.6)


def test_beats_controls_needs_enough_units():
    """A margin over a handful of units (a light steering run's 2 features) has a degenerate
    bootstrap interval: it is shown, but never called a win over the controls."""
    from saekit.eval.scorecard import MIN_UNITS, beats_controls

    def card(n: int, gap: float) -> Score:
        key = f"u{n}"
        mine = Units("features", key, np.linspace(1.0, 1.1, n) + gap, np.ones(n))
        ctrl = Units("features", key, np.linspace(1.0, 1.1, n), np.ones(n))
        return score(mine, {"random": ctrl})

    few, many = card(MIN_UNITS - 1, 0.5), card(MIN_UNITS, 0.5)
    assert few.margin_ci is not None and few.margin_ci[0] > 0  # the interval alone says "yes"
    assert beats_controls(few.margin_ci, len(few.units)) == "few"
    assert beats_controls(many.margin_ci, len(many.units)) == "yes"
    worse = card(20, -0.5)
    assert beats_controls(worse.margin_ci, len(worse.units)) == "no"
    level = score(
        Units.mean_of(np.arange(20.0), "features", "k"),
        {"random": Units.mean_of(np.arange(20.0)[::-1], "features", "k")},
    )
    assert beats_controls(level.margin_ci, len(level.units)) == "~"

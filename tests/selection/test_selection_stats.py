"""Bootstrap CIs against scipy and against an independent paired computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from saekit.selection.stats import bootstrap_ci, fmt_ci, paired_ci


@pytest.mark.parametrize("seed", [0, 1])
def test_bootstrap_ci_matches_scipy_percentile(seed: int) -> None:
    x = np.random.default_rng(seed).beta(2, 5, size=30)  # a skewed, precision-like sample
    ours = bootstrap_ci(x.tolist(), n_boot=20_000, seed=seed)
    ref = stats.bootstrap(
        (x,),
        np.mean,
        confidence_level=0.95,
        n_resamples=20_000,
        method="percentile",
        random_state=np.random.default_rng(seed + 100),
    ).confidence_interval
    se = x.std(ddof=1) / math.sqrt(x.size)
    # Two Monte Carlo estimates of the same percentiles: they agree to a few % of a
    # standard error; a t- or normal-interval, or a 90% level, would be off by ≥ 10%.
    assert ours["lo"] == pytest.approx(ref.low, abs=0.05 * se)
    assert ours["hi"] == pytest.approx(ref.high, abs=0.05 * se)
    assert ours["mean"] == pytest.approx(float(x.mean()), rel=1e-12)
    assert ours["n"] == 30


def test_bootstrap_ci_level_and_nan() -> None:
    x = np.random.default_rng(0).normal(size=40).tolist()
    wide, narrow = bootstrap_ci(x, 0.95), bootstrap_ci(x, 0.5)
    assert wide["lo"] < narrow["lo"] < narrow["hi"] < wide["hi"]
    assert bootstrap_ci([*x, math.nan]) == bootstrap_ci(x)  # NaN (an undefined AUC) dropped
    assert math.isnan(bootstrap_ci([])["mean"])
    assert fmt_ci({"mean": 0.5, "lo": 0.25, "hi": 0.75}, 2) == "0.50 [0.25, 0.75]"


def test_paired_ci_is_the_ci_of_differences() -> None:
    rng = np.random.default_rng(3)
    base = rng.uniform(0.2, 0.9, size=24)  # per-target difficulty, shared by both methods
    a, b = base + 0.03 + rng.normal(0, 0.01, 24), base + rng.normal(0, 0.01, 24)
    d = paired_ci(a.tolist(), b.tolist(), n_boot=20_000)
    # Independent computation: the percentile bootstrap of the differences, drawn by hand.
    diffs = a - b
    idx = np.random.default_rng(7).integers(0, 24, (20_000, 24))
    lo, hi = np.quantile(diffs[idx].mean(axis=1), [0.025, 0.975])
    se = diffs.std(ddof=1) / math.sqrt(24)
    assert d["lo"] == pytest.approx(lo, abs=0.05 * se)
    assert d["hi"] == pytest.approx(hi, abs=0.05 * se)
    assert d["wins"] == pytest.approx(float((diffs > 0).mean()))
    # Pairing removes the shared difficulty: the unpaired intervals overlap, the paired one
    # excludes 0.
    ca, cb = bootstrap_ci(a.tolist()), bootstrap_ci(b.tolist())
    assert ca["lo"] < cb["hi"] and d["lo"] > 0
    with pytest.raises(ValueError, match="equal lengths"):
        paired_ci([1.0], [1.0, 2.0])

"""The steering study's statistics against independent references: scipy's bootstrap, a plain
numpy two-way bootstrap, coverage on data with a known mean, and a brute-force Pareto area."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from saekit.errors import SaekitError
from saekit.steering.stats import mean_interval, paired_difference, pareto_area
from saekit.steering.study import site_study

N_BOOT = 20_000
"""Enough resamples that two bootstraps' percentiles agree to ~2% of the interval's width."""


def _scipy_interval(*samples: np.ndarray, statistic, paired: bool = False) -> tuple[float, float]:
    res = stats.bootstrap(
        samples,
        statistic,
        paired=paired,
        n_resamples=N_BOOT,
        method="percentile",
        random_state=np.random.default_rng(1),
        vectorized=False,
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def test_one_column_interval_matches_scipy_percentile_bootstrap():
    x_F = np.random.default_rng(0).gamma(2.0, 1.0, size=40)
    ours = mean_interval(torch.tensor(x_F)[:, None], n_boot=N_BOOT)
    lo, hi = _scipy_interval(x_F, statistic=np.mean)
    width = hi - lo
    assert ours.mean == pytest.approx(x_F.mean())
    assert abs(ours.lo - lo) < 0.03 * width and abs(ours.hi - hi) < 0.03 * width


def test_one_feature_paired_difference_matches_scipy_paired_bootstrap():
    rng = np.random.default_rng(2)
    prompt_P = rng.normal(0, 3.0, size=24)  # a strong prompt effect shared by both methods
    a_P = prompt_P + 0.5 + rng.normal(0, 0.3, size=24)
    b_P = prompt_P + rng.normal(0, 0.3, size=24)
    ours = paired_difference(torch.tensor(a_P)[None], torch.tensor(b_P)[None], n_boot=N_BOOT)
    lo, hi = _scipy_interval(a_P, b_P, statistic=lambda a, b: a.mean() - b.mean(), paired=True)
    width = hi - lo
    assert abs(ours.lo - lo) < 0.03 * width and abs(ours.hi - hi) < 0.03 * width
    # Unpaired, the prompt effect (sd 3) would make the interval ~10× wider than this one.
    assert width < 0.5 and ours.lo > 0


def test_two_way_interval_matches_a_plain_numpy_bootstrap():
    """Features resampled per matrix, prompts resampled once for both (indices, not counts)."""
    rng = np.random.default_rng(3)
    a_FP = rng.normal(0, 1, (12, 10)) + rng.normal(0, 1, (1, 10))
    b_GP = rng.normal(0.3, 1, (9, 10)) + rng.normal(0, 1, (1, 10))
    ref_a, ref_d = [], []
    for _ in range(N_BOOT // 4):
        p = rng.integers(0, 10, 10)
        fa, fb = rng.integers(0, 12, 12), rng.integers(0, 9, 9)
        ma, mb = a_FP[fa][:, p].mean(), b_GP[fb][:, p].mean()
        ref_a.append(ma)
        ref_d.append(ma - mb)
    ours_a = mean_interval(torch.tensor(a_FP), n_boot=N_BOOT)
    ours_d = paired_difference(torch.tensor(a_FP), torch.tensor(b_GP), n_boot=N_BOOT)
    for ours, ref in ((ours_a, ref_a), (ours_d, ref_d)):
        lo, hi = np.percentile(ref, [2.5, 97.5])
        width = hi - lo
        assert abs(ours.lo - lo) < 0.05 * width and abs(ours.hi - hi) < 0.05 * width


def test_interval_covers_a_known_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(4)
    covered = 0
    trials = 200
    for t in range(trials):
        x_FP = rng.normal(1.0, 1.0, (32, 1))
        ci = mean_interval(torch.tensor(x_FP), n_boot=400, seed=t)
        covered += ci.lo <= 1.0 <= ci.hi
    # Percentile bootstrap of a mean at n = 32: ~93-95%. A wrong quantile (e.g. 90% or 99%
    # intervals) or resampling bug lands outside this band.
    assert 0.88 <= covered / trials <= 0.99


def _brute_area(delta_ce: list[float], concept: list[float], x_max: float) -> float:
    xs = np.linspace(0, x_max, 200_001)[:-1] + x_max / 400_000  # midpoints
    front = np.zeros_like(xs)
    for x, c in zip(delta_ce, concept):
        front = np.where(xs >= max(x, 0.0), np.maximum(front, c), front)
    return float(front.mean())


@pytest.mark.parametrize("seed", range(5))
def test_pareto_area_matches_brute_force_integration(seed):
    rng = np.random.default_rng(seed)
    ce = rng.uniform(-0.1, 1.5, 4).tolist()
    c = rng.uniform(-0.5, 3.0, 4).tolist()
    assert pareto_area(ce, c, 1.0) == pytest.approx(_brute_area(ce, c, 1.0), abs=1e-4)


def test_pareto_area_by_hand_and_bad_input():
    # Frontier 0 on [0, .2), 1 on [.2, .5), 3 on [.5, 1): (0.3·1 + 0.5·3) / 1 = 1.8.
    assert pareto_area([0.5, 0.2, 0.8], [3.0, 1.0, 2.0], 1.0) == pytest.approx(1.8)
    with pytest.raises(SaekitError, match="positive"):
        pareto_area([0.1], [1.0], 0.0)
    with pytest.raises(SaekitError, match="one concept gain"):
        pareto_area([0.1, 0.2], [1.0], 1.0)
    with pytest.raises(SaekitError, match="equal prompts"):
        paired_difference(torch.zeros(3, 4), torch.zeros(3, 5))


def _direction(kind: str, rows: list[tuple[float, float, list[float]]]) -> dict:
    """A direction's curve: (κ, ΔCE_ref, per-prompt concept gain) rows; S = c, f = 1."""
    curve = []
    for kappa, ce, c_P in rows:
        per = {"score": c_P, "concept_gain": c_P, "fluency": [1.0] * len(c_P)}
        c = float(np.mean(c_P))
        curve.append(
            {
                "kappa": kappa,
                "reached": True,
                "delta_ce_ref": ce,
                "concept_gain": c,
                "per_prompt": per,
            }
        )
    return {"kind": kind, "curve": curve}


def test_site_study_reports_the_method_means_areas_and_pairs():
    rng = np.random.default_rng(5)
    results = {}
    for f in range(6):
        results[f"topk#{f}"] = _direction(
            "topk",
            [
                (0.1, 0.2, rng.normal(1.0, 0.1, 4).tolist()),
                (0.5, 0.6, rng.normal(2.0, 0.1, 4).tolist()),
            ],
        )
        results[f"random:{f}"] = _direction(
            "random",
            [
                (0.1, 0.4, rng.normal(0.0, 0.1, 4).tolist()),
                (0.5, 1.0, rng.normal(0.1, 0.1, 4).tolist()),
            ],
        )
    study = site_study(results, (0.1, 0.5), n_boot=500)
    # X = median ΔCE at the largest budget over all directions: median of {0.6 ×6, 1.0 ×6}.
    assert study["pareto_x_max"] == pytest.approx(0.8)
    topk = study["methods"]["topk"]
    at_half = topk["budgets"][1]
    expected = np.mean(
        [results[f"topk#{f}"]["curve"][1]["per_prompt"]["concept_gain"] for f in range(6)]
    )
    assert at_half["concept_gain"]["mean"] == pytest.approx(expected)
    assert at_half["concept_gain"]["lo"] < expected < at_half["concept_gain"]["hi"]
    # A topk direction's frontier: 0 below 0.2, ~1 on [0.2, 0.6), ~2 on [0.6, 0.8) → ≈ 1.0.
    assert topk["pareto_auc"]["mean"] == pytest.approx(1.0, abs=0.1)
    diffs = {(p["metric"], p["kappa"]): p for p in study["pairs"]}
    assert diffs["score", 0.5]["a"] == "random" and diffs["score", 0.5]["hi"] < -1.5
    assert diffs["pareto_auc", None]["hi"] < -0.8

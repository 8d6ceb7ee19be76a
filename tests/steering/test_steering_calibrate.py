"""KL calibration: monotone in α, hits its targets, records unreached ones."""

from __future__ import annotations

import pytest

from saekit.errors import SaekitError
from saekit.steering.calibrate import calibrate
from saekit.steering.directions import Direction
from saekit.steering.protocol import SiteStudy, SteeringConfig


def test_bisection_hits_targets_and_records_unreached():
    calls = []

    def kl(a: float) -> float:
        calls.append(a)
        return 0.01 * a * a

    cals = calibrate(kl, [0.5, 0.05, 5.0], alpha_max=10.0, rel_tol=0.02)
    assert [c.kappa for c in cals] == [0.05, 0.5, 5.0]
    for c in cals[:2]:
        assert c.reached and abs(c.kl - c.kappa) <= 0.02 * c.kappa
        assert c.alpha == pytest.approx((c.kappa / 0.01) ** 0.5, rel=0.02)
    assert not cals[2].reached  # 0.01 · 10² = 1 < 5
    assert cals[2].kl == pytest.approx(1.0)
    neg = calibrate(lambda a: 0.01 * a * a, [0.5], alpha_max=10.0, sign=-1.0)
    assert neg[0].alpha < 0 and neg[0].reached


def test_bad_calibration_arguments():
    with pytest.raises(SaekitError, match="alpha_max"):
        calibrate(lambda a: a, [0.1], alpha_max=0.0)
    with pytest.raises(SaekitError, match="KL targets"):
        calibrate(lambda a: a, [0.0], alpha_max=1.0)
    with pytest.raises(SaekitError, match="prompts"):
        SteeringConfig(prompts=("only one",))


def test_model_kl_is_monotone_and_calibration_hits_targets(steer_planted):
    p = steer_planted
    cfg = SteeringConfig(prompts=p.prompts, gen_tokens=2, n_random=0)
    d = Direction("planted", "vector", p.hook, p.v_D, p.ids)
    study = SiteStudy(p.model, p.hook, [d], cfg)
    grid = [study.alpha_max * f for f in (0.0, 0.05, 0.1, 0.2, 0.4, 0.7, 1.0)]
    kls = [study.kl_sel(d, a) for a in grid]
    assert kls[0] == pytest.approx(0.0, abs=1e-6)
    assert all(b >= a for a, b in zip(kls, kls[1:]))
    cals = study.calibrate(d, (0.05, 0.1, 0.25, 0.5))
    assert all(c.reached for c in cals)
    for c in cals:
        assert abs(study.kl_sel(d, c.alpha) - c.kappa) <= cfg.rel_tol * c.kappa
    assert [c.alpha for c in cals] == sorted(c.alpha for c in cals)

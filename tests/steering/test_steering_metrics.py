"""Each steering metric against a hand computation."""

from __future__ import annotations

import math

import pytest
import torch

from saekit.steering.metrics import (
    concept_gain,
    concept_mass,
    fluency,
    harmonic,
    hit_at,
    kl_last,
    rep3,
    target_rate,
)


def test_kl_last_matches_hand_computation():
    p0 = torch.tensor([[0.5, 0.25, 0.25]])
    p1 = torch.tensor([[0.25, 0.25, 0.5]])
    want = 0.5 * math.log(0.5 / 0.25) + 0.25 * math.log(0.25 / 0.5)
    assert float(kl_last(p0.log(), p1.log())[0]) == pytest.approx(want, rel=1e-6)
    assert float(kl_last(p0.log(), p0.log())[0]) == pytest.approx(0.0, abs=1e-7)


def test_concept_mass_gain_and_hits():
    logp = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1]]).log()
    targets = torch.tensor([1, 2])
    m = concept_mass(logp, targets)
    assert m.tolist() == pytest.approx([math.log(0.5), math.log(0.2)], rel=1e-6)
    m0 = torch.tensor([math.log(0.25), math.log(0.25), math.log(0.25)])
    m1 = torch.tensor([math.log(0.5), math.log(0.125), 0.0])
    # log 0.5 − log 0.25 = log 2 of a distance log 4: exactly half-way to certainty.
    assert concept_gain(m0, m1).tolist() == pytest.approx([0.5, 0.0, 1.0], abs=1e-6)
    assert hit_at(logp, targets, k=1).tolist() == [0.0, 0.0]
    assert hit_at(logp, targets, k=2).tolist() == [1.0, 1.0]


def test_rep3_rate_fluency_and_harmonic():
    assert rep3([1, 2, 3, 4, 5]) == 0.0
    assert rep3([7, 7, 7, 7, 7]) == pytest.approx(1 - 1 / 3)  # 3 trigrams, 1 distinct
    assert rep3([1, 2]) == 0.0
    assert target_rate([1, 2, 3, 4], {2, 4, 9}) == 0.5
    assert target_rate([], {1}) == 0.0
    f = fluency(torch.tensor([-1.0, 0.0, math.log(2)]), torch.tensor([0.0, 0.5, 0.0]))
    assert f.tolist() == pytest.approx([1.0, 0.5, 0.5], rel=1e-6)
    s = harmonic(torch.tensor([0.5, 0.0, 1.0]), torch.tensor([1.0, 0.7, 0.0]))
    assert s.tolist() == pytest.approx([2 * 0.5 / 1.5, 0.0, 0.0], rel=1e-6)

"""Generators: determinism, firing statistics, tree constraints, requested geometry."""

from __future__ import annotations

import itertools

import pytest
import torch

from saekit.activations.synthetic import (
    AbsorptionToy,
    FlatSuperposition,
    HierarchicalTree,
    group_cosine,
    mixing_eps,
)
from saekit.errors import SaekitError


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_same_seeds_give_identical_data_and_different_seeds_differ() -> None:
    a, b = FlatSuperposition(seed=0), FlatSuperposition(seed=0)
    assert torch.equal(a.features_FD, b.features_FD)
    assert torch.equal(a.sample(256, gen(1)).x_BD, b.sample(256, gen(1)).x_BD)
    assert torch.equal(a.sample(256).x_BD, b.sample(256).x_BD)  # default generator is seeded
    assert not torch.equal(a.sample(256, gen(1)).x_BD, a.sample(256, gen(2)).x_BD)
    assert not torch.equal(a.features_FD, FlatSuperposition(seed=1).features_FD)
    tree_a, tree_b = HierarchicalTree(level=3, seed=4), HierarchicalTree(level=3, seed=4)
    assert torch.equal(tree_a.sample(64, gen(0)).codes_BF, tree_b.sample(64, gen(0)).codes_BF)


def test_flat_features_are_unit_and_quasi_orthogonal() -> None:
    data = FlatSuperposition(n_features=256, d_in=32, seed=0)
    assert data.features_FD.shape == (256, 32)
    assert torch.allclose(data.features_FD.norm(dim=1), torch.ones(256), atol=1e-6)
    cos_FF = data.features_FD @ data.features_FD.T
    off = cos_FF[~torch.eye(256, dtype=torch.bool)]
    # Random unit vectors in 32 dims: E cos² = 1/32 = 0.031.
    assert abs(off.pow(2).mean().item() - 1 / 32) < 0.003


def test_flat_firing_frequencies_follow_the_power_law() -> None:
    data = FlatSuperposition(n_features=64, d_in=32, alpha=0.5, expected_l0=4.0, seed=0)
    p_F = data.firing_prob_F.double()
    # p_i ∝ i^-1.5 with Σ p = 4, first feature capped at 1: ratio p_2/p_3 = (3/2)^1.5 = 1.837.
    assert abs(p_F[1] / p_F[2] - 1.5**1.5) < 1e-5
    sample = data.sample(20_000, gen(0))
    freq_F = (sample.codes_BF > 0).double().mean(dim=0)
    std_F = (p_F * (1 - p_F) / 20_000).sqrt()
    assert ((freq_F - p_F).abs() <= 5 * std_F + 1e-3).all()
    slope = (
        torch.linalg.lstsq(
            torch.stack([torch.ones(60), torch.arange(5, 65).double().log()], dim=1),
            freq_F[4:64].log()[:, None],
        )
        .solution[1]
        .item()
    )
    assert abs(slope - (-1.5)) < 0.15
    assert (sample.codes_BF >= 0).all()
    assert sample.codes_BF.max() <= 2.0  # U(0, 2) magnitudes


def test_flat_noise_and_normal_magnitudes() -> None:
    data = FlatSuperposition(n_features=16, d_in=8, magnitude="normal", noise_std=0.1, seed=0)
    s = data.sample(4000, gen(0))
    residual_BD = s.x_BD - s.codes_BF @ data.features_FD
    assert abs(residual_BD.std().item() - 0.1) < 0.005
    mags = s.codes_BF[s.codes_BF > 0]
    assert abs(mags.mean().item() - 1.0) < 0.02 and abs(mags.std().item() - 0.25) < 0.02


PUBLISHED_EPS_CHILDREN = [0, 0.0895, 0.163, 0.226, 0.282, 0.3335, 0.3825, 0.431, 0.482]
PUBLISHED_EPS_PARENTS = [0, 0.3, 0.44, 0.529, 0.594, 0.6467, 0.692, 0.733, 0.7739]


@pytest.mark.parametrize("level", range(9))
def test_tree_cosines_match_the_requested_level(level: int) -> None:
    # Our bisection reproduces MP-SAE's hand-tuned mixing schedules (groups of 3 and of 11).
    assert abs(mixing_eps(0.1 * level, 3) - PUBLISHED_EPS_CHILDREN[level]) < 2e-3
    assert abs(mixing_eps(0.1 * level, 11) - PUBLISHED_EPS_PARENTS[level]) < 2e-3
    assert abs(group_cosine(mixing_eps(0.1 * level, 5), 5) - 0.1 * level) < 1e-9
    tree = HierarchicalTree(level=level, seed=level)
    f_FD = tree.features_FD.double()
    assert f_FD.shape == (20, 20)
    cos_FF = f_FD @ f_FD.T
    for p in tree.parents:
        for a, b in itertools.combinations(tree.children_of(p), 2):
            assert abs(cos_FF[a, b].item() - 0.1 * level) < 1e-5
        for c in tree.children_of(p):
            assert abs(cos_FF[p, c].item()) < 1e-5  # parent ⟂ its children
    for a, b in itertools.combinations(tree.parents + tree.leaves, 2):
        assert abs(cos_FF[a, b].item() - 0.1 * level) < 1e-5
    c0, c1 = tree.children_of(0)[0], tree.children_of(1)[0]
    assert abs(cos_FF[c0, c1].item()) < 1e-5  # cousins stay orthogonal


def test_tree_sampling_respects_the_hierarchy() -> None:
    tree = HierarchicalTree(level=4, seed=0)
    assert abs(tree.expected_l0 - 1.36) < 1e-9
    codes_BF = tree.sample(20_000, gen(0)).codes_BF
    on_BF = codes_BF > 0
    top = tree.parents + tree.leaves
    # Exactly one top-level item per token (up to magnitudes clipped to 0: P ≈ 1e-9).
    assert (on_BF[:, top].sum(dim=1) == 1).all()
    for p in tree.parents:
        children = tree.children_of(p)
        assert not (on_BF[:, children].any(dim=1) & ~on_BF[:, p]).any()  # child ⇒ parent
        assert (on_BF[:, children].sum(dim=1) <= 1).all()  # siblings exclusive
        assert (tree.parent_F[children] == p).all()
        # P(parent) = 0.2, P(child | parent) = 0.2: σ of a 20k-sample frequency ≈ 0.003.
        assert abs(on_BF[:, p].double().mean().item() - 0.2) < 0.015
        child_rate = on_BF[on_BF[:, p]][:, children].double().mean(dim=0)
        assert (child_rate - 0.2).abs().max() < 0.03
    assert abs(on_BF.sum(dim=1).double().mean().item() - 1.36) < 0.02
    assert abs(codes_BF[on_BF].mean().item() - 1.5) < 0.01


def test_tree_rejects_impossible_settings() -> None:
    with pytest.raises(SaekitError):
        HierarchicalTree(level=10)
    with pytest.raises(SaekitError):
        HierarchicalTree(n_parents=3, parent_prob=0.4)
    with pytest.raises(SaekitError):
        HierarchicalTree(d_in=10)  # 20 orthonormal directions do not fit in 10 dims


def test_tree_in_wider_space_with_noise() -> None:
    tree = HierarchicalTree(level=2, d_in=32, noise_std=0.01, seed=0)
    assert tree.features_FD.shape == (20, 32)
    assert tree.sample(8, gen(0)).x_BD.shape == (8, 32)


@pytest.mark.parametrize("q", [0.2, 0.5, 0.9])
def test_absorption_toy_child_only_with_parent(q: float) -> None:
    toy = AbsorptionToy(parent_prob=0.25, child_given_parent=q, seed=0)
    on_BF = toy.sample(20_000, gen(0)).codes_BF > 0
    assert not (on_BF[:, toy.child] & ~on_BF[:, toy.parent]).any()
    assert abs(on_BF[:, toy.parent].double().mean().item() - 0.25) < 0.015
    assert abs(on_BF[on_BF[:, toy.parent], toy.child].double().mean().item() - q) < 0.03
    assert abs(on_BF[:, 2:].double().mean().item() - 0.1) < 0.01
    f_FD = toy.features_FD
    assert torch.allclose(f_FD @ f_FD.T, torch.eye(8), atol=1e-5)
    assert toy.parent_F.tolist() == [-1, 0, -1, -1, -1, -1, -1, -1]


def test_stream_for_a_trainer() -> None:
    data = FlatSuperposition(n_features=16, d_in=8, seed=0)
    stream = data.stream(n_tokens=64, batch_size=32, seed=3)
    first, second = stream.next_batch()["synthetic"], stream.next_batch()["synthetic"]
    assert first.shape == (32, 8) and not torch.equal(first, second)
    pool = data.sample(64, gen(3)).x_BD
    assert torch.equal(torch.cat([first, second]).sort(dim=0).values, pool.sort(dim=0).values)
    again = data.stream(n_tokens=64, batch_size=32, seed=3).next_batch()["synthetic"]
    assert torch.equal(again, first)


def test_sparse_map_outputs_are_the_thresholded_codes_through_the_map() -> None:
    from saekit.activations.synthetic_map import SparseMap

    m = SparseMap(n_features=16, d_in=16, d_out=12, n_out_features=20, fanout=3, threshold=0.5)
    assert torch.allclose(m.features_FD @ m.features_FD.T, torch.eye(16), atol=1e-5)
    assert ((m.map_FG > 0).sum(dim=1) == 3).all()
    assert ((m.map_FG == 0) | ((m.map_FG >= 0.5) & (m.map_FG < 1.5))).all()
    s = m.sample(512, gen(3))
    assert torch.allclose(s.x_BD, s.codes_BF @ m.features_FD, atol=1e-5)
    expected_BO = (s.codes_BF - 0.5).relu() @ m.map_FG @ m.out_features_GO
    assert torch.allclose(s.y_BO, expected_BO, atol=1e-5)
    assert (s.codes_BF > 0).sum(dim=1).float().mean() == pytest.approx(4.0, rel=0.2)
    batch = next(iter(m.stream(512, batch_size=64, seed=3)))
    assert set(batch) == {"in", "out"} and batch["out"].shape == (64, 12)
    with pytest.raises(SaekitError, match="threshold must be in"):
        SparseMap(threshold=2.5)

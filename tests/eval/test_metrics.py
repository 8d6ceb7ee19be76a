"""Every metric against a hand computation on a few explicit numbers."""

from __future__ import annotations

import math

import pytest
import torch

from saekit.eval import metrics as M

# Three tokens, d_in = 2. Per-dimension mean (3, 2); centred rows (-2, 0), (0, 2), (2, -2):
# total variance 4 + 0 + 0 + 4 + 4 + 4 = 16. Residuals (0, 1), (0, 0), (1, 0): error 2.
X = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 0.0]])
X_HAT = torch.tensor([[1.0, 1.0], [3.0, 4.0], [4.0, 0.0]])


def close(a: torch.Tensor | float, b: float) -> bool:
    return math.isclose(float(a), b, rel_tol=1e-6, abs_tol=1e-9)


def test_fvu_and_explained_variance_use_the_per_dimension_mean() -> None:
    assert close(M.fvu(X, X_HAT), 2 / 16)
    assert close(M.explained_variance(X, X_HAT), 1 - 2 / 16)
    # Against zero (SAELens < 6.45.1) the denominator would be Σ‖x‖² = 55, not 16.
    assert not close(M.fvu(X, X_HAT), 2 / 55)


def test_fvu_is_differentiable_so_it_can_be_a_loss() -> None:
    x_hat = X_HAT.clone().requires_grad_(True)
    M.fvu(X, x_hat).backward()
    # d/dx̂ Σ(x − x̂)²/16 = −2(x − x̂)/16.
    assert x_hat.grad is not None
    assert torch.allclose(x_hat.grad, -2 * (X - X_HAT) / 16)


def test_mse_sums_over_dimensions_and_averages_over_tokens() -> None:
    assert close(M.mse(X, X_HAT), 2 / 3)
    assert close(M.mse_per_element(X, X_HAT), 2 / 6)


def test_cosine_l2_ratio_and_relative_bias() -> None:
    # Token 1: cos((1,2),(1,1)) = 3/√10; tokens 2 and 3 are parallel.
    assert close(M.cosine_similarity(X, X_HAT), (3 / math.sqrt(10) + 2) / 3)
    assert close(M.l2_ratio(X, X_HAT), (math.sqrt(2) / math.sqrt(5) + 1 + 4 / 5) / 3)
    # mean‖x̂‖² = (2 + 25 + 16)/3, mean⟨x, x̂⟩ = (3 + 25 + 20)/3.
    assert close(M.relative_reconstruction_bias(X, X_HAT), 43 / 48)


def test_cosine_of_a_zero_reconstruction_is_zero_not_nan() -> None:
    assert close(M.cosine_similarity(X, torch.zeros_like(X)), 0.0)


Z = torch.tensor([[0.0, 1.5, 0.0, -2.0], [0.0, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, 1.0]])


def test_l0_counts_signed_codes() -> None:
    assert M.l0_per_token(Z).tolist() == [2.0, 0.0, 2.0]
    assert M.l0_stats(Z) == (4 / 3, 0.0, 2.0)


def test_dead_and_dense_fractions_from_firing_counts() -> None:
    counts_S = M.firing_counts(Z)
    assert counts_S.tolist() == [1, 1, 0, 2]
    assert close(M.dead_fraction(counts_S), 1 / 4)
    # Densities 1/3, 1/3, 0, 2/3: three above 10%, one above 50%.
    assert close(M.dense_fraction(counts_S, n_tokens=3), 3 / 4)
    assert close(M.dense_fraction(counts_S, n_tokens=3, threshold=0.5), 1 / 4)


def test_log10_density_and_histogram() -> None:
    counts_S = torch.tensor([0, 1, 10, 100])
    density_S = M.log10_density(counts_S, n_tokens=100)
    assert torch.allclose(density_S, torch.tensor([-10.0, -2.0, -1.0, 0.0], dtype=torch.float64))
    hist = M.density_histogram(counts_S, n_tokens=100, n_bins=10)
    # Unit-wide bins over [-10, 0]: dead → first bin, 1% → [-2, -1), 10% and 100% → last bin.
    assert hist.counts_N.tolist() == [1, 0, 0, 0, 0, 0, 0, 0, 1, 2]
    assert hist.edges_N1[0] == -10 and hist.edges_N1[-1] == 0 and len(hist.edges_N1) == 11


def test_kl_divergence_clean_first() -> None:
    # Token 1: p = (1/2, 1/2), q = (1/4, 3/4); token 2: identical. Logit offsets must not matter.
    clean = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    other = torch.tensor([[math.log(1) + 5, math.log(3) + 5], [1.0, 2.0]])
    kl_1 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert torch.allclose(M.kl_divergence_per_token(clean, other), torch.tensor([kl_1, 0.0]))
    assert close(M.kl_divergence(clean, other), kl_1 / 2)
    # KL(q ‖ p) differs: argument order is part of the definition.
    assert not close(M.kl_divergence(other, clean), kl_1 / 2)


def test_next_token_loss_shifts_by_one() -> None:
    tokens_BT = torch.tensor([[0, 1, 0]])
    # Position 0 predicts token 1 with p = 3/4; position 1 predicts token 0 with p = 1/2.
    logits_BTV = torch.tensor([[[0.0, math.log(3)], [0.0, 0.0], [9.0, -9.0]]])
    loss_BT = M.next_token_loss(logits_BTV, tokens_BT)
    assert loss_BT.shape == (1, 2)
    assert torch.allclose(loss_BT, torch.tensor([[-math.log(3 / 4), math.log(2)]]))


def test_ce_and_kl_scores() -> None:
    ce = M.ce_loss_score(torch.tensor(2.0), torch.tensor(2.5), torch.tensor(6.0))
    assert close(ce, 3.5 / 4)
    assert close(M.kl_div_score(torch.tensor(0.1), torch.tensor(2.0)), 1.9 / 2.0)


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    # An offset of 1000 against unit spread: E‖x‖² − ‖Ex‖² would cancel ~6 of 7 fp32 digits.
    x = 1000 + torch.randn(1000, 8, generator=g, dtype=torch.float64)
    return x, x + 0.3 * torch.randn(1000, 8, generator=g, dtype=torch.float64)


def test_streamed_reconstruction_equals_one_shot() -> None:
    x, x_hat = _data()
    stats = M.ReconstructionStats(d_in=8)
    for sl in (slice(0, 1), slice(1, 301), slice(301, 301), slice(301, 1000)):
        stats.update(x[sl], x_hat[sl])
    got = stats.compute()
    assert got.n_tokens == 1000
    assert math.isclose(got.fvu, M.fvu(x, x_hat).item(), rel_tol=1e-9)
    assert math.isclose(got.explained_variance, 1 - M.fvu(x, x_hat).item(), rel_tol=1e-9)
    assert math.isclose(got.mse, M.mse(x, x_hat).item(), rel_tol=1e-9)
    assert math.isclose(got.mse_per_element, M.mse_per_element(x, x_hat).item(), rel_tol=1e-9)
    assert math.isclose(got.cosine, M.cosine_similarity(x, x_hat).item(), rel_tol=1e-9)
    assert math.isclose(got.l2_ratio, M.l2_ratio(x, x_hat).item(), rel_tol=1e-9)
    rrb = M.relative_reconstruction_bias(x, x_hat).item()
    assert math.isclose(got.relative_reconstruction_bias, rrb, rel_tol=1e-9)
    # Expected FVU here: noise variance 0.09 per dim over unit variance per dim.
    assert 0.08 < got.fvu < 0.10


def test_streamed_reconstruction_on_the_hand_example() -> None:
    stats = M.ReconstructionStats(d_in=2)
    stats.update(X[:2], X_HAT[:2])
    stats.update(X[2:], X_HAT[2:])
    assert close(stats.compute().fvu, 2 / 16)


def test_streamed_sparsity_equals_one_shot() -> None:
    stats = M.SparsityStats(d_sae=4)
    stats.update(Z[:1])
    stats.update(Z[1:])
    got = stats.compute()
    assert got.l0 == M.l0_stats(Z)
    assert got.dead_fraction == 0.25 and close(got.dense_fraction, 0.75)
    assert got.n_tokens == 3 and stats.counts_S.tolist() == [1, 1, 0, 2]


def test_explained_variance_matches_sae_lens_calculator() -> None:
    """Same definition as sae_lens.evals.ExplainedVarianceCalculator (≥ 6.45.1)."""
    evals = pytest.importorskip("sae_lens.evals")
    x, x_hat = _data()
    x, x_hat = x - 1000, x_hat - 1000  # SAELens' E‖x‖² − ‖Ex‖² form needs a small mean
    calc = evals.ExplainedVarianceCalculator()
    calc.add_batch(x_hat[:400], x[:400])
    calc.add_batch(x_hat[400:], x[400:])
    assert math.isclose(calc.compute(), M.explained_variance(x, x_hat).item(), rel_tol=1e-9)

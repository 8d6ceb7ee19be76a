"""Streaming SNMF (saekit.dictionaries.snmf_stream) against the full-batch solver."""

from __future__ import annotations

import pytest
import torch

from saekit.dictionaries.snmf_fit import f_step, fit_snmf, wta_
from saekit.dictionaries.snmf_stream import StreamingSNMF, fit_snmf_stream
from saekit.errors import SaekitError
from saekit.eval.synthetic_metrics import mmcs


def disjoint_planted(seed: int, d: int = 64, k: int = 8, n: int = 3000, m: int = 6):
    """(X_ND, F_true_DK): features on disjoint 6-neuron supports, 10%-dense codes in U(0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randperm(d, generator=gen)
    F_DK = torch.zeros(d, k)
    for i in range(k):
        signs = torch.randint(0, 2, (m,), generator=gen) * 2 - 1
        F_DK[rows[m * i : m * (i + 1)], i] = signs * (1 + torch.rand(m, generator=gen))
    G_NK = torch.rand(n, k, generator=gen) * (torch.rand(n, k, generator=gen) < 0.1)
    return G_NK @ F_DK.T + 0.05 * torch.randn(n, d, generator=gen), F_DK


@pytest.fixture(scope="module")
def data():
    return disjoint_planted(seed=4)


@pytest.mark.parametrize("seed", [2, 4, 6])
def test_stream_reaches_the_full_batch_loss(seed):
    """Where both solvers reach the planted optimum, they reach the same loss; streaming ends
    slightly lower (its per-batch codes are NNLS-solved, full batch takes one multiplicative
    step per iteration): by 0.0101-0.0142% in all 5 such fits of seeds 0-7 × 3 inits. Both are
    local: in the other 19 fits at least one solver stalled above the optimum (by 0.35% up to
    3.8x) or merged two features (README, SNMF "Local minima"). With SVD init, seeds 2, 4 and 6
    reach the optimum in both."""
    X_ND, F_true = disjoint_planted(seed=seed)
    full = fit_snmf(X_ND.T.contiguous(), 8, sparsity=0.1, max_iter=1500, patience=200, init="svd")
    calls = []

    def passes():
        calls.append(1)
        return X_ND.split(500)  # the same 6 batches on every call

    stream = fit_snmf_stream(passes, 8, sparsity=0.1, max_passes=30, init="svd", init_tokens=1000)
    assert stream.G_NK is None and len(calls) == len(stream.losses) >= 3
    assert mmcs(F_true.T, full.F_DK.T) > 0.999 and mmcs(F_true.T, stream.F_DK.T) > 0.999
    assert -2e-4 < stream.loss / full.loss - 1 < 0, (stream.loss, full.loss)
    assert stream.loss == min(stream.losses) == stream.losses[stream.best_iter]
    assert stream.sq_norm == pytest.approx(float(X_ND.double().square().sum()), rel=1e-6)
    assert stream.fvu == pytest.approx(full.fvu, rel=2e-4)


def test_pass_statistics_equal_the_full_batch_quantities(data):
    """One pass in 7 uneven batches accumulates exactly A G, GᵀG and ‖A − F Gᵀ‖²."""
    X_ND, _ = data
    X_ND = X_ND.double()
    F_KD = wta_(torch.randn(8, 64, generator=torch.Generator().manual_seed(1)).double(), 0.1)
    state = StreamingSNMF(F_KD, sparsity=0.1, inner_iters=5)
    codes = []
    for x_BD in X_ND.split(437):
        G_KB, _ = state.codes(x_BD.T.contiguous())
        codes.append(G_KB)
        state.observe(x_BD)
    G_KN = torch.cat(codes, dim=1)
    assert bool((G_KN > 0).all())
    A_DN = X_ND.T
    assert torch.allclose(state.AG_DK, A_DN @ G_KN.T, rtol=1e-10)
    assert torch.allclose(state.GtG_KK, G_KN @ G_KN.T, rtol=1e-10)
    direct = float((A_DN - F_KD.T @ G_KN).square().sum())
    assert state.pass_loss() == pytest.approx(direct, rel=1e-9)
    mean_D = X_ND.mean(dim=0)
    assert state.centered_sq() == pytest.approx(float((X_ND - mean_D).square().sum()), rel=1e-9)
    # the refit F is steps 1-3 of a full-batch iteration with these codes
    F_next = f_step(A_DN @ G_KN.T, G_KN @ G_KN.T, 0.1) * G_KN.norm(dim=1)[:, None]
    assert torch.allclose(state.next_features(), F_next, rtol=1e-8, atol=1e-10)


def test_codes_solve_the_nonnegative_least_squares(data):
    """With F fixed, 300 inner multiplicative steps reach the NNLS optimum (KKT)."""
    X_ND, F_true = data
    F_KD = F_true.T.double().contiguous()
    state = StreamingSNMF(F_KD, sparsity=0.1, inner_iters=300)
    A_DB = X_ND[:200].T.double().contiguous()
    G_KB, P_KB = state.codes(A_DB)
    grad_KB = state.Q_KK @ G_KB - P_KB
    scale = float(P_KB.abs().max())
    assert float((grad_KB * G_KB).abs().max()) < 1e-5 * scale  # complementary slackness
    assert float(grad_KB.min()) > -1e-3 * scale


def test_empty_stream_is_refused():
    with pytest.raises(SaekitError, match="no tokens"):
        fit_snmf_stream(lambda: iter(()), 4)
    with pytest.raises(SaekitError, match="pass"):
        fit_snmf_stream(lambda: iter(()), 4, max_passes=0)

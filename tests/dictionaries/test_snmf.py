"""Full-batch SNMF (saekit.dictionaries.snmf_fit) and the SNMF Dictionary (snmf.py).

Synthetic ground truth: A = F_true G_trueᵀ + noise with F_true column-sparse (signed) and
G_true ≥ 0 sparse, so recovery is measurable (MMCS of F's columns, signed cosine).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from saekit.activations import TensorStream
from saekit.dictionaries import (
    FittedDictionary,
    SAEConfig,
    SNMFConfig,
    SNMFDictionary,
    TrainableDictionary,
    build_dictionary,
    load_dictionary,
)
from saekit.dictionaries.snmf import fit_hierarchy, snmf_from_fit
from saekit.dictionaries.snmf_fit import fit_snmf, init_codes, snmf_step, sq_norm
from saekit.errors import SaekitError
from saekit.eval.synthetic_metrics import mmcs
from saekit.train.config import TrainConfig
from saekit.train.trainer import Trainer


def planted(d: int, k: int, n: int, m: int, density: float, noise: float, seed: int):
    """(A_DN, F_true_DK, G_true_NK): each true feature uses m random neurons (signed)."""
    gen = torch.Generator().manual_seed(seed)
    F_DK = torch.zeros(d, k, dtype=torch.float64)
    for i in range(k):
        rows = torch.randperm(d, generator=gen)[:m]
        signs = torch.randint(0, 2, (m,), generator=gen) * 2 - 1
        F_DK[rows, i] = signs * (1 + torch.rand(m, generator=gen, dtype=torch.float64))
    on = torch.rand(n, k, generator=gen) < density
    G_NK = torch.rand(n, k, generator=gen, dtype=torch.float64) * on
    A_DN = F_DK @ G_NK.T + noise * torch.randn(d, n, generator=gen, dtype=torch.float64)
    return A_DN, F_DK, G_NK


@pytest.fixture(scope="module")
def problem():
    A, F_true, _ = planted(d=64, k=8, n=1500, m=7, density=0.3, noise=0.05, seed=0)
    return A.float(), F_true


@pytest.fixture(scope="module")
def fitted(problem):
    A, _ = problem
    return fit_snmf(A, 8, sparsity=0.1, max_iter=600, patience=100, seed=0)


def test_recovers_planted_features(problem, fitted):
    _, F_true = problem
    assert mmcs(F_true.T, fitted.F_DK.T) >= 0.9  # 1.000 at this seed


def test_codes_nonnegative_and_wta_exact(fitted):
    assert fitted.G_NK is not None
    assert bool((fitted.G_NK >= 0).all())
    # ⌈0.1 · 64⌉ = 7 neurons per feature; continuous data has no ties
    assert (fitted.F_DK != 0).sum(dim=0).tolist() == [7] * 8


def test_returned_pair_is_the_best_seen(problem, fitted):
    A, _ = problem
    assert fitted.loss == min(fitted.losses) == fitted.losses[fitted.best_iter]
    # WTA breaks monotonicity: the best is not always the last iterate, and is never worse
    assert fitted.loss <= fitted.losses[-1]
    direct = float((A.double() - fitted.F_DK.double() @ fitted.G_NK.double().T).square().sum())
    assert fitted.loss == pytest.approx(direct, rel=1e-4)  # the expanded loss, in float32
    assert fitted.sq_norm == pytest.approx(float(A.double().square().sum()), rel=1e-6)


# ---- the authors' algorithm, transcribed independently in NumPy -----------------------------
def official_snmf(A, G0, s, max_iter, patience, tol, reg=1e-6, eps=1e-6):
    """The paper's fit loop (Shafran, Geiger & Geva 2025; seminmf.py of the authors' code) in
    NumPy: explicit inverse, WTA, unit-norm G columns, Ding's update, Frobenius loss. Its own
    stopping rule: the pair is stored and the patience counter reset only when
    loss < best_loss − tol (absolute tol); otherwise the counter grows. Returns every iterate
    (F, G, loss) and the stored (F, G, loss, iteration)."""
    d, n = A.shape
    k = G0.shape[1]
    m = max(1, math.ceil(s * d))
    G = G0.copy()
    iterates, stored, best_loss, stale = [], None, math.inf, 0
    for it in range(max_iter):
        F = A @ G @ np.linalg.inv(G.T @ G + reg * np.eye(k))
        thresh = -np.sort(-np.abs(F), axis=0)[m - 1]  # m-th largest |F| of each column
        F = F * (np.abs(F) >= thresh)
        c = np.maximum(np.linalg.norm(G, axis=0), 1e-8)
        G, F = G / c, F * c
        P, Q = A.T @ F, F.T @ F
        P_pos, P_neg = (np.abs(P) + P) / 2, (np.abs(P) - P) / 2
        Q_pos, Q_neg = (np.abs(Q) + Q) / 2, (np.abs(Q) - Q) / 2
        G = G * np.sqrt((P_pos + G @ Q_neg) / (P_neg + G @ Q_pos + eps))
        loss = float(np.linalg.norm(A - F @ G.T, "fro") ** 2)
        iterates.append((F, G, loss))
        if loss < best_loss - tol:
            best_loss, stored, stale = loss, (F, G, loss, it), 0
        else:
            stale += 1
        if stale >= patience:
            break
    return iterates, stored


@pytest.fixture(scope="module")
def tiny():
    A, _, _ = planted(d=12, k=3, n=40, m=3, density=0.5, noise=0.1, seed=3)
    G0 = torch.rand(40, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    return A, G0.clamp_min(1e-6)


def test_iterates_match_the_official_algorithm(tiny):
    A, G0 = tiny
    iterates, _ = official_snmf(A.numpy(), G0.numpy(), 0.25, 40, 10**6, 0.0)
    G_KN = G0.T.clone()
    GtG_KK = G_KN @ G_KN.T
    sq_A = sq_norm(A)
    worst = 0.0
    for F_np, G_np, loss_np in iterates:
        F_KD, GtG_KK, loss = snmf_step(A, G_KN, GtG_KK, 0.25, sq_A)
        worst = max(worst, np.abs(F_KD.T.numpy() - F_np).max(), np.abs(G_KN.T.numpy() - G_np).max())
        assert loss == pytest.approx(loss_np, rel=1e-11)  # expanded loss vs explicit residual
    assert worst < 1e-11  # float64: observed 1e-13 (a solve instead of the inverse)


def test_stopping_is_the_official_rule_and_the_returned_pair_the_best_seen(tiny):
    """saekit's tol is relative to ‖A‖²; at tol = official_tol / ‖A‖² both stop at the same
    iteration. The official code returns the pair of its last improvement larger than tol,
    saekit the lowest-loss iterate: here iteration 72 (loss 4.1423) vs 57 (4.1493)."""
    A, G0 = tiny
    official_tol = 1e-2
    iterates, stored = official_snmf(A.numpy(), G0.numpy(), 0.25, 400, 15, official_tol)
    sq_A = float(A.square().sum())
    tol = official_tol / sq_A
    fit = fit_snmf(A, 3, sparsity=0.25, max_iter=400, patience=15, tol=tol, G0_KN=G0.T)
    losses = [loss for _, _, loss in iterates]
    assert len(fit.losses) == len(iterates) == 73  # stopped by patience, at the same iteration
    assert np.allclose(fit.losses, losses, rtol=1e-11, atol=0)
    lowest = int(np.argmin(losses))
    assert fit.best_iter == lowest == 72 and stored[3] == 57
    assert fit.loss == pytest.approx(losses[lowest], rel=1e-11)
    assert fit.loss < stored[2] * (1 - 1e-3)  # the official pair is 0.17% worse
    assert np.abs(fit.F_DK.numpy() - iterates[lowest][0]).max() < 1e-11
    assert fit.G_NK is not None and np.abs(fit.G_NK.numpy() - iterates[lowest][1]).max() < 1e-11


@pytest.mark.parametrize("init", ["random", "svd", "kmeans"])
def test_inits_are_positive_and_seeded(problem, init):
    A, _ = problem
    G_KN = init_codes(A[:, :500].contiguous(), 8, init, seed=1)
    assert G_KN.shape == (8, 500) and bool((G_KN > 0).all())
    assert torch.equal(G_KN, init_codes(A[:, :500].contiguous(), 8, init, seed=1))
    if init == "kmeans":  # one-hot (+1e-6): exactly one cluster per token
        assert ((G_KN == 1.0).sum(dim=0) == 1).all()


# ---- the Dictionary -------------------------------------------------------------------------
def snmf_cfg(hook: str = "", d_sae: int = 8, **options) -> SAEConfig:
    """snmf.sparsity 0.1 unless given; other snmf options as keywords."""
    snmf = SNMFConfig(**{"sparsity": 0.1, **options})
    return SAEConfig(method="snmf", hook=hook, d_sae=d_sae, snmf=snmf)


def test_encode_is_nnls_optimal(problem, fitted):
    A, _ = problem
    sae = snmf_from_fit(snmf_cfg(), fitted.F_DK)
    x_BD = A.T[:256]
    z_BS = sae.encode(x_BD)
    assert bool((z_BS >= 0).all()) and bool((z_BS == 0).any())  # projection gives exact zeros
    # KKT of min ½‖x − z W‖², z ≥ 0: gradient ≥ 0 where z = 0 and = 0 where z > 0
    grad_BS = (sae.decode(z_BS) - x_BD) @ sae.W_dec.T
    scale = float(grad_BS.abs().max()) + float(x_BD.norm(dim=1).max())
    assert float(grad_BS[z_BS > 0].abs().max()) < 1e-4 * scale
    assert float(grad_BS[z_BS == 0].min()) > -1e-4 * scale
    # W_dec rows are F's unit columns, so decode(encode(x)) is at most ‖x‖ away from x
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(8))
    assert torch.allclose(sae.W_dec, (fitted.F_DK / fitted.F_DK.norm(dim=0)).T)


def test_encode_reaches_the_optimum_on_an_ill_conditioned_dictionary():
    """100 FISTA steps (ENCODE_ITERS) end within 3e-6 of the NNLS optimum (the loss after
    2,000) at a W Wᵀ condition number of 300, as measured on SmolLM2 layer 15 (290)."""
    gen = torch.Generator().manual_seed(0)
    D, S, B = 256, 100, 512
    U_DS, _ = torch.linalg.qr(torch.randn(D, S, generator=gen))
    V_SS, _ = torch.linalg.qr(torch.randn(S, S, generator=gen))
    sigma_S = torch.logspace(0, 1.24, S)  # σ_max²/σ_min² = 10^2.48 ≈ 300 before unit rows
    sae = snmf_from_fit(snmf_cfg(d_sae=S, sparsity=1.0), U_DS @ torch.diag(sigma_S) @ V_SS.T)
    eig_S = torch.linalg.eigvalsh((sae.W_dec @ sae.W_dec.T).double())
    assert 250 < float(eig_S[-1] / eig_S[0]) < 350  # 302 with unit rows
    z_BS = torch.rand(B, S, generator=gen) * (torch.rand(B, S, generator=gen) < 0.1)
    x_BD = z_BS @ sae.W_dec + 0.1 * torch.randn(B, D, generator=gen)

    def loss(steps: int) -> float:
        sae.encode_iters = steps
        return float((x_BD - sae.encode(x_BD) @ sae.W_dec).double().square().sum())

    optimum = loss(2000)
    assert loss(100) / optimum - 1 < 1e-5  # measured 2.7e-6
    assert loss(30) / optimum - 1 > 1e-4  # 3e-4: the step count matters at this conditioning


def test_save_load_roundtrip(tmp_path, problem, fitted):
    A, _ = problem
    sae = snmf_from_fit(snmf_cfg(hook="blocks.1.mlp.hook_post", hierarchy=(3,)), fitted.F_DK)
    sae.save(tmp_path / "snmf")
    cfg_json = json.loads((tmp_path / "snmf" / "cfg.json").read_text())
    assert cfg_json["architecture"] == "saekit-snmf"
    assert cfg_json["metadata"]["hook_name"] == "blocks.1.mlp.hook_post"
    loaded = load_dictionary(tmp_path / "snmf")
    assert isinstance(loaded, SNMFDictionary) and loaded.cfg == sae.cfg
    x_BD = A.T[:64]
    assert torch.equal(loaded.encode(x_BD), sae.encode(x_BD))
    for (W_a, G_a), (W_b, G_b) in zip(loaded.levels(), sae.levels(), strict=True):
        assert torch.equal(W_a, W_b) and torch.equal(G_a, G_b)


def test_hierarchy_recovers_two_levels():
    """3 parents of 4 neurons, 3 children each: child = its parent + 2 neurons of its own."""
    gen = torch.Generator().manual_seed(0)
    d, n = 64, 2000
    perm = torch.randperm(d, generator=gen)
    parents_DP, children_DC = torch.zeros(d, 3), torch.zeros(d, 9)
    for p in range(3):
        parents_DP[perm[4 * p : 4 * p + 4], p] = 1 + torch.rand(4, generator=gen)
        for c in range(3 * p, 3 * p + 3):
            children_DC[:, c] = parents_DP[:, p]
            children_DC[perm[12 + 2 * c : 14 + 2 * c], c] = 1 + torch.rand(2, generator=gen)
    G_NC = torch.rand(n, 9, generator=gen) * (torch.rand(n, 9, generator=gen) < 0.2)
    A_DN = children_DC @ G_NC.T + 0.02 * torch.randn(d, n, generator=gen)
    s = 6 / 64  # ⌈s · 64⌉ = 6 neurons: a child's support; a parent has 4 (+ 2 spare)
    level1 = fit_snmf(A_DN, 9, sparsity=s, max_iter=1500, patience=200)
    assert mmcs(children_DC.T, level1.F_DK.T) >= 0.9  # 0.975
    ((W2_RD, G2_CR),) = fit_hierarchy(level1.F_DK.T, (3,), s)
    assert mmcs(parents_DP.T, W2_RD) >= 0.9  # 0.95
    assert bool((G2_CR >= 0).all())
    # every learned child's heaviest level-2 weight is on the parent it was built from
    child_of_C = (torch.nn.functional.normalize(level1.F_DK.T, dim=1) @ children_DC).argmax(1)
    parent_of_R = (W2_RD @ parents_DP).argmax(dim=1)
    assert parent_of_R[G2_CR.argmax(dim=1)].tolist() == (child_of_C // 3).tolist()


def test_level_codes_and_fold_are_consistent(problem, fitted):
    A, _ = problem
    sae = snmf_from_fit(snmf_cfg(hierarchy=(3, 2)), fitted.F_DK)
    z_BS = sae.encode(A.T[:32])
    (_, G2), (_, G3) = sae.levels()
    assert torch.allclose(sae.level_codes(z_BS, 3), z_BS @ G2 @ G3)
    before = sae.W_dec.clone()
    sae.fold_normalization(4.0)  # scale-free: atoms unchanged, codes scale with the input
    assert torch.equal(sae.W_dec, before) and sae.folded_norm_factor == 4.0
    assert torch.allclose(sae.encode(4 * A.T[:32]), 4 * z_BS, rtol=1e-4, atol=1e-6)


def test_bad_settings_and_gradient_training_are_refused():
    with pytest.raises(SaekitError, match="snmf.sparsity"):
        snmf_cfg(sparsity=0.0)
    with pytest.raises(SaekitError, match="snmf.hierarchy"):
        snmf_cfg(hierarchy=(0,))
    with pytest.raises(SaekitError, match="NaN"):
        fit_snmf(torch.full((4, 5), math.nan), 2)
    # A fitted dictionary has no training forward; the trainer refuses it by its interface.
    sae = build_dictionary(snmf_cfg(), 16)
    assert isinstance(sae, FittedDictionary) and not isinstance(sae, TrainableDictionary)
    assert not hasattr(sae, "training_forward")
    stream = TensorStream(torch.randn(64, 16), batch_size=16)
    with pytest.raises(SaekitError, match="fitted in closed form"):
        Trainer((snmf_cfg(),), TrainConfig(total_tokens=64), stream)

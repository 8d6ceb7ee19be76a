"""Full-batch semi-NMF with winner-take-all (Shafran, Geiger & Geva 2025, arXiv 2506.10920).

    A_DN ≈ F_DK G_NKᵀ,   G ≥ 0,   each column of F keeps ⌈s·D⌉ neurons (s = 0.01)

A holds MLP hidden activations after the nonlinearity (`blocks.L.mlp.hook_post`), one column
per token: D = d_mlp, N tokens, K features. One iteration, as in the authors' seminmf.py
(Ding, Li & Jordan 2010 semi-NMF plus a hard winner-take-all on F):

  1. F ← A G (GᵀG + λI)⁻¹          ridge least squares by torch.linalg.solve, λ = 1e-6
  2. WTA: in each column keep |F_ji| ≥ its ⌈s·D⌉-th largest |F_:i| (ties keep more)
  3. c_i = max(‖G_:i‖, 1e-8);  G_:i /= c_i;  F_:i *= c_i       (unit-norm G columns)
  4. P = AᵀF, Q = FᵀF;  G ← G ∘ √(([P]⁺ + G[Q]⁻) / ([P]⁻ + G[Q]⁺ + ε)),  ε = 1e-6
  5. loss = ‖A − F Gᵀ‖²; the lowest-loss (F, G) is kept; stop after `patience` iterations
     without an improvement larger than tol·‖A‖² (relative: the official absolute 1e-4 means
     nothing for activations of norm 1 and everything for norm 1e3).

WTA breaks the monotonicity of Ding's updates (on a 256 × 2000 problem with s = 0.01 the loss
rose in 73 of 300 iterations), so the best pair is returned, never the last iterate.

Cost. G is held as G_KN (features × tokens), so after WTA P_KN = FᵀA is a CSR × dense product
over the ⌈s·D⌉ kept neurons of each feature, not a dense one. The loss is
‖A‖² − 2⟨P, G⟩ + ⟨Q, GᵀG⟩, and GᵀG is reused by the next F step, so an iteration costs one
dense GEMM (A Gᵀ) plus O(N·K²); the official loop costs three (A G, AᵀF and F Gᵀ for the loss)
plus a D × N residual (timings: `saekit bench snmf`, docs/benchmarks.md). Its loss matches a
float64 residual to 6e-7 where the official float32 torch.norm is off by 0.6%.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal, NamedTuple

import torch
from torch import Tensor
from tqdm import tqdm

from saekit.errors import SaekitError

Init = Literal["random", "svd", "kmeans"]

RIDGE = 1e-6
"""λ added to GᵀG before the solve (official value); GᵀG is singular when a feature dies."""
EPS = 1e-6
"""Added to the denominator of the multiplicative update (official value)."""
FLOOR = 1e-6
"""Initial codes are clamped up to this: multiplicative updates cannot revive an exact 0."""
SPARSE_BELOW = 0.1
"""Use the CSR product for P when F keeps at most this fraction of its entries."""
KMEANS_ITERS = 15
"""Lloyd iterations of the k-means init (official value)."""


class SNMFFit(NamedTuple):
    """The best factorization seen by a solver."""

    F_DK: Tensor
    """Features: column i is feature i over the D neurons (⌈s·D⌉ nonzeros, modulo ties)."""
    G_NK: Tensor | None
    """Nonnegative token codes (unit-norm columns before the last G update); None when
    streaming, which never holds all tokens (encode them with the saved dictionary)."""
    loss: float
    """‖A − F Gᵀ‖² of the returned pair (streaming: of F with that pass's per-batch codes)."""
    best_iter: int
    """Iteration (streaming: pass) that produced the returned pair, 0-based."""
    losses: list[float]
    """Loss of every iteration (pass), in order; `loss` is their minimum."""
    sq_norm: float
    """‖A‖², the scale of the relative tolerance."""
    centered_sq: float
    """Σ_n ‖a_n − mean‖², the FVU denominator: fvu = loss / centered_sq."""

    @property
    def fvu(self) -> float:
        """Fraction of variance unexplained by the returned pair (saekit's M5 definition)."""
        return self.loss / max(self.centered_sq, 1e-30)


def keep_count(d: int, sparsity: float) -> int:
    """Neurons WTA keeps per feature: ⌈s·D⌉, at least 1."""
    if not 0 < sparsity <= 1:
        raise SaekitError(f"snmf.sparsity must be in (0, 1], got {sparsity}; default 0.01.")
    return max(1, math.ceil(sparsity * d))


def wta_(F_KD: Tensor, sparsity: float) -> Tensor:
    """In place: zero every entry of each row below the row's ⌈s·D⌉-th largest |entry|."""
    m = keep_count(F_KD.shape[1], sparsity)
    if m < F_KD.shape[1]:
        scores_KD = F_KD.abs()
        thresh_K1 = scores_KD.topk(m, dim=1).values[:, -1:]
        F_KD.mul_(scores_KD >= thresh_K1)
    return F_KD


def sq_norm(x: Tensor) -> float:
    """‖x‖²: row sums in x's dtype (torch sums cascade, ~1e-7 relative), the total in float64.

    64 rows at a time: no copy of A; sum(dtype=float64) would cost 30x more.
    """
    return sum(float(rows.square().sum(dim=-1).double().sum()) for rows in x.split(64))


def centered_sq(A_DN: Tensor, sq_A: float) -> float:
    """Σ_n ‖a_n − mean‖² = ‖A‖² − ‖Σ_n a_n‖² / N (the FVU denominator)."""
    return sq_A - float(A_DN.sum(dim=1).double().square().sum()) / A_DN.shape[1]


def feature_product(F_KD: Tensor, A_DN: Tensor) -> Tensor:
    """P_KN = F_KD A_DN, as a CSR product when F is WTA-sparse (A_DN must be contiguous)."""
    if float((F_KD != 0).float().mean()) > SPARSE_BELOW or A_DN.dtype not in (
        torch.float32,
        torch.float64,
    ):
        return F_KD @ A_DN
    with warnings.catch_warnings():  # torch's one-time "sparse CSR is in beta" notice
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse.mm(F_KD.to_sparse_csr(), A_DN)


def f_step(AG_DK: Tensor, GtG_KK: Tensor, sparsity: float) -> Tensor:
    """Steps 1-2: F_KD = WTA(solve(GᵀG + λI, (AG)ᵀ)), as K × D rows."""
    eye_KK = torch.eye(GtG_KK.shape[0], dtype=GtG_KK.dtype, device=GtG_KK.device)
    return wta_(torch.linalg.solve(GtG_KK + RIDGE * eye_KK, AG_DK.T), sparsity)


def mu_step_(G_KN: Tensor, P_KN: Tensor, Q_KK: Tensor) -> Tensor:
    """Step 4 in place: G ∘ √(([P]⁺ + [Q]⁻G) / ([P]⁻ + [Q]⁺G + ε)) (G_KN = Gᵀ, Q symmetric)."""
    K = Q_KK.shape[0]
    Q_pos = Q_KK.clamp(min=0)
    GQ_2KN = torch.cat([Q_pos - Q_KK, Q_pos]) @ G_KN  # [Q]⁻ = [Q]⁺ − Q exactly
    P_pos = P_KN.clamp(min=0)
    numer_KN = GQ_2KN[:K].add_(P_pos)
    denom_KN = GQ_2KN[K:].add_(P_pos.sub_(P_KN)).add_(EPS)
    return G_KN.mul_(numer_KN.div_(denom_KN).sqrt_())


def snmf_step(
    A_DN: Tensor, G_KN: Tensor, GtG_KK: Tensor, sparsity: float, sq_A: float
) -> tuple[Tensor, Tensor, float]:
    """One iteration (steps 1-5). Updates G_KN in place; returns (F_KD, new GᵀG, loss).

    GtG_KK must be G_KN G_KNᵀ of the incoming G (the previous step returns it).
    """
    F_KD = f_step(A_DN @ G_KN.T, GtG_KK, sparsity)
    c_K = GtG_KK.diagonal().sqrt().clamp_min(1e-8)  # = ‖G_:i‖ without another pass over G
    G_KN.div_(c_K[:, None])
    F_KD.mul_(c_K[:, None])
    P_KN = feature_product(F_KD, A_DN)
    Q_KK = F_KD @ F_KD.T
    mu_step_(G_KN, P_KN, Q_KK)
    GtG_KK = G_KN @ G_KN.T
    cross = float(P_KN.mul_(G_KN).sum(dim=1).double().sum())
    loss = sq_A - 2 * cross + float((Q_KK * GtG_KK).double().sum())
    return F_KD, GtG_KK, max(loss, 0.0)


def init_codes(A_DN: Tensor, k: int, init: Init, seed: int) -> Tensor:
    """Initial G_KN > 0: random U(0,1), SVD (Ding et al. eq. 17-18) or k-means one-hot."""
    D, N = A_DN.shape
    gen = torch.Generator(device=A_DN.device).manual_seed(seed)
    if init == "random":
        return torch.rand(k, N, generator=gen, dtype=A_DN.dtype).clamp_min_(FLOOR)
    G_KN = torch.full((k, N), FLOOR, dtype=A_DN.dtype, device=A_DN.device)
    if init == "svd":
        r = min(k, D, N)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # svd_lowrank draws its sketch from the global RNG
            _, S_R, V_NR = torch.svd_lowrank(A_DN, q=min(r + 8, D, N), niter=4)
        G_KN[:r] = (S_R[:r].sqrt()[:, None] * V_NR[:, :r].T).clamp_min(FLOOR)
        return G_KN
    if init == "kmeans":
        labels_N = kmeans_labels(A_DN, k, gen)
        G_KN[labels_N, torch.arange(N, device=A_DN.device)] = 1.0
        return G_KN
    raise SaekitError(f"Unknown snmf_init {init!r}; use random, svd or kmeans.")


def kmeans_labels(A_DN: Tensor, k: int, gen: torch.Generator, chunk: int = 16384) -> Tensor:
    """Cluster of each token (column) after KMEANS_ITERS Lloyd iterations from k columns."""
    D, N = A_DN.shape
    C_KD = A_DN[:, torch.randperm(N, generator=gen)[:k]].T.clone()
    labels_N = torch.empty(N, dtype=torch.long, device=A_DN.device)
    for _ in range(KMEANS_ITERS):
        c2_K1 = C_KD.square().sum(1, keepdim=True)
        sums_KD = torch.zeros_like(C_KD)
        for s in range(0, N, chunk):
            cols_DB = A_DN[:, s : s + chunk]
            labels_N[s : s + chunk] = (c2_K1 - 2 * (C_KD @ cols_DB)).argmin(0)
            sums_KD.index_add_(0, labels_N[s : s + chunk], cols_DB.T)
        counts_K = torch.bincount(labels_N, minlength=k)
        C_KD = sums_KD / counts_K.clamp_min(1)[:, None].to(C_KD.dtype)
        empty_E = (counts_K == 0).nonzero().squeeze(1)
        if empty_E.numel():  # an empty cluster restarts at a random token
            C_KD[empty_E] = A_DN[:, torch.randint(N, (empty_E.numel(),), generator=gen)].T
    return labels_N


def fit_snmf(
    A_DN: Tensor,
    k: int,
    *,
    sparsity: float = 0.01,
    max_iter: int = 2000,
    patience: int = 500,
    tol: float = 1e-6,
    init: Init = "random",
    seed: int = 0,
    G0_KN: Tensor | None = None,
    progress: bool = False,
) -> SNMFFit:
    """Factorize A_DN (D × N, contiguous) into the best (F, G) seen; G0_KN overrides init."""
    if A_DN.ndim != 2 or min(A_DN.shape) < 1 or k < 1:
        raise SaekitError(f"SNMF needs a D × N matrix and k ≥ 1, got {tuple(A_DN.shape)}, k={k}.")
    if A_DN.dtype not in (torch.float32, torch.float64):
        A_DN = A_DN.float()
    if not bool(torch.isfinite(A_DN).all()):
        raise SaekitError("SNMF input holds NaN/inf activations; filter them out first.")
    A_DN = A_DN.contiguous()
    G_KN = init_codes(A_DN, k, init, seed) if G0_KN is None else G0_KN.to(A_DN).clone()
    sq_A = sq_norm(A_DN)
    GtG_KK = G_KN @ G_KN.T
    best: tuple[float, Tensor, Tensor, int] | None = None
    losses: list[float] = []
    ref, stale = math.inf, 0  # ref: the loss at the last improvement larger than tol·‖A‖²
    bar = tqdm(range(max_iter), desc=f"snmf k={k}", disable=not progress, unit="it")
    for it in bar:
        F_KD, GtG_KK, loss = snmf_step(A_DN, G_KN, GtG_KK, sparsity, sq_A)
        losses.append(loss)
        if best is None or loss < best[0]:
            best = (loss, F_KD, G_KN.clone(), it)
        if loss < ref - tol * sq_A:
            ref, stale = loss, 0
        else:
            stale += 1
        if progress and it % 10 == 0:
            bar.set_postfix(rel_loss=f"{loss / max(sq_A, 1e-30):.4f}", stale=stale)
        if stale >= patience:
            break
    bar.close()
    if best is None:
        raise SaekitError("snmf.max_iter must be ≥ 1.")
    loss, F_KD, G_KN, it = best
    return SNMFFit(F_KD.T, G_KN.T, loss, it, losses, sq_A, centered_sq(A_DN, sq_A))

"""SNMF as a dictionary: semi-nonnegative features of MLP activations (arXiv 2506.10920).

A factorization A ≈ F Gᵀ fitted in closed form (snmf_fit.py in memory, snmf_stream.py
streaming) becomes a dictionary with

    W_dec (S, D)   the features, rows = F's columns scaled to unit norm (S = K features,
                   D = d_mlp; F D⁻¹, G D leaves F Gᵀ unchanged, and unit atoms make codes
                   comparable with SAE codes and independent of the token count)
    encode(x_BD)   nonnegative least squares with F fixed: min_z ‖x − z W_dec‖², z ≥ 0, by
                   `encode_iters` accelerated projected-gradient (FISTA) steps from the
                   clipped least-squares codes max(x W_enc, 0), W_enc = W_decᵀ (QᵀQ + λI)⁻¹.
                   Unlike multiplicative updates, projection gives exact zeros, so L0 counts
                   the features a token uses.
    decode(z_BS)   z W_dec (b_dec stays 0: SNMF has no bias)

Optionally hierarchical (snmf.hierarchy = (r2, r3, ...)): level l factorizes the unit atoms
of level l−1, atoms_{l−1} ≈ G_l atoms_l with G_l ≥ 0 (coarser concepts as nonnegative mixtures
of finer ones, as the authors' hierchichal_snmf.py does on the raw F, whose column norms grow
with √N). Level-l codes are z G_2 ⋯ G_l. The authors' optional joint Adam fine-tuning of the
product is left out: it does not keep G ≥ 0.

`SNMFDictionary.fit(cfg, data)` fits the first N tokens of one hook: held in memory as one
D × N float32 matrix (N·D·4 bytes: 32k tokens of d_mlp 1536 = 200 MB) by `fit_snmf`, or, with
snmf.stream_passes = P > 0, replayed P times by `fit_snmf_stream`, one batch at a time.

Saved in saekit's own layout (cfg.json + sae_weights.safetensors, architecture
"saekit-snmf"), which `load_dictionary` reads; SAELens has no SNMF architecture.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from saekit.dictionaries.base import random_like
from saekit.dictionaries.fitted import Fit, FitData, FittedDictionary
from saekit.dictionaries.snmf_fit import RIDGE, Init, SNMFFit, fit_snmf, keep_count
from saekit.dictionaries.snmf_stream import fit_snmf_stream
from saekit.errors import SaekitError

if TYPE_CHECKING:
    from saekit.dictionaries.config import SAEConfig

ENCODE_ITERS = 100
"""FISTA steps per encode. On SmolLM2 blocks.15.mlp.hook_post (100 features fitted on 8k
tokens, W Wᵀ condition number 290) the loss after 100 steps is within 3e-6 (relative) of the
loss after 1000; 30 steps are within 2e-4, the clipped least-squares start within 17%."""


@dataclass(frozen=True)
class SNMFConfig:
    """snmf: winner-take-all sparsity, initialization, stopping, streaming, hierarchy."""

    sparsity: float = 0.01
    """Fraction of d_in each feature keeps by winner-take-all (⌈s·d_in⌉ neurons)."""
    init: Init = "random"
    """Initial codes: random U(0,1), SVD (Ding et al. 2010) or k-means one-hot."""
    max_iter: int = 2000
    """Full-batch iterations at most (2,000 in the paper's demo scripts)."""
    patience: int = 500
    """Stop after this many iterations without an improvement > tol·‖A‖²."""
    tol: float = 1e-6
    """Relative tolerance; the loss ‖A − FGᵀ‖² must drop by more than tol·‖A‖²."""
    stream_passes: int = 0
    """0 = fit train.total_tokens in memory; N > 0 = stream them, at most N passes."""
    hierarchy: tuple[int, ...] = ()
    """Ranks of coarser levels, each an SNMF of the previous level's features."""

    def __post_init__(self) -> None:
        keep_count(1, self.sparsity)  # validates s
        if any(r < 1 for r in self.hierarchy):
            raise SaekitError(f"snmf.hierarchy ranks must be ≥ 1, got {list(self.hierarchy)}.")


class SNMFDictionary(FittedDictionary):
    """Fixed SNMF features with NNLS codes; fitted in closed form, not by gradient steps."""

    method = "snmf"
    saelens_architecture = ""

    def __init__(self, cfg: SAEConfig, d_in: int) -> None:
        super().__init__(cfg, d_in)
        self.options: SNMFConfig = cfg.options()
        ranks = (cfg.d_sae, *self.options.hierarchy)
        self.encode_iters = ENCODE_ITERS
        gen = torch.Generator().manual_seed(cfg.seed)
        frozen = {"requires_grad": False}
        self.W_dec = nn.Parameter(
            _unit_rows(torch.randn(self.d_sae, d_in, generator=gen)), **frozen
        )
        self.b_dec = nn.Parameter(torch.zeros(d_in), **frozen)
        self.W_enc = nn.Parameter(torch.zeros(d_in, self.d_sae), **frozen)
        self.b_enc = nn.Parameter(torch.zeros(self.d_sae), **frozen)
        for level, (fine, coarse) in enumerate(zip(ranks, ranks[1:]), start=2):
            self.register_buffer(f"level{level}_W_dec", torch.zeros(coarse, d_in))
            self.register_buffer(f"level{level}_G", torch.zeros(fine, coarse))
        self.n_levels = len(ranks)
        self.refresh_encoder()

    # ---- fitted factors ----------------------------------------------------------------------
    @torch.no_grad()
    def set_features(self, F_DK: Tensor, hierarchy: Sequence[tuple[Tensor, Tensor]] = ()) -> None:
        """Store fitted features F_DK (any column scale) and levels (W_dec_l, G_l) ≥ 2."""
        if tuple(F_DK.shape) != (self.d_in, self.d_sae):
            raise SaekitError(f"F is {tuple(F_DK.shape)}, expected {(self.d_in, self.d_sae)}.")
        self.W_dec.data.copy_(_unit_rows(F_DK.T))
        for level, (W_dec_RD, G_PR) in enumerate(hierarchy, start=2):
            getattr(self, f"level{level}_W_dec").copy_(W_dec_RD)
            getattr(self, f"level{level}_G").copy_(G_PR)
        self.refresh_encoder()

    @torch.no_grad()
    def refresh_encoder(self) -> None:
        """W_enc = least-squares encoder of the current atoms (the NNLS starting point)."""
        W_SD = self.W_dec.data.double()
        eye_SS = torch.eye(self.d_sae, dtype=W_SD.dtype)
        W_enc_SD = torch.linalg.solve(W_SD @ W_SD.T + RIDGE * eye_SS, W_SD)
        self.W_enc.data.copy_(W_enc_SD.T.to(self.W_enc.dtype))

    @torch.no_grad()
    def randomize_directions(self, gen: torch.Generator) -> None:
        """Random unit atoms, with their least-squares encoder (W_enc is derived from them)."""
        self.W_dec.copy_(random_like(self.W_dec, 1, gen))
        self.refresh_encoder()

    def levels(self) -> list[tuple[Tensor, Tensor]]:
        """(atoms W_dec_l (r_l, D), mixing G_l (r_{l−1}, r_l) ≥ 0) for levels 2..L."""
        return [
            (getattr(self, f"level{lv}_W_dec"), getattr(self, f"level{lv}_G"))
            for lv in range(2, self.n_levels + 1)
        ]

    def level_codes(self, z_BS: Tensor, level: int) -> Tensor:
        """Codes of the level-`level` features: z G_2 ⋯ G_level (level 1 = z itself)."""
        if not 1 <= level <= self.n_levels:
            raise SaekitError(f"level must be in 1..{self.n_levels}, got {level}.")
        for _, G_PR in self.levels()[: level - 1]:
            z_BS = z_BS @ G_PR.to(z_BS.dtype)
        return z_BS

    # ---- Dictionary interface ----------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x_BD: Tensor) -> Tensor:
        """NNLS codes z_BS ≥ 0 of x with the atoms fixed (FISTA, step 1/λ_max(W Wᵀ))."""
        with _one_thread():
            return self._fista(x_BD)

    def _fista(self, x_BD: Tensor) -> Tensor:
        W_SD = self.W_dec
        x_BD = x_BD.to(W_SD.dtype)
        Q_SS = W_SD @ W_SD.T
        step = 1.0 / float(torch.linalg.eigvalsh(Q_SS.double())[-1].clamp_min(1e-12))
        P_BS = x_BD @ W_SD.T
        z_BS = (x_BD @ self.W_enc).clamp_min_(0)
        y_BS, t = z_BS, 1.0
        for _ in range(self.encode_iters):
            z_next = torch.addmm(P_BS, y_BS, Q_SS, alpha=-1).mul_(step).add_(y_BS).clamp_min_(0)
            t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
            y_BS = (z_next - z_BS).mul_((t - 1) / t_next).add_(z_next)
            z_BS, t = z_next, t_next
        return z_BS

    def feature_parents(self) -> list[int] | None:
        """Each feature's strongest level-2 parent (None without a hierarchy)."""
        levels = self.levels()
        return levels[0][1].argmax(dim=1).tolist() if levels else None

    @torch.no_grad()
    def fold_normalization(self, factor: float, out_factor: float | None = None) -> None:
        """Nothing to fold: atoms are unit norm and NNLS codes scale with x (z(f·x) = f·z(x))."""
        self.check_factors(factor, out_factor)
        self.folded_norm_factor *= factor

    # ---- fitting -----------------------------------------------------------------------------
    @classmethod
    def check(cls, cfg: SAEConfig, n_tokens: int) -> None:
        if cfg.d_sae > n_tokens:
            raise SaekitError(
                f"d_sae={cfg.d_sae} SNMF features need more than train.total_tokens="
                f"{n_tokens} tokens."
            )

    @classmethod
    def fit(cls, cfg: SAEConfig, data: FitData, progress: bool = True) -> Fit:
        """Fit on `data` (in memory, or streamed with snmf.stream_passes > 0)."""
        o: SNMFConfig = cfg.options()
        solver: Callable[..., SNMFFit]
        if o.stream_passes == 0:
            solver = partial(fit_snmf, data.matrix(), max_iter=o.max_iter, patience=o.patience)
        else:
            solver = partial(fit_snmf_stream, data.passes, max_passes=o.stream_passes)
        fit = solver(
            cfg.d_sae, sparsity=o.sparsity, tol=o.tol, init=o.init, seed=cfg.seed, progress=progress
        )
        facts = {
            "snmf_loss": fit.loss,
            "snmf_fvu": fit.fvu,
            "snmf_best_iter": fit.best_iter,
            "snmf_iterations": len(fit.losses),
            "snmf_solver": "stream" if o.stream_passes else "full",
        }
        return Fit(snmf_from_fit(cfg, fit.F_DK), fit.losses, fit.centered_sq, facts)

    def export_tensors(self) -> dict[str, Tensor]:
        out = super().export_tensors()
        for level, (W_dec_RD, G_PR) in enumerate(self.levels(), start=2):
            out[f"level{level}_W_dec"], out[f"level{level}_G"] = W_dec_RD, G_PR
        return out

    @torch.no_grad()
    def import_tensors(self, tensors: dict[str, Tensor], state: dict[str, Any]) -> None:
        for name in self.export_tensors():
            getattr(self, name).data.copy_(tensors[name])


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run ~500 small ops (B × S each) on one thread: on cores shared with other jobs each op's
    OpenMP barrier waits for a descheduled thread, and the ops are too small for threads to
    pay off (measured in docs/benchmarks.md)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _unit_rows(W_SD: Tensor) -> Tensor:
    return W_SD / W_SD.norm(dim=1, keepdim=True).clamp_min(1e-12)


def fit_hierarchy(
    atoms_SD: Tensor, ranks: tuple[int, ...], sparsity: float, **fit_kw: Any
) -> list[tuple[Tensor, Tensor]]:
    """Levels 2..L: SNMF of the previous level's unit atoms (as D × r columns) at each rank.

    Returns (W_dec_l (r_l, D) unit rows, G_l (r_{l−1}, r_l) ≥ 0) with atoms_{l−1} ≈ G_l W_dec_l.
    """
    levels = []
    prev_SD = _unit_rows(atoms_SD)
    for rank in ranks:
        fit = fit_snmf(prev_SD.T.contiguous(), rank, sparsity=sparsity, **fit_kw)
        assert fit.G_NK is not None
        norms_R = fit.F_DK.norm(dim=0).clamp_min(1e-12)
        W_dec_RD = (fit.F_DK / norms_R).T.contiguous()
        levels.append((W_dec_RD, fit.G_NK * norms_R))  # F Gᵀ = (F/n)(G·n)ᵀ
        prev_SD = W_dec_RD
    return levels


def snmf_from_fit(cfg: SAEConfig, F_DK: Tensor) -> SNMFDictionary:
    """A dictionary holding fitted features F_DK, plus the hierarchy snmf.hierarchy asks
    for (each level fitted with the section's init, iterations, patience, tolerance and seed)."""
    d = SNMFDictionary(cfg, F_DK.shape[0])
    o = d.options
    hierarchy = fit_hierarchy(
        _unit_rows(F_DK.T),
        o.hierarchy,
        o.sparsity,
        init=o.init,
        max_iter=o.max_iter,
        patience=o.patience,
        tol=o.tol,
        seed=cfg.seed,
    )
    d.set_features(F_DK.to(d.W_dec.dtype), hierarchy)
    return d

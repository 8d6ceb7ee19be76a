"""Matching-pursuit SAE (MP-SAE; Costa, Fel, Lubana, Tolooshams, Ba, arXiv 2506.03093).

    r_0 = x − b_dec;  k times: pick the atom most correlated with the residual, add
    a = ReLU(⟨d_j, r⟩) to its code and subtract a·d_j;   x̂ = z W_dec + b_dec = x − r_k

Atoms are tied (W_dec selects and decodes; W_enc = W_decᵀ) and unit-norm: the trainer
renormalizes them after each step and removes the gradient along them. Unit norm is what makes
this a pursuit: each step lowers ‖r‖² by exactly a_t² and leaves r orthogonal to the atom just
chosen; with ‖d‖ = 1.6 the "residual" grows from 67 to 3178 in 20 steps (docs/methods/mp.md).
The loss is the squared error only (`mse`); sparsity is the step count k. Training backprops
through the unrolled loop with the selected atoms held fixed (saekit/kernels/pursuit.py:
O(B·(D + k)) saved for backward, no B×S tensor, no host sync).

Options (`mp:` section, MPConfig):
- tied=False: separate encoder rows select atoms and set a_t; W_dec subtracts and decodes.
- dropout=q: each atom is barred from a training batch's pursuit with probability q
  (overcomplete; the authors' MNIST run uses 0.75 in its first epoch). Never at inference.
- revival_coefficient=c: loss −c·⟨mean_b r_k[b], mean_{j dead} d_j⟩ (overcomplete's term),
  dead = the trainer's dead mask; the residual is detached, so only dead atoms move.
  All dead atoms get the same pull, toward the batch's mean residual.

Inference: `encode` runs the k training steps. `encode_adaptive` runs up to max_steps with
per-row stops; with tied unit atoms every step lowers ‖r‖², so more steps never hurt.

Gram path (saekit/kernels/gram.py): the dictionary keeps one Gram buffer (340 MB at d_sae 9216)
for its lifetime. Training rebuilds G in it every step (the weights changed); no-grad calls
reuse G while the weights stay equal (checked by value), so an eval pays for it once.

Saved as SAELens "matching_pursuit" with residual_threshold 0, max_iterations k and
stop_on_duplicate_support False: exactly the fixed-k `encode` (tested). SAELens keeps only
W_dec and b_dec (its W_enc is W_decᵀ). Untied saves are "saekit-mp" (saekit reads them).
Folding an input scale f only divides b_dec by f: MP is positively homogeneous with unit atoms,
so the codes of raw x come out f times smaller than in training, in the input's units.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import Tensor, nn

from saekit.dictionaries.base import random_like
from saekit.dictionaries.trainable import TrainableDictionary, TrainContext, TrainOutput, check_k
from saekit.errors import SaekitError
from saekit.kernels.gram import GramCache
from saekit.kernels.pursuit import MatchingPursuit, Path, Stop, choose_path, padded_width, pursue
from saekit.kernels.sparse_topk import SparseCodes

if TYPE_CHECKING:
    from saekit.dictionaries.config import SAEConfig


@dataclass(frozen=True)
class MPConfig:
    """mp: tied or separate selection, atom dropout, dead-atom revival."""

    tied: bool = True
    """Select with the decoder atoms (False: separate encoder rows; not SAELens-loadable)."""
    dropout: float = 0.0
    """Probability that an atom is barred from a training batch's pursuit (atom dropout)."""
    revival_coefficient: float = 0.0
    """Weight of the term pulling dead atoms toward the mean final residual (0 disables)."""

    def __post_init__(self) -> None:
        if not 0 <= self.dropout < 1:
            raise SaekitError(f"mp.dropout must be in [0, 1), got {self.dropout}.")
        if not self.revival_coefficient >= 0:
            raise SaekitError(
                f"mp.revival_coefficient must be >= 0, got {self.revival_coefficient}. "
                "Typical: 1e-2 (overcomplete)."
            )


class PursuitCodes(SparseCodes):
    """MP codes in selection order: an atom chosen twice appears twice and its values add."""

    def dense(self) -> Tensor:
        z_BS = self.values_BK.new_zeros(*self.values_BK.shape[:-1], self.d_sae)
        return z_BS.scatter_add(-1, self.indices_BK, self.values_BK)

    def firing_counts_S(self) -> Tensor:
        # Each (row, atom) once: zero steps get key −1, sort, count the first of each run.
        key_BK = torch.where(self.values_BK > 0, self.indices_BK, -1).sort(dim=-1).values
        first_BK = torch.ones_like(key_BK, dtype=torch.bool)
        first_BK[:, 1:] = key_BK[:, 1:] != key_BK[:, :-1]
        fired_N = (first_BK & (key_BK >= 0)).flatten().long()
        counts_S = fired_N.new_zeros(self.d_sae)
        return counts_S.scatter_add_(0, key_BK.clamp_min(0).flatten(), fired_N)


class AdaptiveCodes(NamedTuple):
    """What `encode_adaptive` returns."""

    z_BS: Tensor
    """Dense codes."""
    steps_B: Tensor
    """Pursuit steps each row took before it stopped (≤ max_steps)."""
    relative_residual_B: Tensor
    """‖r_final‖ / ‖x − b_dec‖ per row."""

    def l0(self) -> dict[str, float]:
        """Active latents per row: mean, min, max (an adaptive L0 varies per token)."""
        l0_B = (self.z_BS != 0).sum(dim=1).double()
        return {"mean": l0_B.mean().item(), "min": l0_B.min().item(), "max": l0_B.max().item()}


class MatchingPursuitSAE(TrainableDictionary):
    """k greedy matching-pursuit steps per token over unit-norm (tied) atoms."""

    method = "mp"
    unit_norm_decoder = True
    saelens_architecture = "matching_pursuit"

    W_sel: nn.Parameter
    """Untied only: encoder rows (S, D) that select atoms and set coefficients."""

    def __init__(self, cfg: SAEConfig, d_in: int) -> None:
        super().__init__(cfg, d_in)
        check_k(cfg)
        self.options: MPConfig = cfg.options()
        self.k = cfg.k
        self.tied = self.options.tied
        gen = torch.Generator().manual_seed(cfg.seed)
        W_dec_SD = torch.randn(self.d_sae, d_in, generator=gen)
        W_dec_SD /= W_dec_SD.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec_SD)
        # The trainer overwrites b_dec with the geometric median of a sample before step 0.
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        if not self.tied:
            self.W_sel = nn.Parameter(W_dec_SD.clone())
            self.saelens_architecture = ""  # type: ignore[misc]  # SAELens MP is tied only
        self._gram = GramCache()

    def selector(self) -> Tensor:
        """Rows (S, D) that select atoms: W_dec itself when tied."""
        return self.W_dec if self.tied else self.W_sel

    @property
    def W_enc(self) -> Tensor:  # type: ignore[override]
        """(D, S) in SAELens orientation: W_decᵀ when tied."""
        return self.selector().T

    @property
    def b_enc(self) -> Tensor:  # type: ignore[override]
        """MP has no encoder bias: zeros (S)."""
        return self.W_dec.new_zeros(self.d_sae)

    # -- pursuit ---------------------------------------------------------------------------

    def _gram_for(self, rows: int, steps: int) -> tuple[Tensor | None, Path]:
        """The path for this call and, on the gram path, G from the dictionary's buffer."""
        reuse = not torch.is_grad_enabled()  # training: the optimizer moved the weights
        ready = reuse and self._gram.holds(self.selector(), self.W_dec)
        path = choose_path(rows, self.d_in, self.d_sae, steps, ready, self.tied)
        if path != "gram":
            return None, path
        G_SP = self._gram.get(self.selector(), self.W_dec, padded_width(self.d_sae), reuse)
        return G_SP, path

    def pursuit(
        self, x_BD: Tensor, steps: int | None = None, drop_S: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(a_BT, j_BT, r_BD): coefficients and atoms in selection order, final residual."""
        steps = self.k if steps is None else steps
        r0_BD = x_BD.to(self.W_dec.dtype) - self.b_dec
        G_SP, path = self._gram_for(r0_BD.shape[0], steps)
        out = MatchingPursuit.apply(r0_BD, self.selector(), self.W_dec, steps, path, drop_S, G_SP)
        a_BT, j_BT, r_BD = out
        return a_BT, j_BT, r_BD

    def encode(self, x_BD: Tensor) -> Tensor:
        a_BK, j_BK, _ = self.pursuit(x_BD)
        return PursuitCodes(a_BK, j_BK, self.d_sae).dense()

    def forward(self, x_BD: Tensor) -> Tensor:
        # x̂ = z W_dec + b_dec = x − r_k: no dense B×S codes and no decoder GEMM.
        _, _, r_BD = self.pursuit(x_BD)
        return x_BD.to(r_BD.dtype) - r_BD

    @torch.no_grad()
    def encode_adaptive(
        self,
        x_BD: Tensor,
        max_steps: int,
        residual_threshold: float = 0.0,
        stop_on_unchanged_support: bool = False,
    ) -> AdaptiveCodes:
        """Up to max_steps pursuit steps; a row stops once ‖r‖ ≤ residual_threshold·‖x − b_dec‖
        or (stop_on_unchanged_support) after a step that adds no new atom, as SAELens does.
        Every row runs in every step (masked): the cost is max_steps steps, with no host sync.
        """
        if max_steps < 1:
            raise SaekitError(f"max_steps must be >= 1, got {max_steps}.")
        if not 0 <= residual_threshold < 1:
            raise SaekitError(
                f"residual_threshold is relative to ‖x − b_dec‖: use [0, 1), "
                f"got {residual_threshold}."
            )
        r_BD = x_BD.to(self.W_dec.dtype) - self.b_dec
        norm0_B = r_BD.norm(dim=1)
        G_SP, path = self._gram_for(r_BD.shape[0], max_steps)
        stop = None
        if residual_threshold > 0 or stop_on_unchanged_support:
            stop = Stop(residual_threshold, stop_on_unchanged_support)
        a_BT, j_BT, steps_B = pursue(
            r_BD, self.selector(), self.W_dec, max_steps, path, None, G_SP, stop
        )
        z_BS = PursuitCodes(a_BT, j_BT, self.d_sae).dense()
        tiny = torch.finfo(r_BD.dtype).tiny
        return AdaptiveCodes(z_BS, steps_B, r_BD.norm(dim=1) / norm0_B.clamp_min(tiny))

    def training_forward(self, x_BD: Tensor, ctx: TrainContext) -> TrainOutput:
        drop_S = None
        if self.options.dropout > 0:
            drop_S = torch.rand(self.d_sae, device=self.W_dec.device) < self.options.dropout
        a_BK, j_BK, r_BD = self.pursuit(x_BD, drop_S=drop_S)
        # x̂ − x = −r_k exactly; the residual is the error, so no cancellation against x.
        losses = {"mse": r_BD.float().pow(2).sum(dim=-1).mean()}
        if self.options.revival_coefficient > 0:
            losses["revival"] = self._revival(r_BD, ctx.dead_mask_S)
        x_hat_BD = x_BD.to(r_BD.dtype) - r_BD
        return TrainOutput(x_hat_BD, None, losses, PursuitCodes(a_BK, j_BK, self.d_sae))

    def _revival(self, r_BD: Tensor, dead_S: Tensor | None) -> Tensor:
        """−c · mean over rows b and dead atoms j of ⟨r_k[b], d_j⟩ (0 while none is dead)."""
        if dead_S is None:
            return r_BD.new_zeros((), dtype=torch.float32)
        dead_S = dead_S.to(self.W_dec.dtype)
        mean_dead_D = dead_S @ self.W_dec / dead_S.sum().clamp_min(1)
        r_mean_D = r_BD.detach().mean(dim=0)
        return -self.options.revival_coefficient * torch.dot(r_mean_D, mean_dead_D).float()

    @torch.no_grad()
    def randomize_directions(self, gen: torch.Generator) -> None:
        """Random atoms (and selector rows, untied) of the same norms; W_enc is derived."""
        self.W_dec.copy_(random_like(self.W_dec, 1, gen))
        if not self.tied:
            self.W_sel.copy_(random_like(self.W_sel, 1, gen))

    # -- folding and saving ----------------------------------------------------------------

    @torch.no_grad()
    def fold_normalization(self, factor: float, out_factor: float | None = None) -> None:
        """Trained on f·x: MP(f·x − b) = f·MP(x − b/f), so b_dec ← b_dec/f; atoms stay unit."""
        self.check_factors(factor, out_factor)
        self.b_dec.data /= factor
        self.folded_norm_factor *= factor

    def saelens_config(self) -> dict[str, Any]:
        # Fixed k in SAELens: no residual stop, no duplicate-support stop, k iterations.
        return {
            "residual_threshold": 0.0,
            "max_iterations": self.k,
            "stop_on_duplicate_support": False,
        }

    def export_tensors(self) -> dict[str, Tensor]:
        out = {"W_dec": self.W_dec.detach(), "b_dec": self.b_dec.detach()}
        if not self.tied:
            out["W_enc"] = self.W_sel.detach().T
        return out

    @torch.no_grad()
    def import_tensors(self, tensors: dict[str, Tensor], state: dict[str, Any]) -> None:
        self.W_dec.data.copy_(tensors["W_dec"])
        self.b_dec.data.copy_(tensors["b_dec"])
        if not self.tied:
            self.W_sel.data.copy_(tensors["W_enc"].T)

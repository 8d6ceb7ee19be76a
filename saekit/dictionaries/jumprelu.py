"""JumpReLU SAE (Rajamanoharan et al. 2024, "Jumping Ahead", arXiv 2407.14435).

    pre_BS = (x − b_dec) W_enc + b_enc
    z_BS   = pre · H(pre − θ)            θ: one threshold per latent
    mse    = Σ_d (x̂ − x)², mean over batch
    l0     = λ · sparsity_scale · mean_B Σ_j H(pre_j − θ_j)

H has no useful derivative, so θ learns through rectangle-kernel straight-through estimators
with bandwidth ε (jumprelu.bandwidth, default 0.05), K(t) = 1 for |t| < 1/2:

    ∂H(u − θ)/∂θ          ≈ −(1/ε) · K((u − θ)/ε)      (l0 term; gradient reaches θ only)
    ∂[u·H(u − θ)]/∂θ      ≈ −(θ/ε) · K((u − θ)/ε)      (reconstruction; paper eq. 11)
    ∂[u·H(u − θ)]/∂u      =  H(u − θ)

θ is a plain fp32 Parameter. SAELens until 6.48 stored log θ: Adam moves a parameter by at
most ~lr per step, so at lr 3e-4 1,000 steps move log θ by ≤ 0.3 and θ = 0.01 reaches at most
0.0135 — effectively frozen (SAELens PR #718). fp32 because bf16 has 8 mantissa bits: a 1e-4
step on θ ≈ 0.05 is below its spacing (2.4e-4) and rounds away. `post_step` projects θ ≥ 0:
below zero the gate would pass negative pre-activations, and SAELens' relu(pre)·H(pre − θ)
would then disagree.

Sparse training (cfg.kernels ≠ "dense"): the only entries with a nonzero z or a nonzero
gradient (to pre or θ) are those with pre − θ > −ε/2: the active ones and the STE window
below θ. Those become CSR codes of variable L0; the gate, both STEs and the L0 count run on
them alone, then the sparse decode and encoder backward (`saekit.kernels.sparse_ops`).

Decoder rows are unit norm (as in dictionary_learning's JumpReLU trainer): L0 ignores scale,
so without the constraint (W_enc, b_enc, θ)/c with W_dec·c is the same model, and ε = 0.05
would mean a different width for every c. λ lives in `self.sparsity_coefficient`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from saekit.dictionaries.trainable import (
    TrainableDictionary,
    TrainContext,
    TrainOutput,
    sum_sq_error,
)
from saekit.errors import SaekitError
from saekit.kernels.csr import CsrOps, select_ops
from saekit.kernels.sparse_ops import CsrCodes, csr_decode, gathered_pre_acts

if TYPE_CHECKING:
    from saekit.dictionaries.config import SAEConfig


@dataclass(frozen=True)
class JumpReLUConfig:
    """jumprelu: the L0 penalty, its optional target, and the thresholds' estimator."""

    l0_coefficient: float = 1.0
    """Weight of the step-function L0 penalty (initial value if target_l0)."""
    target_l0: float | None = None
    """Steer the L0 coefficient so the final L0 lands here (±10%)."""
    init_threshold: float = 0.01
    """Initial threshold (kept in fp32, parametrized directly, not via exp)."""
    bandwidth: float = 0.05
    """Width of the rectangle kernel of the straight-through estimator."""

    def __post_init__(self) -> None:
        if not self.bandwidth > 0:
            raise SaekitError(f"jumprelu.bandwidth must be > 0, got {self.bandwidth}.")
        if self.init_threshold < 0:
            raise SaekitError(f"jumprelu.init_threshold must be >= 0, got {self.init_threshold}.")
        if self.l0_coefficient < 0:
            raise SaekitError(f"l0_coefficient must be >= 0, got {self.l0_coefficient}.")


def _rectangle(u_BS: Tensor, theta_S: Tensor, eps: float) -> Tensor:
    """K((u − θ)/ε)/ε with K the unit rectangle."""
    return ((u_BS - theta_S).abs() < eps / 2).to(u_BS.dtype) / eps


def _to_theta(g_BS: Tensor, theta_S: Tensor) -> Tensor:
    """Sum a per-entry θ gradient over the batch, unless θ was given per entry (sparse codes)."""
    return (g_BS.sum(dim=0) if g_BS.dim() > theta_S.dim() else g_BS).to(theta_S.dtype)


class StepSTE(torch.autograd.Function):
    """H(u − θ) forward; gradient −(1/ε)K((u − θ)/ε) to θ, none to u."""

    @staticmethod
    def forward(ctx: Any, u_BS: Tensor, theta_S: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(u_BS, theta_S)
        ctx.eps = eps
        return (u_BS > theta_S).to(u_BS.dtype)

    @staticmethod
    def backward(ctx: Any, g_BS: Tensor) -> tuple[None, Tensor, None]:  # type: ignore[override]
        u_BS, theta_S = ctx.saved_tensors
        g_theta_S = _to_theta(-(_rectangle(u_BS, theta_S, ctx.eps) * g_BS), theta_S)
        return None, g_theta_S, None


class JumpReLUSTE(torch.autograd.Function):
    """u·H(u − θ) forward; gradient H(u − θ) to u and −(θ/ε)K((u − θ)/ε) to θ."""

    @staticmethod
    def forward(ctx: Any, u_BS: Tensor, theta_S: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(u_BS, theta_S)
        ctx.eps = eps
        return u_BS * (u_BS > theta_S).to(u_BS.dtype)

    @staticmethod
    def backward(ctx: Any, g_BS: Tensor) -> tuple[Tensor, Tensor, None]:  # type: ignore[override]
        u_BS, theta_S = ctx.saved_tensors
        g_u_BS = (u_BS > theta_S).to(g_BS.dtype) * g_BS
        g_theta_S = _to_theta(-(theta_S * _rectangle(u_BS, theta_S, ctx.eps) * g_BS), theta_S)
        return g_u_BS, g_theta_S, None


class JumpReLUSAE(TrainableDictionary):
    """Per-latent learned thresholds trained with a straight-through L0 penalty."""

    method = "jumprelu"
    unit_norm_decoder = True
    saelens_architecture = "jumprelu"
    keep_dtypes = {"threshold": torch.float32}

    threshold: nn.Parameter

    def __init__(self, cfg: SAEConfig, d_in: int, d_out: int | None = None) -> None:
        super().__init__(cfg, d_in, d_out)
        options: JumpReLUConfig = cfg.options()
        self.init_tied_weights()
        self.threshold = nn.Parameter(
            torch.full((self.d_sae,), options.init_threshold, dtype=torch.float32)
        )
        self.bandwidth = options.bandwidth
        self.sparsity_coefficient = options.l0_coefficient
        self.target_l0 = options.target_l0

    def encode(self, x_BD: Tensor) -> Tensor:
        pre_BS = self.pre_acts(x_BD)
        return pre_BS * (pre_BS > self.threshold.to(pre_BS.dtype))

    def training_forward(self, x_BD: Tensor, ctx: TrainContext) -> TrainOutput:
        ops = select_ops(x_BD.device, self.cfg.kernels)
        if ops is not None:
            return self.training_forward_sparse(x_BD, ctx, ops)
        pre_BS = self.pre_acts(x_BD)
        theta_S = self.threshold.to(pre_BS.dtype)
        z_BS = JumpReLUSTE.apply(pre_BS, theta_S, self.bandwidth)
        x_hat_BD = self.reconstruct(x_BD, z_BS)
        # pre is detached so the L0 gradient reaches θ only (DeepMind's estimator).
        l0_B = StepSTE.apply(pre_BS.detach(), theta_S, self.bandwidth).float().sum(dim=-1)
        coefficient = self.sparsity_coefficient or 0.0
        losses = {
            "mse": sum_sq_error(x_hat_BD, self.target(x_BD, ctx)),
            "l0": coefficient * ctx.sparsity_scale * l0_B.mean(),
        }
        return TrainOutput(x_hat_BD, z_BS, losses)

    def training_forward_sparse(self, x_BD: Tensor, ctx: TrainContext, ops: CsrOps) -> TrainOutput:
        """The same forward on the entries with pre − θ > −ε/2 only (see the module doc)."""
        theta_S = self.threshold.to(self.W_enc.dtype)
        with torch.no_grad():
            pre_BS = self.pre_acts(x_BD)
            # Written as the STE's own test (|u − θ| < ε/2 for u < θ): the same entries, bit
            # for bit, as the dense path's rectangle.
            flat_N = ((pre_BS - theta_S) > -self.bandwidth / 2).flatten().nonzero().squeeze(1)
        W_enc_DS, b_enc_S, b_in_D = self.W_enc, self.b_enc, self.input_bias
        p, pre_N = gathered_pre_acts(pre_BS, flat_N, x_BD, W_enc_DS, b_enc_S, b_in_D, ops)
        theta_N = theta_S.index_select(0, p.col_N)
        z_N = JumpReLUSTE.apply(pre_N, theta_N, self.bandwidth)
        x_hat_BD = self.add_skip(x_BD, csr_decode(z_N, self.W_dec, self.b_dec, p, ops))
        l0 = StepSTE.apply(pre_N.detach(), theta_N, self.bandwidth).float().sum() / p.B
        coefficient = self.sparsity_coefficient or 0.0
        losses = {
            "mse": sum_sq_error(x_hat_BD, self.target(x_BD, ctx)),
            "l0": coefficient * ctx.sparsity_scale * l0,
        }
        return TrainOutput(x_hat_BD, None, losses, CsrCodes(p, z_N))

    @torch.no_grad()
    def post_step(self) -> None:
        # Projected on .data, not clamped in the graph: a clamp would zero θ's gradient at 0
        # and pin any latent that reaches it there.
        self.threshold.data.clamp_(min=0.0)

    def export_tensors(self) -> dict[str, Tensor]:
        return {**super().export_tensors(), "threshold": self.threshold.detach().clamp(min=0.0)}

    @torch.no_grad()
    def import_tensors(self, tensors: dict[str, Tensor], state: dict[str, Any]) -> None:
        super().import_tensors(tensors, state)
        self.threshold.data.copy_(tensors["threshold"])

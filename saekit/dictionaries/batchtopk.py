"""BatchTopK SAE (Bussmann, Leask, Nanda 2024): TopK over the whole batch, JumpReLU at inference.

Training keeps the k·B largest entries of ReLU(pre) over the flattened (B, d_sae) batch, so
tokens share a budget of k·B latents and each may use more or fewer than k. Inference cannot
see the batch, so `encode` is JumpReLU with one global threshold θ:

    z_BS = pre · [pre > θ],   θ ← (1 − 0.01)·θ + 0.01 · min(positive kept activations)

θ is a float64 buffer that `.to(bf16)` leaves alone: in bf16 (spacing 0.8% of the value) the
1% EMA increment would mostly round away. Deviation from
SAELens, which starts the EMA at θ = 0: the first update sets θ to the observed minimum, so θ
is usable from step 1 instead of reaching 1 − 0.99³⁰⁰ = 95% of its level after 300 steps.
Saved for SAELens as "jumprelu" with the per-latent `threshold` filled with θ; the exact
float64 θ is also kept in cfg.json for saekit reloads.

Losses as TopK: `mse` + `aux_k`. With cfg.kernels ≠ "dense" the kept entries are CSR codes of
variable L0 and training runs the sparse kernels (`saekit.kernels.sparse_ops`): sparse decode
and sparse encoder backward, AuxK on the dead latents' columns only. "dense" keeps plain
autograd through the dense pre-activations (the reference; same results).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from saekit.dictionaries.trainable import (
    TrainableDictionary,
    TrainContext,
    TrainOutput,
    check_k,
    resolve_k_aux,
    sum_sq_error,
)
from saekit.kernels.aux_k import aux_k_loss, aux_k_loss_gathered
from saekit.kernels.csr import CsrOps, CsrPattern, select_ops
from saekit.kernels.sparse_ops import CsrCodes, csr_decode, csr_pre_acts
from saekit.kernels.sparse_topk import batch_topk_entries

if TYPE_CHECKING:
    from saekit.dictionaries.config import SAEConfig

THRESHOLD_EMA_RATE = 0.01
"""EMA rate of θ (SAELens topk_threshold_lr): averages θ over the last ~100 batches."""


class BatchEntries:
    """The kept activations of one batch, sorted row-major (row, then latent)."""

    def __init__(self, pre_BS: Tensor, k: int) -> None:
        B, S = pre_BS.shape
        vals_N, flat_N = pre_BS.flatten().topk(k * B, sorted=False)
        self.flat_N, order_N = flat_N.sort()
        self.vals_N = vals_N[order_N].relu()
        self.idx_N = self.flat_N % S
        # Start of each row's run; searchsorted (unlike bincount) needs no host sync on GPU.
        rows_B = torch.arange(B, device=pre_BS.device)
        self.offsets_B = torch.searchsorted(self.flat_N // S, rows_B)
        self.shape = (B, S)

    def dense(self) -> Tensor:
        """z_BS with zeros where not kept (differentiable in the values)."""
        B, S = self.shape
        z_flat = self.vals_N.new_zeros(B * S).scatter(0, self.flat_N, self.vals_N)
        return z_flat.view(B, S)

    def decode(self, W_dec_SD: Tensor, weight_N: Tensor | None = None) -> Tensor:
        """Σ over each row's entries of value · W_dec[latent] (no b_dec); weight_N masks entries."""
        vals_N = self.vals_N if weight_N is None else self.vals_N * weight_N
        return F.embedding_bag(
            self.idx_N,
            W_dec_SD,
            self.offsets_B,
            mode="sum",
            per_sample_weights=vals_N.to(W_dec_SD.dtype),
        )


class BatchTopKSAE(TrainableDictionary):
    """k active latents per token on average over each training batch."""

    method = "batchtopk"
    unit_norm_decoder = True
    saelens_architecture = "jumprelu"
    keep_dtypes = {"threshold": torch.float64}

    threshold: Tensor

    def __init__(self, cfg: SAEConfig, d_in: int, d_out: int | None = None) -> None:
        super().__init__(cfg, d_in, d_out)
        check_k(cfg)
        self.k = cfg.k
        self.k_aux = resolve_k_aux(cfg, d_in)
        self.init_tied_weights()
        # 0 = not yet estimated; the first training batch sets it.
        self.register_buffer("threshold", torch.zeros((), dtype=torch.float64))

    def encode(self, x_BD: Tensor) -> Tensor:
        pre_BS = self.pre_acts(x_BD)
        return pre_BS * (pre_BS > self.threshold.to(pre_BS.dtype))

    def select(self, pre_BS: Tensor) -> BatchEntries:
        """Keep the k·B largest ReLU activations of the batch (training only)."""
        return BatchEntries(pre_BS, self.k)

    @torch.no_grad()
    def update_threshold(self, vals_N: Tensor) -> None:
        """EMA of the smallest positive kept activation, without a host sync."""
        positive_min = torch.where(vals_N > 0, vals_N, float("inf")).min().double()
        theta = self.threshold
        ema = (1 - THRESHOLD_EMA_RATE) * theta + THRESHOLD_EMA_RATE * positive_min
        new = torch.where(theta > 0, ema, positive_min)
        # A batch with no positive activation (all inf) leaves θ unchanged.
        theta.copy_(torch.where(torch.isfinite(positive_min), new, theta))

    def sparse_entries(self, x_BD: Tensor, ops: CsrOps) -> tuple[CsrPattern, Tensor]:
        """The kept entries as CSR and their ReLU'd values, differentiable through the sparse
        encoder backward (selected without autograd and without a B×S buffer)."""
        W_enc_DS, b_enc_S, b_in_D = self.W_enc, self.b_enc, self.input_bias
        with torch.no_grad():
            xc_BD = self.centered(x_BD)
            flat_N, pre_N = batch_topk_entries(xc_BD, W_enc_DS, b_enc_S, self.k)
        p = CsrPattern.from_flat(flat_N, (x_BD.shape[0], self.d_sae))
        pre_N = csr_pre_acts(pre_N, x_BD, W_enc_DS, b_enc_S, b_in_D, p, ops)
        return p, pre_N.relu()

    def _aux_k_sparse(self, x_BD: Tensor, x_hat_BO: Tensor, ctx: TrainContext) -> Tensor:
        return aux_k_loss_gathered(
            x_BD,
            x_hat_BO,
            self.W_enc,
            self.b_enc,
            self.W_dec,
            self.input_bias,
            ctx.dead_mask_S,
            self.k_aux,
            self.cfg.aux_k_coefficient,
            self.target(x_BD, ctx),
        )

    def training_forward(self, x_BD: Tensor, ctx: TrainContext) -> TrainOutput:
        ops = select_ops(x_BD.device, self.cfg.kernels)
        target_BO = self.target(x_BD, ctx)
        if ops is not None:
            p, vals_N = self.sparse_entries(x_BD, ops)
            self.update_threshold(vals_N.detach())
            x_hat_BO = self.add_skip(x_BD, csr_decode(vals_N, self.W_dec, self.b_dec, p, ops))
            losses = {
                "mse": sum_sq_error(x_hat_BO, target_BO),
                "aux_k": self._aux_k_sparse(x_BD, x_hat_BO, ctx),
            }
            return TrainOutput(x_hat_BO, None, losses, CsrCodes(p, vals_N))
        pre_BS = self.pre_acts(x_BD)
        entries = self.select(pre_BS)
        x_hat_BO = self.add_skip(x_BD, entries.decode(self.W_dec) + self.b_dec)
        self.update_threshold(entries.vals_N)
        losses = {
            "mse": sum_sq_error(x_hat_BO, target_BO),
            "aux_k": self._aux_k(target_BO, x_hat_BO, pre_BS, ctx),
        }
        return TrainOutput(x_hat_BO, entries.dense(), losses)

    def _aux_k(
        self, target_BO: Tensor, x_hat_BO: Tensor, pre_BS: Tensor, ctx: TrainContext
    ) -> Tensor:
        return aux_k_loss(
            target_BO,
            x_hat_BO,
            pre_BS,
            self.W_dec,
            ctx.dead_mask_S,
            self.k_aux,
            self.cfg.aux_k_coefficient,
        )

    def export_tensors(self) -> dict[str, Tensor]:
        theta_S = torch.full((self.d_sae,), float(self.threshold), dtype=torch.float32)
        return {**super().export_tensors(), "threshold": theta_S.to(self.W_enc.device)}

    def export_state(self) -> dict[str, Any]:
        # A Python float is the float64 θ exactly, and JSON round-trips it bit for bit.
        return {**super().export_state(), "threshold": float(self.threshold)}

    @torch.no_grad()
    def import_tensors(self, tensors: dict[str, Tensor], state: dict[str, Any]) -> None:
        super().import_tensors(tensors, state)
        theta = state.get("threshold")
        if theta is None:
            theta = float(tensors["threshold"].max())
        self.threshold.fill_(float(theta))

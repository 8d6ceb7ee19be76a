"""Sparse decode and sparse encoder backward for codes of any L0, as autograd functions.

With the codes as CSR (see csr.py; N entries, fixed k or variable L0):

    csr_decode:    x̂_BD = Σ_{n in row b} v_n W_dec[col_n] + b_dec
                   ∂v_n = g_b · W_dec[col_n]    ∂W_dec = Cᵀ(v) g    ∂b_dec = Σ_b g
    csr_pre_acts:  p_n  = ((x − b_in) W_enc + b_enc)[row_n, col_n]   (values already computed)
                   ∂W_encᵀ = Cᵀ(∂p) (x − b_in)     ∂b_enc = bincount(col, ∂p)
                   ∂b_in = −W_enc ∂b_enc           ∂x = C(∂p) W_encᵀ (only if x needs it)

b_in is an SAE's b_dec (pre-bias centering); a transcoder has none (None), and its decode
writes d_out columns while the encoder backward reads d_in ones: nothing here ties the two.

So after the one dense encoder GEMM (run by the caller, without autograd, to choose the
entries) no [B, d_sae] tensor is built: autograd through a dense gather would scatter ∂p into
B·S zeros and run a second GEMM (xcᵀ ∂p) for ∂W_enc. The activation (ReLU, JumpReLU's gate)
is applied to the N values between the two with ordinary autograd.

Gradients come back in each parameter's dtype; the products accumulate in fp32.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from saekit.kernels.csr import CsrOps, CsrPattern, grad_like


class CsrDecode(torch.autograd.Function):
    """x̂ from CSR codes; see the module docstring."""

    @staticmethod
    def forward(
        ctx: Any,
        values_N: Tensor,
        W_dec_SD: Tensor,
        b_dec_D: Tensor | None,
        p: CsrPattern,
        ops: CsrOps,
    ) -> Tensor:
        x_hat_BD = ops.rows_matmul(p, values_N, W_dec_SD)
        if b_dec_D is not None:
            x_hat_BD += b_dec_D
        ctx.save_for_backward(values_N, W_dec_SD)
        ctx.p, ctx.ops, ctx.has_bias = p, ops, b_dec_D is not None
        return x_hat_BD.to(W_dec_SD.dtype)

    @staticmethod
    def backward(ctx: Any, g_BD: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        values_N, W_dec_SD = ctx.saved_tensors
        p, ops = ctx.p, ctx.ops
        g_values_N = g_W_dec_SD = g_b_dec_D = None
        if ctx.needs_input_grad[0]:
            g_values_N = ops.sampled_dot(p, g_BD, W_dec_SD).to(values_N.dtype)
        if ctx.needs_input_grad[1]:
            g_W_dec_SD = ops.latents_matmul(p, values_N, g_BD).to(W_dec_SD.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            g_b_dec_D = g_BD.sum(0, dtype=torch.float32).to(W_dec_SD.dtype)
        return g_values_N, g_W_dec_SD, g_b_dec_D, None, None


class CsrPreActs(torch.autograd.Function):
    """The encoder pre-activations at the CSR entries, with a sparse backward."""

    @staticmethod
    def forward(
        ctx: Any,
        pre_N: Tensor,
        x_BD: Tensor,
        W_enc_DS: Tensor,
        b_enc_S: Tensor,
        b_in_D: Tensor | None,
        p: CsrPattern,
        ops: CsrOps,
    ) -> Tensor:
        ctx.save_for_backward(x_BD, W_enc_DS, b_in_D)
        ctx.p, ctx.ops = p, ops
        return pre_N.detach().clone()

    @staticmethod
    def backward(ctx: Any, g_N: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x_BD, W_enc_DS, b_in_D = ctx.saved_tensors
        p, ops = ctx.p, ctx.ops
        dtype = W_enc_DS.dtype
        wide = torch.float64 if dtype == torch.float64 else torch.float32
        g_N = g_N.to(wide)
        g_x_BD = g_W_enc_DS = g_b_enc_S = g_b_in_D = None
        if ctx.needs_input_grad[2]:
            xc_BD = x_BD.to(wide) if b_in_D is None else x_BD.to(wide) - b_in_D.to(wide)
            g_W_enc_DS = grad_like(ops.latents_matmul(p, g_N, xc_BD).to(dtype), W_enc_DS)
        g_b_enc_full_S = g_N.new_zeros(p.S).index_add_(0, p.col_N, g_N)
        if ctx.needs_input_grad[3]:
            g_b_enc_S = g_b_enc_full_S.to(dtype)
        if ctx.needs_input_grad[4]:
            # Σ_b ∂L/∂(x − b_in)_b = W_enc ∂b_enc: a mat-vec instead of a B×D product.
            g_b_in_D = -(W_enc_DS.to(wide) @ g_b_enc_full_S).to(b_in_D.dtype)
        if ctx.needs_input_grad[1]:
            g_x_BD = ops.rows_matmul(p, g_N, W_enc_DS.t()).to(x_BD.dtype)
        return None, g_x_BD, g_W_enc_DS, g_b_enc_S, g_b_in_D, None, None


def csr_decode(
    values_N: Tensor, W_dec_SD: Tensor, b_dec_D: Tensor | None, p: CsrPattern, ops: CsrOps
) -> Tensor:
    """Σ over each row's entries of value · W_dec[latent] (+ b_dec unless None): x̂_BD."""
    return CsrDecode.apply(values_N, W_dec_SD, b_dec_D, p, ops)


def csr_pre_acts(
    pre_N: Tensor,
    x_BD: Tensor,
    W_enc_DS: Tensor,
    b_enc_S: Tensor,
    b_in_D: Tensor | None,
    p: CsrPattern,
    ops: CsrOps,
) -> Tensor:
    """pre_N (computed without autograd) made differentiable in x, W_enc, b_enc and b_in
    (the input centering bias; None: x is encoded as it is)."""
    return CsrPreActs.apply(pre_N, x_BD, W_enc_DS, b_enc_S, b_in_D, p, ops)


class CsrCodes:
    """Codes of variable L0 as a pattern plus values (a JumpReLU gate may leave zeros)."""

    def __init__(self, p: CsrPattern, values_N: Tensor) -> None:
        self.p, self.values_N = p, values_N

    def dense(self) -> Tensor:
        """z_BS with zeros where not kept (differentiable in the values)."""
        p = self.p
        flat_N = p.row_N.long() * p.S + p.col_N.long()
        z_flat = self.values_N.new_zeros(p.B * p.S).scatter(0, flat_N, self.values_N)
        return z_flat.view(p.B, p.S)

    def firing_counts_S(self) -> Tensor:
        """Number of rows in which each latent is active (z ≠ 0), as int64."""
        fired_N = (self.values_N != 0).long()
        return fired_N.new_zeros(self.p.S).index_add_(0, self.p.col_N, fired_N)


def gathered_pre_acts(
    pre_BS: Tensor,
    flat_N: Tensor,
    x_BD: Tensor,
    W_enc_DS: Tensor,
    b_enc_S: Tensor,
    b_in_D: Tensor | None,
    ops: CsrOps,
) -> tuple[CsrPattern, Tensor]:
    """The pattern of the increasing row-major positions flat_N of pre_BS (computed without
    autograd) and the pre-activations there, differentiable through the sparse backward."""
    p = CsrPattern.from_flat(flat_N, (pre_BS.shape[0], pre_BS.shape[1]))
    pre_N = pre_BS.flatten()[flat_N]
    return p, csr_pre_acts(pre_N, x_BD, W_enc_DS, b_enc_S, b_in_D, p, ops)

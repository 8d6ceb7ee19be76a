"""Triton kernels for the CSR products of `saekit.kernels.csr` (the `saekit[triton]` extra).

Two kernels cover the three products:

- `_spmm_kernel`: out[r] = Σ_{n in row r} v_n · M[idx_n], one program per (row, D block), an
  embedding bag with fp32 accumulation. By row it is the decoder forward (M = W_dec) and ∂x
  (M = W_encᵀ); over the latent-major copy of the pattern (rows = latents, idx = token rows)
  it is ∂W_dec and ∂W_enc, so weight gradients are gathered per latent, never atomically added.
- `_sampled_dot_kernel`: out[n] = G[row_n] · M[col_n] for a block of entries at a time.

Loop bounds come from crow, so variable L0 (BatchTopK, JumpReLU) costs nothing extra. Under
`TRITON_INTERPRET=1` the same kernels run on CPU tensors (slowly: tests use tiny shapes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl
from torch import Tensor

if TYPE_CHECKING:  # csr.py imports this module when Triton is selected
    from saekit.kernels.csr import CsrPattern

BLOCK_D = 128
"""Columns per program: 4.5 programs per row at d_in 576, 18 at 2304."""
BLOCK_N = 32
"""Entries per program of the sampled dot product."""


@triton.jit
def _spmm_kernel(
    crow_ptr,
    idx_ptr,
    val_ptr,
    m_ptr,
    out_ptr,
    D,
    stride_m0,
    stride_m1,
    stride_out0,
    BLOCK: tl.constexpr,
):
    r = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask_d = offs_d < D
    start = tl.load(crow_ptr + r)
    end = tl.load(crow_ptr + r + 1)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for n in range(start, end):
        j = tl.load(idx_ptr + n).to(tl.int64)
        v = tl.load(val_ptr + n).to(tl.float32)
        m = tl.load(m_ptr + j * stride_m0 + offs_d * stride_m1, mask=mask_d, other=0.0)
        acc += v * m.to(tl.float32)
    out = out_ptr + r.to(tl.int64) * stride_out0 + offs_d
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask_d)


@triton.jit
def _sampled_dot_kernel(
    row_ptr,
    col_ptr,
    g_ptr,
    m_ptr,
    out_ptr,
    N,
    D,
    stride_g0,
    stride_g1,
    stride_m0,
    stride_m1,
    BLOCK_N: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    rows = tl.load(row_ptr + offs_n, mask=mask_n, other=0).to(tl.int64)
    cols = tl.load(col_ptr + offs_n, mask=mask_n, other=0).to(tl.int64)
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for d0 in range(0, D, BLOCK):
        offs_d = d0 + tl.arange(0, BLOCK)
        mask = mask_n[:, None] & (offs_d < D)[None, :]
        g = tl.load(
            g_ptr + rows[:, None] * stride_g0 + offs_d[None, :] * stride_g1, mask=mask, other=0.0
        )
        m = tl.load(
            m_ptr + cols[:, None] * stride_m0 + offs_d[None, :] * stride_m1, mask=mask, other=0.0
        )
        acc += tl.sum(g.to(tl.float32) * m.to(tl.float32), axis=1)
    tl.store(out_ptr + offs_n, acc, mask=mask_n)


def _spmm(crow: Tensor, idx: Tensor, values: Tensor, M: Tensor, n_rows: int) -> Tensor:
    D = M.shape[1]
    out = M.new_empty(n_rows, D, dtype=_acc_dtype(M))
    if n_rows == 0 or D == 0:
        return out
    grid = (n_rows, triton.cdiv(D, BLOCK_D))
    _spmm_kernel[grid](
        crow, idx, values, M, out, D, M.stride(0), M.stride(1), out.stride(0), BLOCK=BLOCK_D
    )
    return out


def _acc_dtype(t: Tensor) -> torch.dtype:
    # fp64 inputs (gradcheck) get an fp64 result, though the kernels accumulate in fp32.
    return torch.float64 if t.dtype == torch.float64 else torch.float32


class TritonCsrOps:
    """The CSR products as Triton kernels; results in fp32 (fp64 for fp64 inputs)."""

    name = "triton"

    def rows_matmul(self, p: CsrPattern, values_N: Tensor, M_SD: Tensor) -> Tensor:
        return _spmm(p.crow_B1, p.col_N, values_N.contiguous(), M_SD, p.B)

    def latents_matmul(self, p: CsrPattern, values_N: Tensor, R_BD: Tensor) -> Tensor:
        order_N, crow_S1, rows_N = p.by_latent()
        return _spmm(crow_S1, rows_N, values_N[order_N].contiguous(), R_BD, p.S)

    def sampled_dot(self, p: CsrPattern, G_BD: Tensor, M_SD: Tensor) -> Tensor:
        out_N = G_BD.new_empty(p.N, dtype=_acc_dtype(G_BD))
        if p.N == 0:
            return out_N
        D = G_BD.shape[1]
        _sampled_dot_kernel[(triton.cdiv(p.N, BLOCK_N),)](
            p.row_N,
            p.col_N,
            G_BD,
            M_SD,
            out_N,
            p.N,
            D,
            G_BD.stride(0),
            G_BD.stride(1),
            M_SD.stride(0),
            M_SD.stride(1),
            BLOCK_N=BLOCK_N,
            BLOCK=BLOCK_D,
        )
        return out_N

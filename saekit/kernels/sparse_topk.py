"""A TopK autoencoder whose backward touches only the k kept latents of each row.

    pre_BS = (x − b_dec) W_enc + b_enc        the one dense GEMM (B·D·S multiply-adds)
    v, i   = top-k of pre per row, v ← ReLU(v)   (in cache-sized row blocks: no B×S buffer)
    x̂_BD   = Σ_j v_j W_dec[i_j] + b_dec        embedding_bag: B·k decoder rows

With g = ∂L/∂x̂ (and ∂L/∂v if the codes feed another loss), the backward is

    ∂v[b,j]  = g_b · W_dec[i_bj]                  sampled dense-dense product, B·k dots
    ∂pre     = ∂v · [v > 0]                       at the kept entries only (the TopK+ReLU mask)
    ∂W_dec   = Cᵀ(v) g,  ∂W_encᵀ = Cᵀ(∂pre)(x − b_dec)   C = the codes as a sparse B×S matrix
    ∂b_enc   = bincount(i, ∂pre),  ∂b_dec = Σ_b g − W_enc ∂b_enc

so no [B, d_sae] tensor is built after the GEMM: autograd through a dense topk would scatter
∂pre into B·S zeros and run a second GEMM (xᵀ ∂pre) for ∂W_enc. The sparse products run on
torch's CSR kernels (MKL on CPU, cuSPARSE on GPU), fp32/fp64 only.

AuxK needs the pre-activations of dead latents: pass their indices as `dead_N` and the function
also returns pre[:, dead_N] (differentiable), so the dense work scales with the dead count.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

SPARSE_DTYPES = (torch.float32, torch.float64)
"""Dtypes torch's sparse CSR products support on CPU (bf16/fp16 have no CPU kernel)."""


class SparseCodes(NamedTuple):
    """The k kept latents of each row: the codes without their zeros."""

    values_BK: Tensor
    """Activations (≥ 0; a 0 means fewer than k latents were positive in that row)."""
    indices_BK: Tensor
    """Latent index of each value, increasing within a row."""
    d_sae: int
    """Number of latents (width of the dense codes)."""

    def dense(self) -> Tensor:
        """z_BS with zeros where not kept (differentiable in the values)."""
        z_BS = self.values_BK.new_zeros(*self.values_BK.shape[:-1], self.d_sae)
        return z_BS.scatter(-1, self.indices_BK, self.values_BK)

    def firing_counts_S(self) -> Tensor:
        """Number of rows in which each latent is active (z ≠ 0), as int64."""
        fired_N = (self.values_BK != 0).flatten().long()
        counts_S = fired_N.new_zeros(self.d_sae)
        return counts_S.scatter_add_(0, self.indices_BK.flatten(), fired_N)


CHUNK_BYTES = 1 << 24
"""Pre-activation block per GEMM+topk step: 16 MB (455 rows at d_sae 9216, fp32) stays in a
32 MB L3, so topk reads it from cache: −40 ms of CPU per step at B=4096 and no B×S buffer."""


def _relu_sorted(vals_BK: Tensor, idx_BK: Tensor) -> tuple[Tensor, Tensor]:
    # The sort (B·k elements) puts the codes in CSR order, independent of topk's layout.
    idx_BK, order_BK = idx_BK.sort(dim=-1)
    return vals_BK.gather(-1, order_BK).relu(), idx_BK


def sorted_topk(pre_BS: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """ReLU'd top-k values and their indices, indices increasing within each row.

    topk on pre then ReLU equals topk on ReLU(pre) and saves one B×S pass.
    """
    return _relu_sorted(*pre_BS.topk(k, dim=-1, sorted=False))


def encode_topk(
    xc_BD: Tensor, W_enc_DS: Tensor, b_enc_S: Tensor, k: int, dead_N: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """sorted_topk(xc W_enc + b_enc) and pre[:, dead_N], one cache-sized block of rows at a time."""
    (B, _), S = xc_BD.shape, W_enc_DS.shape[1]
    rows = max(64, CHUNK_BYTES // (S * W_enc_DS.element_size()))
    vals_BK = xc_BD.new_empty(B, k)
    idx_BK = torch.empty(B, k, dtype=torch.long, device=xc_BD.device)
    pre_dead_BN = xc_BD.new_empty(B, dead_N.numel())
    pre_CS = xc_BD.new_empty(min(rows, B), S)
    for start in range(0, B, rows):
        stop = min(start + rows, B)
        block_CS = pre_CS[: stop - start]
        torch.addmm(b_enc_S, xc_BD[start:stop], W_enc_DS, out=block_CS)
        torch.topk(block_CS, k, dim=-1, sorted=False, out=(vals_BK[start:stop], idx_BK[start:stop]))
        if dead_N.numel():
            torch.index_select(block_CS, 1, dead_N, out=pre_dead_BN[start:stop])
    return (*_relu_sorted(vals_BK, idx_BK), pre_dead_BN)


def _csr(crow: Tensor, col: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    # The invariants (sorted, in-range columns) hold by construction; torch's one-time "CSR
    # support is in beta" notice would only puzzle users.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size, check_invariants=False)


def stable_argsort(keys_N: Tensor, n_keys: int) -> Tensor:
    """argsort(stable=True) of keys in [0, n_keys), on CPU by numpy's single-threaded sort.

    torch's parallel CPU sort of B·k = 131k keys takes ~2 ms on idle cores but stalls for up
    to ~190 ms when other jobs share them; numpy's radix sort of uint16 keys (d_sae ≤ 65536)
    takes 1.6 ms either way (wider int64 keys: ~14 ms).
    """
    if keys_N.device.type != "cpu":
        return keys_N.argsort(stable=True)
    dtype = np.uint16 if n_keys <= 1 << 16 else np.int64
    return torch.from_numpy(np.argsort(keys_N.numpy().astype(dtype), kind="stable"))


class _Pattern:
    """Where the codes are nonzero, as CSR both ways: B×S by row and S×B by latent."""

    def __init__(self, idx_BK: Tensor, d_sae: int) -> None:
        (B, K), device = idx_BK.shape, idx_BK.device
        self.B, self.S = B, d_sae
        # int32 indices, MKL's own: int64 ones are converted on every product (5 extra ops).
        self.col_N = idx_BK.flatten().int()  # entry n is (row n // K, latent col_N[n])
        self.crow_B1 = torch.arange(0, B * K + 1, K, dtype=torch.int32, device=device)
        # Stable, so each latent's rows stay increasing, as CSR requires.
        self.order_N = stable_argsort(self.col_N, d_sae)
        self.rows_N = torch.empty_like(self.col_N)
        torch.div(self.order_N, K, rounding_mode="floor", out=self.rows_N)
        self.crow_S1 = torch.zeros(d_sae + 1, dtype=torch.int32, device=device)
        counts_S = torch.bincount(self.col_N, minlength=d_sae)
        torch.cumsum(counts_S, 0, dtype=torch.int32, out=self.crow_S1[1:])

    def by_row(self, values_BK: Tensor) -> Tensor:
        """C(values): the B×S sparse matrix with these values at the kept entries."""
        return _csr(self.crow_B1, self.col_N, values_BK.flatten(), (self.B, self.S))

    def t_matmul(self, values_BK: Tensor, rhs_BD: Tensor) -> Tensor:
        """C(values)ᵀ rhs → [S, D]: row s sums values · rhs_b over the rows b that kept s."""
        values_N = values_BK.flatten()[self.order_N]
        C_SB = _csr(self.crow_S1, self.rows_N, values_N, (self.S, self.B))
        # beta=0 ignores `out`'s contents: skips sparse.mm's zero fill and copy (2 S×D passes).
        out_SD = rhs_BD.new_empty(self.S, rhs_BD.shape[1])
        return torch.addmm(out_SD, C_SB, rhs_BD, beta=0, out=out_SD)


class TopKAutoencoder(torch.autograd.Function):
    """(x̂, values, indices, pre_dead) of a TopK SAE; see the module docstring."""

    @staticmethod
    def forward(
        ctx: Any,
        x_BD: Tensor,
        W_enc_DS: Tensor,
        b_enc_S: Tensor,
        W_dec_SD: Tensor,
        b_dec_D: Tensor,
        k: int,
        dead_N: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        xc_BD = x_BD.to(W_enc_DS.dtype) - b_dec_D
        vals_BK, idx_BK, pre_dead_BN = encode_topk(xc_BD, W_enc_DS, b_enc_S, k, dead_N)
        x_hat_BD = F.embedding_bag(idx_BK, W_dec_SD, per_sample_weights=vals_BK, mode="sum")
        x_hat_BD += b_dec_D
        ctx.save_for_backward(xc_BD, vals_BK, idx_BK, W_enc_DS, W_dec_SD, dead_N)
        ctx.x_dtype = x_BD.dtype
        ctx.mark_non_differentiable(idx_BK)
        ctx.set_materialize_grads(False)
        return x_hat_BD, vals_BK, idx_BK, pre_dead_BN

    @staticmethod
    def backward(
        ctx: Any,
        g_x_hat_BD: Tensor | None,
        g_vals_BK: Tensor | None,
        _g_idx: Tensor | None,
        g_pre_dead_BN: Tensor | None,
    ) -> tuple[Tensor | None, ...]:
        xc_BD, vals_BK, idx_BK, W_enc_DS, W_dec_SD, dead_N = ctx.saved_tensors
        S = W_dec_SD.shape[0]
        codes = _Pattern(idx_BK, S)
        g_v_BK, g_W_dec_SD, g_b_dec_D = g_vals_BK, None, None
        if g_x_hat_BD is not None:
            C_BS = codes.by_row(vals_BK)
            sampled = torch.sparse.sampled_addmm(C_BS, g_x_hat_BD, W_dec_SD.t(), beta=0.0)
            g_dec_BK = sampled.values().view_as(vals_BK)
            g_v_BK = g_dec_BK if g_v_BK is None else g_v_BK + g_dec_BK
            g_W_dec_SD = codes.t_matmul(vals_BK, g_x_hat_BD)
            g_b_dec_D = g_x_hat_BD.sum(0)
        if g_v_BK is None:
            g_v_BK = torch.zeros_like(vals_BK)
        g_pre_BK = g_v_BK * (vals_BK > 0)
        g_W_enc_SD = codes.t_matmul(g_pre_BK, xc_BD)
        g_b_enc_S = g_pre_BK.new_zeros(S).index_add_(0, idx_BK.flatten(), g_pre_BK.flatten())
        if g_pre_dead_BN is not None and dead_N.numel():
            g_W_enc_SD.index_add_(0, dead_N, g_pre_dead_BN.t() @ xc_BD)
            g_b_enc_S.index_add_(0, dead_N, g_pre_dead_BN.sum(0))
        g_xc_sum_D = W_enc_DS @ g_b_enc_S  # Σ_b ∂L/∂(x − b_dec)_b
        g_b_dec_D = -g_xc_sum_D if g_b_dec_D is None else g_b_dec_D - g_xc_sum_D
        g_x_BD = None
        if ctx.needs_input_grad[0]:
            g_x_BD = torch.sparse.mm(codes.by_row(g_pre_BK), W_enc_DS.t())
            if g_pre_dead_BN is not None and dead_N.numel():
                g_x_BD += g_pre_dead_BN @ W_enc_DS.index_select(1, dead_N).t()
            g_x_BD = g_x_BD.to(ctx.x_dtype)
        return g_x_BD, g_W_enc_SD.t(), g_b_enc_S, g_W_dec_SD, g_b_dec_D, None, None


def topk_autoencoder(
    x_BD: Tensor,
    W_enc_DS: Tensor,
    b_enc_S: Tensor,
    W_dec_SD: Tensor,
    b_dec_D: Tensor,
    k: int,
    dead_N: Tensor | None = None,
) -> tuple[Tensor, SparseCodes, Tensor]:
    """x̂_BD, the sparse codes, and pre-activations of the `dead_N` latents (B×0 if None)."""
    if dead_N is None:
        dead_N = torch.zeros(0, dtype=torch.long, device=x_BD.device)
    x_hat_BD, vals_BK, idx_BK, pre_dead_BN = TopKAutoencoder.apply(
        x_BD, W_enc_DS, b_enc_S, W_dec_SD, b_dec_D, k, dead_N
    )
    return x_hat_BD, SparseCodes(vals_BK, idx_BK, W_dec_SD.shape[0]), pre_dead_BN

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

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from saekit.kernels.csr import SPARSE_DTYPES as SPARSE_DTYPES
from saekit.kernels.csr import CsrPattern, TorchCsrOps, grad_like
from saekit.kernels.csr import stable_argsort as stable_argsort


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
32 MB L3, so topk reads it from cache, and no B×S buffer is built (docs/benchmarks.md)."""


def _relu_sorted(vals_BK: Tensor, idx_BK: Tensor) -> tuple[Tensor, Tensor]:
    # The sort (B·k elements) puts the codes in CSR order, independent of topk's layout.
    idx_BK, order_BK = idx_BK.sort(dim=-1)
    return vals_BK.gather(-1, order_BK).relu(), idx_BK


def sorted_topk(pre_BS: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """ReLU'd top-k values and their indices, indices increasing within each row.

    topk on pre then ReLU equals topk on ReLU(pre) and saves one B×S pass.
    """
    return _relu_sorted(*pre_BS.topk(k, dim=-1, sorted=False))


TOPK_GROUP = 16
"""Rows of `row_topk` are cut into groups of 16 strided entries (see there)."""


def row_topk(pre_RS: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k largest entries of each row (values, indices; unsorted), as torch.topk but reading
    each row once for group maxima and selecting among 16k candidates instead of S entries.

    Entry s belongs to group s mod G (G = S/16; a strided view, so the maxima are 16 full-width
    vector maxima). The row's top k lie in the k groups with the largest maxima: an entry of
    any other group is below k group maxima. Exact in the values; with tied values the kept
    indices may differ from torch.topk's, as they may between torch.topk's own kernels.
    """
    R, S = pre_RS.shape
    G = S // TOPK_GROUP
    if S % TOPK_GROUP or 4 * k > G:
        return pre_RS.topk(k, dim=-1, sorted=False)
    pre_RgG = pre_RS.view(R, TOPK_GROUP, G)
    groups_RK = pre_RgG.amax(1).topk(k, dim=-1, sorted=False).indices
    cand_RgK = pre_RgG.gather(2, groups_RK.unsqueeze(1).expand(R, TOPK_GROUP, k))
    vals_RK, pos_RK = cand_RgK.view(R, TOPK_GROUP * k).topk(k, dim=-1, sorted=False)
    idx_RK = groups_RK.gather(1, pos_RK % k) + (pos_RK // k) * G
    return vals_RK, idx_RK


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
        vals_BK[start:stop], idx_BK[start:stop] = row_topk(block_CS, k)
        if dead_N.numel():
            torch.index_select(block_CS, 1, dead_N, out=pre_dead_BN[start:stop])
    return (*_relu_sorted(vals_BK, idx_BK), pre_dead_BN)


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
        codes, ops = CsrPattern.fixed_k(idx_BK, S), TorchCsrOps()
        g_v_BK, g_W_dec_SD, g_b_dec_D = g_vals_BK, None, None
        if g_x_hat_BD is not None:
            C_BS = codes.by_row(vals_BK.flatten())
            sampled = torch.sparse.sampled_addmm(C_BS, g_x_hat_BD, W_dec_SD.t(), beta=0.0)
            g_dec_BK = sampled.values().view_as(vals_BK)
            g_v_BK = g_dec_BK if g_v_BK is None else g_v_BK + g_dec_BK
            g_W_dec_SD = ops.latents_matmul(codes, vals_BK.flatten(), g_x_hat_BD)
            g_b_dec_D = g_x_hat_BD.sum(0)
        if g_v_BK is None:
            g_v_BK = torch.zeros_like(vals_BK)
        g_pre_BK = g_v_BK * (vals_BK > 0)
        g_W_enc_SD = ops.latents_matmul(codes, g_pre_BK.flatten(), xc_BD)
        g_b_enc_S = g_pre_BK.new_zeros(S).index_add_(0, idx_BK.flatten(), g_pre_BK.flatten())
        if g_pre_dead_BN is not None and dead_N.numel():
            g_W_enc_SD.index_add_(0, dead_N, g_pre_dead_BN.t() @ xc_BD)
            g_b_enc_S.index_add_(0, dead_N, g_pre_dead_BN.sum(0))
        g_xc_sum_D = W_enc_DS @ g_b_enc_S  # Σ_b ∂L/∂(x − b_dec)_b
        g_b_dec_D = -g_xc_sum_D if g_b_dec_D is None else g_b_dec_D - g_xc_sum_D
        g_x_BD = None
        if ctx.needs_input_grad[0]:
            g_x_BD = torch.sparse.mm(codes.by_row(g_pre_BK.flatten()), W_enc_DS.t())
            if g_pre_dead_BN is not None and dead_N.numel():
                g_x_BD += g_pre_dead_BN @ W_enc_DS.index_select(1, dead_N).t()
            g_x_BD = g_x_BD.to(ctx.x_dtype)
        return g_x_BD, grad_like(g_W_enc_SD, W_enc_DS), g_b_enc_S, g_W_dec_SD, g_b_dec_D, None, None


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


CANDIDATES_PER_K = 4
"""BatchTopK candidates per row, as a multiple of k: rows using more than 4k latents are rare
and are recomputed in full, so the selection stays exact."""


def batch_topk_entries(
    xc_BD: Tensor, W_enc_DS: Tensor, b_enc_S: Tensor, k: int
) -> tuple[Tensor, Tensor]:
    """The k·B largest ReLU'd pre-activations of the batch: increasing row-major positions
    flat_N = row·S + latent and their values, without a B×S buffer.

    Each row offers its top m = 4k (cache-blocked GEMM + topk, as TopK), and the batch keeps
    the k·B largest offers. A row none of whose offers was left out may hold more winners: those
    rows are recomputed in full and the selection rerun. Exact, because any other row's
    unoffered entries lie below its own m-th offer, which lost. Flattening B×S for one topk
    costs about as much as the encoder GEMM; the row topk plus a topk over B·m offers, under a
    third of it (docs/benchmarks.md).
    """
    (B, _), S = xc_BD.shape, W_enc_DS.shape[1]
    m = min(S, CANDIDATES_PER_K * k)
    no_dead = torch.zeros(0, dtype=torch.long, device=xc_BD.device)
    vals_BM, idx_BM, _ = encode_topk(xc_BD, W_enc_DS, b_enc_S, m, no_dead)
    rows_B1 = torch.arange(B, device=xc_BD.device).unsqueeze(1)
    offer_vals, offer_flat = vals_BM.flatten(), (rows_B1 * S + idx_BM).flatten()
    won = offer_vals.topk(k * B, sorted=False).indices
    full_rows = (torch.bincount(won // m, minlength=B) == m).nonzero().squeeze(1)
    if m < S and full_rows.numel():
        pre_RS = torch.addmm(b_enc_S, xc_BD[full_rows], W_enc_DS).relu()
        partial_BM = torch.ones(B, m, dtype=torch.bool, device=xc_BD.device)
        partial_BM[full_rows] = False
        offer_vals = torch.cat([offer_vals[partial_BM.flatten()], pre_RS.flatten()])
        full_flat = full_rows.unsqueeze(1) * S + torch.arange(S, device=xc_BD.device)
        offer_flat = torch.cat([offer_flat[partial_BM.flatten()], full_flat.flatten()])
        won = offer_vals.topk(k * B, sorted=False).indices
    flat_N, order_N = offer_flat[won].sort()
    return flat_N, offer_vals[won][order_N]

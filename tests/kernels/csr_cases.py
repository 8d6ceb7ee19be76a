"""Shared checks of a `CsrOps` implementation against dense torch, used by the torch (CPU)
and Triton (interpreter) test modules. A plain module so both import it by a unique name."""

from __future__ import annotations

import torch

from saekit.kernels.csr import CsrOps, CsrPattern
from saekit.kernels.sparse_ops import csr_decode, csr_pre_acts

B, D, S = 9, 12, 30

TOL = {
    torch.float32: {"atol": 1e-5, "rtol": 1e-5},
    torch.float64: {"atol": 1e-10, "rtol": 1e-10},
    # bf16 keeps 8 mantissa bits: ~0.4% per value; sums over k·d terms round at the end.
    torch.bfloat16: {"atol": 2e-2, "rtol": 2e-2},
}


def pattern(kind: str, seed: int = 0) -> CsrPattern:
    """fixed: 4 latents per row; variable: 0 to 9 per row, with empty rows and latents."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "fixed":
        idx_BK = torch.rand(B, S, generator=gen).argsort(dim=1)[:, :4].sort(dim=1).values
        return CsrPattern.fixed_k(idx_BK, S)
    keep_BS = torch.rand(B, S, generator=gen) < torch.linspace(0, 0.3, B)[:, None]
    keep_BS[:, 7] = False  # a latent no row uses
    return CsrPattern.from_flat(keep_BS.flatten().nonzero().squeeze(1), (B, S))


def dense_matrix(p: CsrPattern, values_N: torch.Tensor) -> torch.Tensor:
    return p.by_row(values_N.float()).to_dense().to(values_N.dtype)


def rand(*shape: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def check_products(ops: CsrOps, kind: str, dtype: torch.dtype) -> None:
    """rows_matmul, latents_matmul and sampled_dot against dense matrix products (in fp64)."""
    p = pattern(kind)
    v_N, M_SD, R_BD = rand(p.N, dtype=dtype, seed=1), rand(S, D, dtype=dtype, seed=2), None
    R_BD = rand(B, D, dtype=dtype, seed=3)
    C_BS = dense_matrix(p, v_N).double()
    tol = TOL[dtype]
    got = ops.rows_matmul(p, v_N, M_SD)
    torch.testing.assert_close(got.double(), C_BS @ M_SD.double(), **tol)
    # A strided operand (W_encᵀ in the encoder backward) gives the same result.
    got_t = ops.rows_matmul(p, v_N, M_SD.t().contiguous().t())
    torch.testing.assert_close(got_t.double(), C_BS @ M_SD.double(), **tol)
    got = ops.latents_matmul(p, v_N, R_BD)
    torch.testing.assert_close(got.double(), C_BS.t() @ R_BD.double(), **tol)
    got = ops.sampled_dot(p, R_BD, M_SD)
    full_BS = R_BD.double() @ M_SD.double().t()
    torch.testing.assert_close(got.double(), full_BS[p.row_N.long(), p.col_N.long()], **tol)


def weights(dtype: torch.dtype) -> list[torch.Tensor]:
    """x, W_enc, b_enc, W_dec, b_dec, all requiring grad."""
    tensors = [
        rand(B, D, dtype=dtype, seed=4),
        0.4 * rand(D, S, dtype=dtype, seed=5),
        rand(S, dtype=dtype, seed=6),
        rand(S, D, dtype=dtype, seed=7),
        rand(D, dtype=dtype, seed=8),
    ]
    return [t.detach().requires_grad_() for t in tensors]


def sparse_and_dense(
    ops: CsrOps, kind: str, dtype: torch.dtype
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """x̂ and the gradients of all five inputs, through the sparse ops and through autograd on
    the dense formula z = scatter(ReLU(pre at the entries)), x̂ = z W_dec + b_dec."""
    p = pattern(kind)
    rows, cols = p.row_N.long(), p.col_N.long()
    gen = torch.Generator().manual_seed(9)
    w_BD = torch.rand(B, D, generator=gen).to(dtype)
    results = []
    for sparse in (True, False):
        x, W_enc, b_enc, W_dec, b_dec = weights(dtype)
        pre_BS = (x - b_dec) @ W_enc + b_enc
        if sparse:
            pre_N = csr_pre_acts(pre_BS.detach()[rows, cols], x, W_enc, b_enc, b_dec, p, ops)
            x_hat = csr_decode(pre_N.relu(), W_dec, b_dec, p, ops)
        else:
            keep_BS = torch.zeros(B, S, dtype=torch.bool)
            keep_BS[rows, cols] = True
            x_hat = (pre_BS.relu() * keep_BS) @ W_dec + b_dec
        loss = (w_BD.float() * x_hat.float()).pow(2).sum()
        grads = torch.autograd.grad(loss, [x, W_enc, b_enc, W_dec, b_dec])
        results.append([x_hat.detach(), *grads])
    return results[0], results[1]


def check_autograd(ops: CsrOps, kind: str, dtype: torch.dtype) -> None:
    sparse, dense = sparse_and_dense(ops, kind, dtype)
    names = ("x_hat", "grad x", "grad W_enc", "grad b_enc", "grad W_dec", "grad b_dec")
    for name, got, want in zip(names, sparse, dense):
        assert got.dtype == want.dtype and got.shape == want.shape, name
        # bf16 gradients scale with |x̂| ~ 10: compare relative to each tensor's size.
        scale = float(want.float().abs().max()) if dtype == torch.bfloat16 else 1.0
        tol = TOL[dtype]
        torch.testing.assert_close(
            got.float(), want.float(), atol=tol["atol"] * scale, rtol=tol["rtol"], msg=name
        )

"""Sparse codes as CSR, and the three products an SAE step needs from them.

A batch's codes are a B×S matrix C with N nonzeros (fixed k per row for TopK: N = B·k;
variable for BatchTopK and JumpReLU). Stored by row (crow [B+1], col [N], values [N],
entries sorted by row, then latent), every product touches only the N entries:

    rows_matmul(C, M_SD)     [B, D] = C M             decoder forward, ∂x of the encoder
    latents_matmul(C, R_BD)  [S, D] = Cᵀ R            ∂W_dec = Cᵀ(z) g,  ∂W_encᵀ = Cᵀ(∂pre) xc
    sampled_dot(C, G_BD, M)  [N]    = (G Mᵀ)[entries]  ∂z at the active entries only

Cᵀ needs the entries latent-major: a stable sort by latent (built once per pattern, on first
use). Two implementations share one interface: `TorchCsrOps` (torch's CSR kernels: MKL on CPU,
cuSPARSE on GPU; bf16/fp16 run in fp32, which CPU sparse kernels require) and
`saekit.kernels.triton_csr.TritonCsrOps` (one program per row, fp32 accumulation).
"""

from __future__ import annotations

import importlib.util
import warnings
from typing import Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from saekit.errors import SaekitError

SPARSE_DTYPES = (torch.float32, torch.float64)
"""Dtypes torch's sparse CSR products support on CPU (bf16/fp16 have no CPU kernel)."""

KernelMode = Literal["auto", "triton", "torch", "dense"]


def stable_argsort(keys_N: Tensor, n_keys: int) -> Tensor:
    """argsort(stable=True) of keys in [0, n_keys), on CPU by numpy's single-threaded sort.

    torch's parallel CPU sort stalls when other jobs share the cores; numpy's radix sort of
    uint16 keys (d_sae ≤ 65536) does not (measured in docs/benchmarks.md).
    """
    if keys_N.device.type != "cpu":
        return keys_N.argsort(stable=True)
    dtype = np.uint16 if n_keys <= 1 << 16 else np.int64
    return torch.from_numpy(np.argsort(keys_N.numpy().astype(dtype), kind="stable"))


def csr_matrix(crow: Tensor, col: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    """A torch sparse CSR tensor, without re-checking invariants that hold by construction."""
    # torch's one-time "CSR support is in beta" notice would only puzzle users.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size, check_invariants=False)


class CsrPattern:
    """Where the codes are nonzero: B×S by row, and (on first use) S×B by latent."""

    def __init__(self, crow_B1: Tensor, col_N: Tensor, d_sae: int) -> None:
        # int32 indices, MKL's own: int64 ones are converted on every product (5 extra ops).
        self.crow_B1 = crow_B1.int()
        self.col_N = col_N.int()
        self.B, self.S, self.N = crow_B1.numel() - 1, d_sae, col_N.numel()
        self._row_N: Tensor | None = None
        self._by_latent: tuple[Tensor, Tensor, Tensor] | None = None

    @classmethod
    def fixed_k(cls, idx_BK: Tensor, d_sae: int) -> CsrPattern:
        """The pattern of k entries per row (indices increasing within each row)."""
        (B, K), device = idx_BK.shape, idx_BK.device
        crow_B1 = torch.arange(0, B * K + 1, K, dtype=torch.int32, device=device)
        return cls(crow_B1, idx_BK.flatten(), d_sae)

    @classmethod
    def from_flat(cls, flat_N: Tensor, shape: tuple[int, int]) -> CsrPattern:
        """The pattern of increasing row-major positions row·S + latent (e.g. from nonzero())."""
        B, S = shape
        rows_B1 = torch.arange(B + 1, device=flat_N.device)
        # searchsorted, unlike bincount, needs no host sync on GPU.
        crow_B1 = torch.searchsorted(flat_N // S, rows_B1)
        return cls(crow_B1, flat_N % S, S)

    @property
    def row_N(self) -> Tensor:
        """Row of each entry."""
        if self._row_N is None:
            rows_B = torch.arange(self.B, dtype=torch.int32, device=self.col_N.device)
            self._row_N = rows_B.repeat_interleave(self.crow_B1.diff(), output_size=self.N)
        return self._row_N

    def by_latent(self) -> tuple[Tensor, Tensor, Tensor]:
        """(order_N, crow_S1, rows_N): entries sorted by latent, CSR of the S×B transpose."""
        if self._by_latent is None:
            # Stable, so each latent's rows stay increasing, as CSR requires.
            order_N = stable_argsort(self.col_N, self.S).to(self.col_N.device)
            rows_N = self.row_N[order_N]
            crow_S1 = torch.zeros(self.S + 1, dtype=torch.int32, device=self.col_N.device)
            counts_S = torch.bincount(self.col_N, minlength=self.S)
            torch.cumsum(counts_S, 0, dtype=torch.int32, out=crow_S1[1:])
            self._by_latent = (order_N, crow_S1, rows_N)
        return self._by_latent

    def select(self, keep_N: Tensor) -> CsrPattern:
        """The sub-pattern of the entries where keep_N is True (order kept)."""
        kept_N1 = torch.zeros(self.N + 1, dtype=torch.int32, device=keep_N.device)
        torch.cumsum(keep_N, 0, dtype=torch.int32, out=kept_N1[1:])
        return CsrPattern(kept_N1[self.crow_B1.long()], self.col_N[keep_N], self.S)

    def by_row(self, values_N: Tensor) -> Tensor:
        """C(values): the B×S sparse CSR matrix with these values at the entries."""
        return csr_matrix(self.crow_B1, self.col_N, values_N, (self.B, self.S))


class CsrOps(Protocol):
    """The three sparse products; results in fp32 (or fp64 for fp64 inputs)."""

    name: str

    def rows_matmul(self, p: CsrPattern, values_N: Tensor, M_SD: Tensor) -> Tensor: ...

    def latents_matmul(self, p: CsrPattern, values_N: Tensor, R_BD: Tensor) -> Tensor: ...

    def sampled_dot(self, p: CsrPattern, G_BD: Tensor, M_SD: Tensor) -> Tensor: ...


TRANSPOSE_ROWS = 1024
"""Latent rows per block of `grad_like`'s transposing copy (2.4 MB at d_in 576, fp32): a block
and its transpose stay in cache, where one whole-matrix transpose strides through memory."""


def grad_like(g_SD: Tensor, W_DS: Tensor) -> Tensor:
    """The gradient of W_DS, computed latent-major (Cᵀ R gives S×D), in W_DS's own memory
    layout, so autograd hands it to the optimizer without a copy of its own.

    A transposed-layout W_DS (the tied init of earlier versions) takes the free view; a
    row-major one gets a blocked transposing copy."""
    if not W_DS.is_contiguous():
        return g_SD.t()
    g_DS = g_SD.new_empty(g_SD.shape[1], g_SD.shape[0])
    for lo in range(0, g_SD.shape[0], TRANSPOSE_ROWS):
        g_DS[:, lo : lo + TRANSPOSE_ROWS].copy_(g_SD[lo : lo + TRANSPOSE_ROWS].t())
    return g_DS


def _wide(t: Tensor) -> Tensor:
    return t if t.dtype in SPARSE_DTYPES else t.float()


class TorchCsrOps:
    """torch's sparse kernels (MKL / cuSPARSE) and embedding_bag; any device."""

    name = "torch"

    def rows_matmul(self, p: CsrPattern, values_N: Tensor, M_SD: Tensor) -> Tensor:
        values_N, M_SD = _wide(values_N), _wide(M_SD)
        if M_SD.is_contiguous():
            # embedding_bag gathers whole rows of M: the decoder forward (B·k rows of W_dec).
            return F.embedding_bag(
                p.col_N,
                M_SD,
                p.crow_B1,
                mode="sum",
                per_sample_weights=values_N.to(M_SD.dtype),
                include_last_offset=True,
            )
        out_BD = M_SD.new_empty(p.B, M_SD.shape[1])
        # beta=0 ignores `out`'s contents: no zero fill (one B×D pass).
        return torch.addmm(out_BD, p.by_row(values_N.to(M_SD.dtype)), M_SD, beta=0, out=out_BD)

    def latents_matmul(self, p: CsrPattern, values_N: Tensor, R_BD: Tensor) -> Tensor:
        values_N, R_BD = _wide(values_N), _wide(R_BD)
        order_N, crow_S1, rows_N = p.by_latent()
        C_SB = csr_matrix(crow_S1, rows_N, values_N.to(R_BD.dtype)[order_N], (p.S, p.B))
        out_SD = R_BD.new_empty(p.S, R_BD.shape[1])
        # beta=0 skips sparse.mm's zero fill and copy (2 S×D passes).
        return torch.addmm(out_SD, C_SB, R_BD, beta=0, out=out_SD)

    def sampled_dot(self, p: CsrPattern, G_BD: Tensor, M_SD: Tensor) -> Tensor:
        G_BD, M_SD = _wide(G_BD), _wide(M_SD)
        if p.N == 0:
            return G_BD.new_zeros(0)
        C_BS = p.by_row(G_BD.new_zeros(p.N))
        return torch.sparse.sampled_addmm(C_BS, G_BD, M_SD.to(G_BD.dtype).t(), beta=0.0).values()


def triton_installed() -> bool:
    """Whether the `triton` package can be imported (the `saekit[triton]` extra)."""
    return importlib.util.find_spec("triton") is not None


def select_ops(device: torch.device, mode: KernelMode) -> CsrOps | None:
    """The kernels for `mode` on `device`; None = the dense reference (plain autograd).

    auto: Triton on CUDA when installed, else torch's sparse kernels (CPU: MKL).
    """
    if mode == "dense":
        return None
    if mode == "triton" or (mode == "auto" and device.type == "cuda" and triton_installed()):
        if not triton_installed():
            raise SaekitError(
                "kernels='triton' needs the triton package: pip install 'saekit[triton]', or "
                "set kernels to 'auto'."
            )
        from saekit.kernels.triton_csr import TritonCsrOps

        return TritonCsrOps()
    return TorchCsrOps()

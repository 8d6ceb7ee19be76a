"""G = D Eᵀ, whose rows the pursuit's correlation update reads, built cheaply and exactly.

Step t of the pursuit (saekit/kernels/pursuit.py) updates c ← c − a_t·G[j_t]: it reads one whole
row of G per row of the batch, so both triangles must be stored row-contiguous. Reading a row's
other half from the columns of one stored triangle would fetch a 64-byte cache line for every
4-byte element.

Tied atoms (E = D = W) make G symmetric, so one triangle is computed and copied into the
other. `gram_into`, fastest route first:
- fp32 on CPU with the native kernels (saekit/kernels/native.py) and G exactly S × S: BLAS
  ssyrk (scipy, at torch's thread count through threadpoolctl) writes the lower triangle,
  S²D/2 multiply-adds, straight into G; the native `gram_mirror` copies it into the upper one
  by 64 × 64 tiles transposed in registers, split between threads in equal shares of tiles;
- with the native kernels but a padded G (S not a multiple of 128): GEMMs of block columns of
  width `GRAM_BLOCK`, G[:p1, P] = W[:p1]·W_Pᵀ (the upper triangle and the diagonal blocks,
  S²D/2 + S·b·D/2 multiply-adds: 53% of the full product at S 9216, b 512) written straight
  into G, then the same mirror from the upper triangle;
- otherwise (no compiler, fp64, CUDA) the same GEMMs into a scratch panel, copied into
  G[:p1, P] and, transposed, into the block row G[P, :p0] by torch.
Untied, G = D Eᵀ is one GEMM. Every route gives the same G to fp32 rounding (tested).

`GramCache` keeps G's buffer between calls: allocating it afresh (340 MB at S 9216) every
training step would pay its page faults every time. A call that may reuse G (no gradient) gets
the stored one back while the weights are unchanged (checked by value).
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

from saekit.kernels import native
from saekit.kernels.row_threads import map_spans

GRAM_BLOCK = 512
"""Block-column width: GEMMs of [≤ S, D] × [D, 512] run near full speed, and the scratch panel
(S × 512, 19 MB at S 9216) is reused for every block."""


@torch.no_grad()
def gram_into(
    G_SP: Tensor, E_SD: Tensor, D_SD: Tensor, tied: bool, upper_only: bool = False
) -> Tensor:
    """G_SP[:, :S] = D Eᵀ (rows d_j Eᵀ); columns S.. of G_SP are left as they are (padding).

    upper_only (tied): only the upper triangle's block columns, written straight into G by the
    GEMMs: the symmetric product alone, without the copies (`saekit bench mp` times it).
    """
    S = E_SD.shape[0]
    if not tied:
        torch.mm(D_SD, E_SD.T, out=G_SP[:, :S])
        return G_SP
    W_SD = E_SD
    dll = native.library() if native.usable(G_SP, W_SD) else None
    fn = syrk() if dll is not None and G_SP.shape[1] == S and not upper_only else None
    if fn is not None:  # one triangle by BLAS, mirrored
        syrk_lower(G_SP, W_SD, fn)
        mirror(dll, G_SP, S, upper=False)
        return G_SP
    if upper_only or dll is not None:  # the upper block columns straight into G, mirrored
        for p0 in range(0, S, GRAM_BLOCK):
            p1 = min(p0 + GRAM_BLOCK, S)
            torch.mm(W_SD[:p1], W_SD[p0:p1].T, out=G_SP[:p1, p0:p1])
        if not upper_only:
            mirror(dll, G_SP, S, upper=True)
        return G_SP
    scratch = W_SD.new_empty(S * min(GRAM_BLOCK, S))
    for p0 in range(0, S, GRAM_BLOCK):
        p1 = min(p0 + GRAM_BLOCK, S)
        if upper_only:
            torch.mm(W_SD[:p1], W_SD[p0:p1].T, out=G_SP[:p1, p0:p1])
            continue
        panel = scratch[: p1 * (p1 - p0)].view(p1, p1 - p0)
        torch.mm(W_SD[:p1], W_SD[p0:p1].T, out=panel)  # G[:p1, P], rows 0..p1 of the column
        G_SP[:p1, p0:p1].copy_(panel)
        if p0:
            G_SP[p0:p1, :p0].copy_(panel[:p0].T)  # the mirror half: G[P, :p0] = G[:p0, P]ᵀ
    return G_SP


def mirror(dll: Any, G_SP: Tensor, n: int, upper: bool) -> None:
    """G[:n, :n]: one triangle copied into the other by the native tile kernel (upper: from the
    upper triangle), its tile rows split between torch's threads in equal shares of tiles."""
    tiles = -(-n // native.TILE)
    threads = max(1, min(torch.get_num_threads(), tiles))
    cuts = [round(tiles * math.sqrt(i / threads)) for i in range(threads + 1)]  # row i: i + 1
    spans = [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]

    def tiles_of(tile0: int, tile1: int) -> None:
        native.mirror(dll, G_SP, n, tile0, tile1, upper)

    map_spans(tiles_of, spans, len(spans))


class _Syrk(NamedTuple):
    ssyrk: Any
    """scipy.linalg.blas.ssyrk."""
    blas: Any
    """A threadpoolctl controller of the BLAS libraries, to run ssyrk at torch's thread count."""


@functools.cache
def syrk() -> _Syrk | None:
    """BLAS ssyrk through scipy, or None when scipy or threadpoolctl is missing."""
    try:
        from scipy.linalg import blas
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return _Syrk(blas.ssyrk, ThreadpoolController().select(user_api="blas"))


def syrk_lower(G_SS: Tensor, W_SD: Tensor, fn: _Syrk) -> None:
    """The lower triangle of G = W Wᵀ (S × S, contiguous), in place, by BLAS ssyrk."""
    C = G_SS.numpy().T  # Fortran order: ssyrk's upper triangle is G's lower one
    with fn.blas.limit(limits=torch.get_num_threads()):
        out = fn.ssyrk(1.0, W_SD.numpy().T, trans=1, c=C, overwrite_c=1)
    if out.ctypes.data != G_SS.data_ptr():  # scipy copied instead of writing in place
        G_SS.copy_(torch.from_numpy(out.T))


def gram_matrix(E_SD: Tensor, D_SD: Tensor, width: int, tied: bool) -> Tensor:
    """A new G (S × width, zero columns past S)."""
    G_SP = E_SD.new_zeros(E_SD.shape[0], width)
    return gram_into(G_SP, E_SD.detach(), D_SD.detach(), tied)


class GramCache:
    """One dictionary's Gram buffer, kept between calls."""

    def __init__(self) -> None:
        self._G_SP: Tensor | None = None
        self._built_from: tuple[Tensor, Tensor] | None = None
        """Copies of (E, D) that G was built from, kept only when a later call may reuse G."""

    def holds(self, E_SD: Tensor, D_SD: Tensor) -> bool:
        """Whether the stored G was built, reusably, from exactly these weights."""
        built = self._built_from
        return (
            self._G_SP is not None
            and built is not None
            and _same(built[0], E_SD.detach())
            and _same(built[1], D_SD.detach())
        )

    def get(self, E_SD: Tensor, D_SD: Tensor, width: int, reuse: bool) -> Tensor:
        """G for these weights (S × width): rebuilt in place, or (reuse) the stored one while
        E and D equal the weights of the last reusable build."""
        tied = E_SD is D_SD
        if reuse and self.holds(E_SD, D_SD):
            assert self._G_SP is not None
            return self._G_SP
        E_SD, D_SD = E_SD.detach(), D_SD.detach()
        G_SP = self._G_SP
        if G_SP is None or G_SP.shape != (E_SD.shape[0], width) or not _same_kind(G_SP, E_SD):
            self._G_SP = G_SP = None  # let the old buffer go before the new one is allocated
            G_SP = E_SD.new_zeros(E_SD.shape[0], width)
        self._built_from = None
        gram_into(G_SP, E_SD, D_SD, tied)
        self._G_SP = G_SP
        if reuse:
            E_copy = E_SD.clone()
            self._built_from = (E_copy, E_copy if tied else D_SD.clone())
        return G_SP

    def clear(self) -> None:
        self._G_SP = self._built_from = None


def _same_kind(a: Tensor, b: Tensor) -> bool:
    return a.dtype == b.dtype and a.device == b.device


def _same(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and _same_kind(a, b) and torch.equal(a, b)

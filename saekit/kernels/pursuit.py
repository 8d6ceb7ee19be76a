"""Matching pursuit on a batch of rows, and a backward through the unrolled loop.

    r_0 = x − b_dec
    step t:  j_t = argmax_j ⟨e_j, r_{t−1}⟩         selection: no gradient, j_t is a constant
             a_t = ReLU(⟨e_j, r_{t−1}⟩)             recomputed from the gathered row e_j
             r_t = r_{t−1} − a_t d_j                E = D = W_dec when tied
    z = Σ_t a_t onehot(j_t)  (scatter-add: MP may select an atom twice),  x̂ = x − r_k

Correlations c_t = r_t Eᵀ (B × S per step) only drive the argmax, by one of two paths:
- "recompute": one GEMM per step, k·B·S·D multiply-adds;
- "gram": c_t = c_{t−1} − a_t G[j_t] with G = D Eᵀ (S × S, built once per call, symmetric
  when tied: S²·D/2, saekit/kernels/gram.py), so a step is one pass over the B×S correlations
  reading one row of G per batch row. At B 4096, D 576, S 9216, k 16 that is 1 + 1.1 GEMMs of
  multiply-adds plus 15 memory-bound passes, instead of 16 GEMMs; `choose_path` weighs the two
  (and G's memory, 340 MB there).
Both select the same atoms up to rounding-level ties (tested), and both recompute a_t from the
residual, so codes and residuals agree to rounding.

On CPU in fp32 with fixed steps (training, `encode`) the Gram path's k steps run in the native
kernel (saekit/kernels/native.py): after the per-chunk c0 GEMM it takes one row through all k
steps, its correlations cache-resident, the update and the next argmax in one pass, where the
torch ops below make several passes over a whole chunk per step (docs/benchmarks.md).
Adaptive stops, other dtypes and devices, SAEKIT_NATIVE=0 or a missing C compiler use the
torch loop below; both give the same atoms (tested).

Backward (MatchingPursuit): with ḡ_t = ∂L/∂r_t, going t = k … 1,
    r_{t−1} = r_t + a_t d_j                          rebuilt, not saved
    s̄_t = (∂L/∂a_t − ⟨ḡ_t, d_j⟩)·[a_t > 0]
    ∂e_j += s̄_t r_{t−1},   ∂d_j −= a_t ḡ_t,   ḡ_{t−1} = ḡ_t + s̄_t e_j
so the saved state is r_k, a and j: O(B·(D + k)), never a B×S tensor, and the backward costs
~6k passes over B×D, no GEMM (on CPU in fp32 one row at a time through all k steps in the
native kernel, its r and ḡ in L1; else as torch ops over blocks of rows). Each worker thread
adds into its own S×D gradient buffer; the buffers are summed in the order of their row spans,
never in the order the threads finish, so a run is bit-for-bit reproducible at a given thread
count. Nothing in the loops reads a value back to the host.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from saekit.kernels import native
from saekit.kernels.gram import gram_matrix
from saekit.kernels.row_threads import ScratchPool, map_rows

Path = Literal["auto", "gram", "recompute"]

BLOCK = 128
"""Argmax width: amax over 128-wide blocks, then argmax inside the winning block, beats torch's
max-with-index over the row on CPU (docs/benchmarks.md). Rows are padded to a multiple of it
with −inf."""
CHUNK_BYTES = 1 << 24
"""Correlation block per chunk of rows: 16 MB (455 rows at S 9216) stays in a 32 MB L3."""
BACKWARD_BYTES = 1 << 20
"""Backward row block: 1 MB per B×D temporary (455 rows at D 576), so the ~6k passes over them
run in cache; smaller blocks pay more per-op overhead than they save."""
_SCRATCH = ScratchPool()
"""The correlation chunks of the native path, reused by every call (one per worker thread)."""
GRAM_BUDGET_BYTES = 1 << 30
"""Largest Gram matrix the "auto" path builds: 1 GiB = S ≤ 16,384 in fp32."""
GRAM_STEP_COST = 40
"""One Gram-path element step (block argmax, CSR update reading a row of G) in GEMM
multiply-adds: both are memory-bound passes, ~40x the time of one multiply-add inside a GEMM on
this class of CPU (one thread, B 4096, S 9216, D 576)."""


def choose_path(
    rows: int, d_in: int, d_sae: int, steps: int, gram_ready: bool = False, tied: bool = True
) -> Path:
    """The cheaper path by multiply-add count; gram only if G fits GRAM_BUDGET_BYTES."""
    if steps < 2 or 4 * d_sae * d_sae > GRAM_BUDGET_BYTES:
        return "recompute"
    build = 0 if gram_ready else d_sae * d_sae * d_in // (2 if tied else 1)
    gram = build + rows * d_sae * (d_in + GRAM_STEP_COST * (steps - 1))
    return "gram" if gram < steps * rows * d_sae * d_in else "recompute"


def padded_width(d_sae: int) -> int:
    return d_sae if d_sae <= BLOCK else -(-d_sae // BLOCK) * BLOCK


def pad_rows(E_SD: Tensor) -> Tensor:
    """E with zero rows appended up to `padded_width` (P × D); E itself when none are."""
    S, D = E_SD.shape
    if padded_width(S) == S:
        return E_SD.detach()
    return torch.cat([E_SD.detach(), E_SD.new_zeros(padded_width(S) - S, D)])


def block_argmax(c_RP: Tensor) -> Tensor:
    """argmax over each row (first index among ties), through 128-wide block maxima."""
    R, P = c_RP.shape
    if P <= BLOCK:
        return c_RP.argmax(dim=1)
    blocks_RNL = c_RP.view(R, P // BLOCK, BLOCK)
    b_R = blocks_RNL.amax(dim=2).argmax(dim=1)
    rows_R = torch.arange(R, device=c_RP.device)
    return b_R * BLOCK + blocks_RNL[rows_R, b_R].argmax(dim=1)


class Stop(NamedTuple):
    """Per-row stopping rules of adaptive inference (a stopped row adds nothing more)."""

    residual_threshold: float
    """Stop once ‖r_t‖ ≤ threshold·‖r_0‖ (0 disables)."""
    unchanged_support: bool
    """Stop after a step that adds no new atom (re-selection or a_t = 0), as SAELens does."""


@torch.no_grad()
def pursue(
    r_BD: Tensor,
    E_SD: Tensor,
    D_SD: Tensor,
    steps: int,
    path: Path = "auto",
    drop_S: Tensor | None = None,
    G_SP: Tensor | None = None,
    stop: Stop | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run `steps` MP steps on r (in place, ends as r_k); returns (a_BT, j_BT, steps_B).

    drop_S: atoms that may not be selected (atom dropout). G_SP: a prebuilt Gram matrix
    (S × padded_width(S), see saekit/kernels/gram.py). Without `stop` every row takes every
    step (steps_B = steps).
    """
    (B, D), S = r_BD.shape, E_SD.shape[0]
    tied = E_SD is D_SD
    if path == "auto":
        path = choose_path(B, D, S, steps, gram_ready=G_SP is not None, tied=tied)
    E_PD = pad_rows(E_SD)
    P = E_PD.shape[0]
    E_SD = E_PD[:S]
    D_SD = E_SD if tied else D_SD.detach()
    if path == "gram" and G_SP is None:
        G_SP = gram_matrix(E_SD, D_SD, P, tied)
    bias_P = E_SD.new_zeros(P)  # −inf: never selected (padding, dropped atoms)
    bias_P[S:] = float("-inf")
    if drop_S is not None:
        bias_P[:S].masked_fill_(drop_S, float("-inf"))
    a_BT = r_BD.new_zeros(B, steps)
    j_BT = torch.zeros(B, steps, dtype=torch.long, device=r_BD.device)
    steps_B = torch.full((B,), steps, dtype=torch.long, device=r_BD.device)
    # A row whose every atom is dropped still gets an argmax (0): its a_t must be 0.
    open_S = None if drop_S is None else (~drop_S).to(r_BD.dtype)
    G_SP = G_SP if path == "gram" else None
    fused = None
    if G_SP is not None and stop is None and native.usable(r_BD, E_SD, D_SD, G_SP, a_BT):
        fused = native.library()
    atoms = Atoms(E_SD, D_SD, E_PD, bias_P, G_SP, open_S, fused)

    def chunk(lo: int, hi: int) -> None:
        _pursue_rows(r_BD[lo:hi], atoms, a_BT[lo:hi], j_BT[lo:hi], steps_B[lo:hi], stop)

    per_chunk = max(1, CHUNK_BYTES // (P * r_BD.element_size()))
    map_rows(chunk, B, per_chunk, r_BD.device)
    return a_BT, j_BT, steps_B


class Atoms(NamedTuple):
    """The dictionary as the loop reads it."""

    E_SD: Tensor
    """Rows that select and set a_t."""
    D_SD: Tensor
    """Rows that are subtracted (E_SD itself when tied)."""
    E_PD: Tensor
    """E_SD padded with zero rows to a multiple of BLOCK."""
    bias_P: Tensor
    """0, or −inf for columns that may not be selected (padding, dropped atoms)."""
    G_SP: Tensor | None
    """Gram rows d_j E_PDᵀ on the gram path, None on the recompute path."""
    open_S: Tensor | None
    """1 for atoms that may be selected, 0 for dropped ones (None: no dropout)."""
    fused: Any
    """The native kernels (saekit/kernels/native.py) when they run this pursuit, else None."""


def _pursue_rows(
    r_RD: Tensor, atoms: Atoms, a_RT: Tensor, j_RT: Tensor, steps_R: Tensor, stop: Stop | None
) -> None:
    R, T = a_RT.shape
    E_SD, D_SD, E_PD, bias_P, G_SP, open_S, fused = atoms
    tied = E_SD is D_SD
    if fused is not None and G_SP is not None:  # every step of a row in one C call
        with _SCRATCH.take(R * E_PD.shape[0], r_RD) as flat:
            c_RP = flat.view(R, E_PD.shape[0])
            if open_S is None and E_PD.shape[0] == E_SD.shape[0]:  # bias 0: no bias pass
                torch.mm(r_RD, E_PD.T, out=c_RP)
            else:
                torch.addmm(bias_P, r_RD, E_PD.T, out=c_RP)
            native.gram_steps(fused, c_RP, r_RD, E_SD, D_SD, G_SP, open_S, a_RT, j_RT)
        return
    c_RP = torch.addmm(bias_P, r_RD, E_PD.T)
    buf_RP = None
    one_hot = G_SP is not None and _csr_update_ok(c_RP)
    if G_SP is not None and not one_hot:
        buf_RP = torch.empty_like(c_RP)
    crow_R1 = torch.arange(R + 1, device=r_RD.device)
    if stop is not None:
        rows_R = torch.arange(R, device=r_RD.device)
        active_R = torch.ones(R, dtype=torch.bool, device=r_RD.device)
        steps_R.zero_()
        floor_R = stop.residual_threshold**2 * r_RD.pow(2).sum(dim=1)
        support_RS = torch.zeros(R, E_SD.shape[0], dtype=torch.bool, device=r_RD.device)
    for t in range(T):
        j_R = block_argmax(c_RP)
        e_RD = E_SD.index_select(0, j_R)
        d_RD = e_RD if tied else D_SD.index_select(0, j_R)
        a_R = torch.linalg.vecdot(r_RD, e_RD).clamp_min_(0)
        if open_S is not None:
            a_R.mul_(open_S[j_R])
        if stop is not None:
            a_R.mul_(active_R)
            steps_R.add_(active_R)
            if stop.unchanged_support:
                new_R = (a_R > 0) & ~support_RS[rows_R, j_R]
                support_RS[rows_R, j_R] |= a_R > 0
                active_R &= new_R
        r_RD.addcmul_(a_R[:, None], d_RD, value=-1)
        a_RT[:, t], j_RT[:, t] = a_R, j_R
        if stop is not None and stop.residual_threshold > 0:
            active_R &= r_RD.pow(2).sum(dim=1) > floor_R
        if t + 1 == T:
            break
        if one_hot and G_SP is not None:
            # c −= A G with A the one-hot-per-row R×S matrix of a_t at j_t: a CSR product reads
            # each G row once and writes c once; gather + addcmul makes an R×P copy first
            # (2.1 vs 3.3-10.8 ms per 455-row chunk at S 9216, one thread).
            A_RS = _csr(crow_R1, j_R, a_R, (R, G_SP.shape[0]))
            torch.addmm(c_RP, A_RS, G_SP, alpha=-1, out=c_RP)
        elif buf_RP is not None and G_SP is not None:
            torch.index_select(G_SP, 0, j_R, out=buf_RP)
            c_RP.addcmul_(a_R[:, None], buf_RP, value=-1)
        else:
            torch.addmm(bias_P, r_RD, E_PD.T, out=c_RP)


def _csr_update_ok(c_RP: Tensor) -> bool:
    """The CSR Gram update runs on CPU in fp32/fp64 (torch has no bf16/fp16 CSR addmm there)."""
    return c_RP.device.type == "cpu" and c_RP.dtype in (torch.float32, torch.float64)


# torch warns once that CSR support is "in beta"; the one product used here is tested equal to
# the gather path. (A filter, not catch_warnings: that is not thread-safe and the loop is.)
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")


def _csr(crow_R1: Tensor, col_R: Tensor, val_R: Tensor, size: tuple[int, int]) -> Tensor:
    return torch.sparse_csr_tensor(crow_R1, col_R, val_R, size=size, check_invariants=False)


class MatchingPursuit(torch.autograd.Function):
    """(r_0, E, D) → (a_BT, j_BT, r_k): k-step MP, differentiable in r_0, E and D.

    Pass the same tensor as E and D for tied weights (one gradient, returned for E).
    """

    @staticmethod
    def forward(
        ctx: Any,
        r0_BD: Tensor,
        E_SD: Tensor,
        D_SD: Tensor,
        steps: int,
        path: Path,
        drop_S: Tensor | None,
        G_SP: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        tied = E_SD is D_SD
        r_BD = r0_BD.detach().clone()
        a_BT, j_BT, _ = pursue(r_BD, E_SD, E_SD if tied else D_SD, steps, path, drop_S, G_SP)
        ctx.tied = tied
        ctx.save_for_backward(r_BD, a_BT, j_BT, E_SD, D_SD)
        ctx.mark_non_differentiable(j_BT)
        return a_BT, j_BT, r_BD

    @staticmethod
    def backward(ctx: Any, g_a_BT: Tensor | None, _g_j: Any, g_r_BD: Tensor | None) -> Any:
        r_BD, a_BT, j_BT, E_SD, D_SD = ctx.saved_tensors
        tied, B = ctx.tied, r_BD.shape[0]
        r_BD = r_BD.clone()
        g_BD = torch.zeros_like(r_BD) if g_r_BD is None else g_r_BD.clone()
        g_a_BT = torch.zeros_like(a_BT) if g_a_BT is None else g_a_BT.contiguous()
        threads = torch.get_num_threads() if r_BD.device.type == "cpu" else 1
        # One weight-gradient buffer per worker (S×D each), summed at the end.
        grads: dict[int, tuple[Tensor, Tensor]] = {}

        def unroll(lo: int, hi: int, g_E_SD: Tensor, g_D_SD: Tensor) -> None:
            r_RD, g_RD = r_BD[lo:hi], g_BD[lo:hi]  # in place: r_k → r_0, ∂L/∂r_k → ∂L/∂r_0
            for t in reversed(range(a_BT.shape[1])):
                j_R, a_R = j_BT[lo:hi, t], a_BT[lo:hi, t]
                e_RD = E_SD.index_select(0, j_R)
                d_RD = e_RD if tied else D_SD.index_select(0, j_R)
                r_RD.addcmul_(a_R[:, None], d_RD)  # back to r_{t−1}
                s_R = (g_a_BT[lo:hi, t] - torch.linalg.vecdot(g_RD, d_RD)) * (a_R > 0)
                # ∂d_j −= a ḡ_t uses ḡ_t before it absorbs this step's s̄ e_j.
                row_RD = r_RD * s_R[:, None]
                if tied:  # one scatter of s̄ r_{t−1} − a ḡ_t instead of two
                    g_E_SD.index_add_(0, j_R, row_RD.addcmul_(g_RD, a_R[:, None], value=-1))
                else:
                    g_E_SD.index_add_(0, j_R, row_RD)
                    g_D_SD.index_add_(0, j_R, g_RD * a_R[:, None], alpha=-1)
                g_RD.addcmul_(s_R[:, None], e_RD)

        fused = native.library() if native.usable(r_BD, g_BD, g_a_BT, E_SD, D_SD) else None

        def rows(lo: int, hi: int) -> None:
            g_E_SD = torch.zeros_like(E_SD)
            g_D_SD = g_E_SD if tied else torch.zeros_like(D_SD)
            if fused is not None:  # one row through all k steps at a time, in C
                native.backward_rows(
                    fused, r_BD[lo:hi], g_BD[lo:hi], g_a_BT[lo:hi], a_BT[lo:hi], j_BT[lo:hi],
                    E_SD, D_SD, g_E_SD, g_D_SD,
                )  # fmt: skip
                grads[lo] = (g_E_SD, g_D_SD)
                return
            # Blocks of rows whose B×D temporaries stay in cache through all k steps.
            per = max(1, BACKWARD_BYTES // (D_SD.shape[1] * r_BD.element_size()))
            for c0 in range(lo, hi, per):
                unroll(c0, min(c0 + per, hi), g_E_SD, g_D_SD)
            grads[lo] = (g_E_SD, g_D_SD)

        map_rows(rows, B, -(-B // threads), r_BD.device)
        # In span order, not in the order the workers finished: float addition is not
        # associative, so with 3 or more buffers another order gives other bits.
        (g_E_SD, g_D_SD), *others = (grads[lo] for lo in sorted(grads))
        for g_E_other, g_D_other in others:
            g_E_SD += g_E_other
            if not tied:
                g_D_SD += g_D_other
        return g_BD, g_E_SD, None if tied else g_D_SD, None, None, None, None

"""`saekit bench snmf`: full-batch SNMF iteration time vs a dense anchor, and the peak memory of
streaming SNMF on 1M tokens of d_mlp 1536.

1. Iteration time. The anchor is the straightforward dense iteration, written here as the
   authors' seminmf.py does it: F = A G (GᵀG + λI)⁻¹ with an explicit inverse, dense P = AᵀF,
   the loss from the D × N residual A − F Gᵀ. saekit's `snmf_step` runs the same updates with
   a solve, a CSR product for P (F keeps 16 of 1536 neurons per feature) and the loss from
   GᵀG. Both start from the same codes on the same planted data (N = 16384 tokens, D = 1536,
   K = 100) and run interleaved rounds, so machine noise hits both alike.
   ratio_vs_anchor = anchor s/iteration ÷ saekit s/iteration; the iterates must agree.
2. Streaming memory. A subprocess fits 1M tokens × 1536 (planted, generated batch by batch
   from seeds, so the 6 GB matrix never exists) with `fit_snmf_stream` for `passes` passes
   and reports ru_maxrss (target ≤ 3 GB) and seconds per pass. `python -m saekit.bench.snmf
   --tokens N` runs it at another size.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from saekit.dictionaries.snmf_fit import init_codes, snmf_step, sq_norm, wta_

D, K, SPARSITY = 1536, 100, 0.01


def planted_batch(index: int, batch: int, F_true_DK: Tensor, seed: int = 0) -> Tensor:
    """Rows x = g F_true + noise for tokens [index·batch, (index+1)·batch): a pure function.

    Built as the D × B block (a transposed view is returned), which is the layout the solvers
    read, so a batch costs one sparse product and one randn (~0.1 s at B = 8192).
    """
    gen = torch.Generator().manual_seed(seed * 1_000_003 + index)
    G_KB = torch.rand(K, batch, generator=gen) * (torch.rand(K, batch, generator=gen) < 0.05)
    A_DB = torch.randn(F_true_DK.shape[0], batch, generator=gen).mul_(0.05)
    with warnings.catch_warnings():  # torch's one-time "sparse CSR is in beta" notice
        warnings.simplefilter("ignore", UserWarning)
        F_csr = F_true_DK.to_sparse_csr()
    return torch.sparse.mm(F_csr, G_KB).add_(A_DB).T


def true_features(seed: int = 0) -> Tensor:
    """F_true_DK: K planted features of ⌈s·D⌉ = 16 signed neurons each."""
    gen = torch.Generator().manual_seed(seed)
    return wta_(torch.randn(K, D, generator=gen), SPARSITY).T.contiguous()


def anchor_step(A_DN: Tensor, G_NK: Tensor, s: float) -> tuple[Tensor, Tensor, float]:
    """The dense iteration as in the official code: inverse, dense P, residual loss."""
    GtG = G_NK.T @ G_NK
    F_DK = A_DN @ G_NK @ torch.linalg.inv(GtG + 1e-6 * torch.eye(G_NK.shape[1]))
    m = max(1, math.ceil(s * F_DK.shape[0]))
    thresh = F_DK.abs().topk(m, dim=0).values[-1]
    F_DK = F_DK * (F_DK.abs() >= thresh)
    norms = G_NK.norm(dim=0).clamp_min(1e-8)
    G_NK, F_DK = G_NK / norms, F_DK * norms
    P, Q = A_DN.T @ F_DK, F_DK.T @ F_DK
    Pp, Pn, Qp, Qn = (P.abs() + P) / 2, (P.abs() - P) / 2, (Q.abs() + Q) / 2, (Q.abs() - Q) / 2
    G_NK = G_NK * torch.sqrt((Pp + G_NK @ Qn) / (Pn + G_NK @ Qp + 1e-6))
    loss = float(torch.norm(A_DN - F_DK @ G_NK.T) ** 2)
    return F_DK, G_NK, loss


def iteration_times(tokens: int = 16384, iters: int = 4, rounds: int = 3) -> dict[str, Any]:
    F_true = true_features()
    A_DN = torch.cat([planted_batch(i, 4096, F_true).T for i in range(tokens // 4096)], dim=1)
    G0_KN = init_codes(A_DN, K, "random", seed=0)
    sq_A = sq_norm(A_DN)
    spent = {"saekit": 0.0, "anchor": 0.0}
    G_KN, G_NK = G0_KN.clone(), G0_KN.T.clone()
    GtG_KK = G_KN @ G_KN.T
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(iters):
            F_KD, GtG_KK, loss = snmf_step(A_DN, G_KN, GtG_KK, SPARSITY, sq_A)
        spent["saekit"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(iters):
            F_DK, G_NK, loss_anchor = anchor_step(A_DN, G_NK, SPARSITY)
        spent["anchor"] += time.perf_counter() - t0
    n = iters * rounds
    exact = _loss64(A_DN, F_KD.T, G_KN.T)
    return {
        "tokens": tokens,
        "iterations": n,
        "threads": torch.get_num_threads(),
        "saekit_s_per_iter": spent["saekit"] / n,
        "anchor_s_per_iter": spent["anchor"] / n,
        "ratio_vs_anchor": spent["anchor"] / spent["saekit"],
        "max_rel_diff_F_vs_anchor": float((F_KD.T - F_DK).abs().max() / F_DK.abs().max()),
        # vs the float64 residual: the anchor's float32 torch.norm over D·N entries drifts
        "loss_rel_error_saekit": abs(loss - exact) / exact,
        "loss_rel_error_anchor": abs(loss_anchor - _loss64(A_DN, F_DK, G_NK)) / exact,
    }


def _loss64(A_DN: Tensor, F_DK: Tensor, G_NK: Tensor) -> float:
    return float((A_DN.double() - F_DK.double() @ G_NK.double().T).square().sum())


def stream_child(tokens: int, passes: int, batch: int = 8192) -> dict[str, Any]:
    """Runs in a fresh process: streaming fit on planted batches; peak RSS and timings."""
    from saekit.dictionaries.snmf_stream import fit_snmf_stream

    F_true = true_features()
    n_batches = math.ceil(tokens / batch)

    def passes_fn() -> Iterator[Tensor]:
        for i in range(n_batches):
            yield planted_batch(i, min(batch, tokens - i * batch), F_true)

    t0 = time.perf_counter()
    fit = fit_snmf_stream(passes_fn, K, sparsity=SPARSITY, max_passes=passes, patience=passes)
    elapsed = time.perf_counter() - t0
    return {
        "tokens": tokens,
        "passes": len(fit.losses),
        "seconds": elapsed,
        "seconds_per_pass": elapsed / len(fit.losses),
        "fvu_per_pass": [loss / fit.centered_sq for loss in fit.losses],
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "dense_A_gb": tokens * D * 4 / 2**30,
    }


def run(tokens: int = 1_000_000, passes: int = 2, threads: int = 1) -> dict[str, Any]:
    """One thread by default: on 2 cores shared with other jobs, OpenMP barriers made each
    small elementwise op ~60x slower with 2 threads (49 ms vs 0.8 ms for 800k floats)."""
    torch.set_num_threads(threads)
    timing = iteration_times()
    code = (
        f"import json, torch, saekit.bench.snmf as b; torch.set_num_threads({threads}); "
        f"print(json.dumps(b.stream_child({tokens}, {passes})))"
    )
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    stream = json.loads(child.stdout.strip().splitlines()[-1])
    return {
        "bench": "snmf",
        "shape": {"d_mlp": D, "features": K, "sparsity": SPARSITY},
        "full_batch": timing,
        "ratio_vs_anchor": timing["ratio_vs_anchor"],
        "stream": stream,
        "stream_peak_rss_gb": stream["peak_rss_gb"],
        "targets": {"ratio_vs_anchor": "> 1", "stream_peak_rss_gb": "<= 3"},
    }


def table(result: dict[str, Any]) -> str:
    t, s = result["full_batch"], result["stream"]
    return "\n".join(
        [
            f"bench snmf — d_mlp {D}, {K} features, s = {SPARSITY} "
            f"({math.ceil(SPARSITY * D)} neurons per feature)",
            f"{'full batch, ' + str(t['tokens']) + ' tokens':34s} {'s/iteration':>12s}",
            f"{'anchor (inverse, dense, residual)':34s} {t['anchor_s_per_iter']:12.3f}",
            f"{'saekit snmf_step':34s} {t['saekit_s_per_iter']:12.3f}",
            f"ratio_vs_anchor = {t['ratio_vs_anchor']:.2f} (target > 1, {t['threads']} thread); "
            f"F agrees to {t['max_rel_diff_F_vs_anchor']:.1e}; loss error vs float64: saekit "
            f"{t['loss_rel_error_saekit']:.1e}, anchor {t['loss_rel_error_anchor']:.1e}",
            f"streaming {s['tokens']:,} tokens (dense A would be {s['dense_A_gb']:.1f} GB): "
            f"peak RSS {s['peak_rss_gb']:.2f} GB (target ≤ 3), {s['passes']} passes, "
            f"{s['seconds_per_pass']:.0f} s/pass, FVU by pass "
            + ", ".join(f"{v:.3f}" for v in s["fvu_per_pass"]),
        ]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1_000_000, help="streaming tokens")
    parser.add_argument("--passes", type=int, default=2, help="streaming passes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.tokens, args.passes, args.threads)
    print(json.dumps(result) if args.json else table(result))

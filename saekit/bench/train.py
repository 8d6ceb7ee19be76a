"""`saekit bench train`: one TopK training step, saekit vs SAELens, sparsify and overcomplete.

Shape: d_in 576, d_sae 9216, k 32, 4096 tokens per step, fp32, CPU (`--device cuda` runs
every side on the GPU, both SAELens modes included; we have no GPU figures). Every side
trains on the same fixed batch in one process under the shared protocol
(`saekit.bench.protocol`): one untimed probe call each (a side that raises is reported in
`errors`, not timed), then at 1 thread and at all threads: one warm-up call each, ≥ 5 rounds
in rotating order, medians.
The sides and their configurations are in `saekit.bench.train_anchors`; the JSON's `protocol`
block lists each anchor's configuration and every difference from saekit's step.

- saekit: `Trainer._step` of a real Trainer on a TopK slot.
- SAELens: `SAETrainer.step` on `TopKTrainingSAE`, dense and sparse activations; the faster
  setting that runs is the SAELens anchor (sparse raises NotImplementedError on CPU).
- sparsify: its `SparseCoder` and default optimizer (SignSGD), FVU loss, AuxK off.
- overcomplete: `TopKSAE` through its `train_sae`.
- GEMM: x @ W_enc, [4096, 576] @ [576, 9216], the encoder's one dense product (the unit).

Per thread count: `ratio_vs_anchor` = saekit tokens/s ÷ the fastest peer's (targets: ≥ 1.8),
`saekit_step_vs_gemm` (target ≤ 1.3). The top-level figures are the worst over the thread
counts. `dead_fraction` > 0 marks that many latents dead before every step, so AuxK runs on
saekit and SAELens (sparsify's default has AuxK off, overcomplete has none).

Memory: each side runs alone in a fresh subprocess; after a warm-up step the kernel's
peak-RSS mark is reset (/proc/self/clear_refs) and one more step runs: peak − resident-before
is the step's transient working memory.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from tqdm import tqdm

from saekit.bench import protocol
from saekit.bench.train_anchors import BUILDERS, PEERS, Shape

D_IN, D_SAE, K, BATCH = 576, 9216, 32, 4096
SHAPE = Shape(D_IN, D_SAE, K, BATCH)
TARGETS = {"ratio_vs_anchor": ">= 1.8 at every thread count", "saekit_step_vs_gemm": "<= 1.3"}


def activations(seed: int = 0, shape: Shape = SHAPE) -> torch.Tensor:
    """The fixed input: Gaussian rows plus a common offset (as residual streams have)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape.batch, shape.d_in, generator=gen) + 0.5 * torch.randn(
        shape.d_in, generator=gen
    )


def dead_mask(fraction: float, d_sae: int = D_SAE) -> torch.Tensor | None:
    if fraction <= 0:
        return None
    return torch.rand(d_sae, generator=torch.Generator().manual_seed(2)) < fraction


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        line = next(ln for ln in f if ln.startswith(key + ":"))
    return int(line.split()[1])


def _memory_child(side: str, threads: int, dead_fraction: float, shape: Shape) -> dict[str, Any]:
    torch.set_num_threads(threads)
    built, _ = BUILDERS[side](
        activations(shape=shape), dead_mask(dead_fraction, shape.d_sae), shape
    )
    step = built.step
    step()
    resident_kb = _status_kb("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM (peak RSS) to the current RSS
        method = "VmHWM after clear_refs"
    except OSError:
        method = "VmHWM since process start (clear_refs not writable)"
    step()
    peak_kb = _status_kb("VmHWM")
    return {
        "resident_mb": resident_kb / 1024,
        "step_peak_delta_mb": (peak_kb - resident_kb) / 1024,
        "method": method,
    }


def peak_memory(side: str, threads: int, dead_fraction: float, shape: Shape) -> dict[str, Any]:
    """Run one side alone in a fresh (spawned) interpreter and read its RSS marks."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_memory_child, (side, threads, dead_fraction, shape))


def _synced(side: protocol.Side) -> protocol.Side:
    """On CUDA a call ends when its kernels have finished."""

    def step() -> None:
        side.step()
        torch.cuda.synchronize()

    return replace(side, step=step)


def build_sides(
    x_BD: torch.Tensor, dead_S: torch.Tensor | None, shape: Shape
) -> tuple[dict[str, protocol.Side], dict[str, Any], dict[str, str]]:
    """Every side that runs (one probe call each), their info, and the errors of the rest."""
    sides: dict[str, protocol.Side] = {}
    info: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name, build in tqdm(BUILDERS.items(), desc="bench train: build + probe", leave=False):
        side, info[name] = build(x_BD, dead_S, shape)
        if x_BD.device.type == "cuda":
            side = _synced(side)
        try:
            side.step()
        except (NotImplementedError, RuntimeError) as exc:
            if name not in PEERS:  # saekit's own step and the GEMM must run
                raise
            first_sentence = str(exc).splitlines()[0].split(". ")[0]
            errors[name] = f"{type(exc).__name__}: {first_sentence}"
            continue
        sides[name] = side
    return sides, info, errors


def _per_threads(sides: dict[str, protocol.Side], rounds: int, shape: Shape) -> dict[str, Any]:
    res = protocol.run_rounds(
        sides, rounds=rounds, desc=f"bench train, {torch.get_num_threads()} threads"
    )
    tps, ms = res["tokens_per_s"], res["median_ms"]
    peers = [p for p in PEERS if p in sides]
    saelens = protocol.fastest(tps, [p for p in peers if p.startswith("saelens")])
    return {
        **res,
        **protocol.versus_peers(tps, "saekit", peers),
        "saelens_anchor": saelens,
        "saekit_step_vs_gemm": ms["saekit"] / ms["gemm"],
        "gemm_gflops": 2 * shape.batch * shape.d_in * shape.d_sae / (ms["gemm"] / 1e3) / 1e9,
    }


def run(
    rounds: int = protocol.MIN_ROUNDS,
    threads: Sequence[int] | None = None,
    dead_fraction: float = 0.0,
    memory: bool = True,
    shape: Shape = SHAPE,
    device: str = "cpu",
) -> dict[str, Any]:
    """Every side at each thread count (default: 1 and all); ~2-4 minutes on 2 shared cores.
    `device` cuda runs every side on the GPU (memory is then not measured: it is CPU RSS)."""
    load_before = os.getloadavg()
    counts = list(threads) if threads else protocol.thread_counts()
    x_BD = activations(shape=shape).to(device)
    dead_S = dead_mask(dead_fraction, shape.d_sae)
    dead_S = None if dead_S is None else dead_S.to(device)
    sides, info, errors = build_sides(x_BD, dead_S, shape)
    per = protocol.at_threads(lambda n: _per_threads(sides, rounds, shape), counts)
    anchors = {p: info[p] | ({"error": errors[p]} if p in errors else {}) for p in PEERS}
    result: dict[str, Any] = {
        "bench": "train",
        "device": device,
        "shape": shape._asdict() | {"dtype": "float32"},
        "dead_fraction": dead_fraction,
        "protocol": protocol.protocol_block(
            rounds=rounds,
            warmup=1,
            threads=counts,
            tokens=shape.batch,
            anchors=anchors,
            load_before=load_before,
        ),
        "saekit": info["saekit"],
        "errors": errors,
        "threads": per,
        "ratio_vs_anchor": min(p["ratio_vs_anchor"] for p in per),
        "saekit_step_vs_gemm": max(p["saekit_step_vs_gemm"] for p in per),
        "targets": TARGETS,
    }
    if memory and device == "cpu":
        result["memory"] = {
            side: peak_memory(side, counts[-1], dead_fraction, shape)
            for side in sides
            if side != "gemm"
        }
    return result


NAMES = {
    "saekit": "saekit Trainer._step",
    "saelens_dense": "SAELens dense activations",
    "saelens_sparse": "SAELens sparse activations",
    "sparsify": "sparsify (SignSGD, FVU)",
    "overcomplete": "overcomplete train_sae",
    "gemm": "GEMM x @ W_enc",
}


def table(result: dict[str, Any]) -> str:
    shape, mem = result["shape"], result.get("memory", {})
    lines = [
        f"bench train — TopK d_in {shape['d_in']}, d_sae {shape['d_sae']}, k {shape['k']}, "
        f"{shape['batch']} tokens/step, fp32, median of {result['protocol']['rounds']} rounds "
        f"(rotating order), dead {result['dead_fraction']:.0%}, load "
        f"{result['protocol']['load_average_before'][0]:.1f}",
    ]
    for per in result["threads"]:
        ms = per["median_ms"]
        lines.append(
            f"{per['threads']} thread(s): {'step ms':>8s} {'tokens/s':>9s} {'x GEMM':>7s} "
            f"{'saekit x':>9s} {'resident':>9s} {'step peak':>10s}"
        )
        for side, t in ms.items():
            m = mem.get(side)
            cols = f"{m['resident_mb']:7.0f}MB {m['step_peak_delta_mb']:+8.0f}MB" if m else ""
            vs = f"{t / ms['saekit']:9.2f}" if side != "gemm" else f"{'':9s}"
            lines.append(
                f"  {NAMES[side]:28s} {t:8.0f} {per['tokens_per_s'][side]:9.0f} "
                f"{t / ms['gemm']:7.2f} {vs} {cols}"
            )
        lines.append(
            f"  ratio_vs_anchor = {per['ratio_vs_anchor']:.2f} vs {per['fastest_peer']} "
            f"(target ≥ 1.8); saekit step = {per['saekit_step_vs_gemm']:.2f}x GEMM (target ≤ 1.3)"
        )
    for side, err in result["errors"].items():
        lines.append(f"not timed: {NAMES[side]}: {err}")
    if mem:
        lines.append(
            f"memory: each side alone in a subprocess, {result['protocol']['threads'][-1]} threads"
        )
    return "\n".join(lines)

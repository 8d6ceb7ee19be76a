"""`saekit bench train`: one TopK training step, saekit vs SAELens, on the same activations.

Shape: d_in 576, d_sae 9216, k 32, 4096 tokens per step, fp32, CPU. The three timed calls run
in one process, interleaved in rounds (the order rotates), so machine noise hits all alike;
the figures are medians over the rounds (3 to 7, while a 60 s budget lasts), after one
untimed warm-up step each (Adam state, allocator pools).

- saekit: `Trainer._step` of a real Trainer on a TopK slot — training_forward, loss sum and
  finiteness check, backward, remove_parallel_grad, grad clip, Adam, LR schedule,
  normalize_decoder, firing bookkeeping.
- SAELens: `SAETrainer.step` of SAELens' own trainer on a `TopKTrainingSAE` with its default
  config (AuxK coefficient 1.0, rescale_acts_by_decoder_norm=True, dense activations) —
  training_forward_pass, firing bookkeeping, backward, grad clip 1.0, Adam, zero_grad, LR
  schedule. SAELens has no decoder renormalization step: the decoder norm enters the forward.
- GEMM: x @ W_enc, [4096, 576] @ [576, 9216], the encoder's one dense product.

Both trainers start fresh, so no latent is dead yet; both evaluate their AuxK (on, with their
own coefficients) and find nothing to do. `dead_fraction` > 0 marks that many latents dead in
both trainers before every step, so AuxK runs on both sides.

ratio_vs_anchor = saekit tokens/s ÷ SAELens tokens/s (target ≥ 3, stretch 5); saekit's step
is also reported as a multiple of the GEMM (stretch ≤ 1.5). Threads are torch's default; on
cores shared with other jobs, each of the step's ~75 parallel regions can stall for a time
slice, which hurts the many small ops after the GEMM most: compare `OMP_NUM_THREADS=1`.

Memory: each side runs alone in a fresh subprocess; after a warm-up step the kernel's
peak-RSS mark is reset (/proc/self/clear_refs) and one more step runs: peak − resident-before
is the step's transient working memory (activations, gradients, temporaries); resident-before
holds the weights, Adam state, the previous step's gradients and the interpreter with its
imports (SAELens imports more).
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from saekit.activations.tensors import TensorStream

D_IN, D_SAE, K, BATCH = 576, 9216, 32, 4096
SIDES = ("saekit", "saelens", "gemm")


def activations(seed: int = 0) -> torch.Tensor:
    """The fixed input: Gaussian rows plus a common offset (as residual streams have)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, D_IN, generator=gen) + 0.5 * torch.randn(D_IN, generator=gen)


def saekit_step(x_BD: torch.Tensor, dead_S: torch.Tensor | None) -> Callable[[], None]:
    from saekit.dictionaries import SAEConfig
    from saekit.train.config import TrainConfig
    from saekit.train.trainer import Trainer

    # Without a run directory a Trainer writes nothing.
    cfg = TrainConfig(total_tokens=BATCH * 1000, wandb_mode="disabled")
    stream = TensorStream(x_BD, batch_size=x_BD.shape[0], shuffle=False)
    trainer = Trainer((SAEConfig(method="topk", d_sae=D_SAE, k=K),), cfg, stream)
    slot = trainer.slots[0]

    def step() -> None:
        if dead_S is not None:
            slot.tokens_since_fired_S[dead_S] = cfg.dead_window_tokens
        trainer._step(slot, x_BD, log_now=False)  # exactly what Trainer.train runs per step

    return step


def saelens_step(x_BD: torch.Tensor, dead_S: torch.Tensor | None) -> Callable[[], None]:
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, dtype="float32"))
    cfg = SAETrainerConfig(
        total_training_samples=BATCH * 1000,
        train_batch_size_samples=BATCH,
        lr_end=3e-4,  # set by the runner config's post-init in a full SAELens run
        logger=LoggingConfig(log_to_wandb=False),
    )
    trainer = SAETrainer(cfg, sae, data_provider=iter(()))

    def step() -> None:
        if dead_S is not None:
            trainer.n_forward_passes_since_fired[dead_S] = cfg.dead_feature_window + 1
        trainer.step(x_BD)

    return step


def gemm_step(x_BD: torch.Tensor, dead_S: torch.Tensor | None) -> Callable[[], None]:
    W_DS = torch.randn(D_IN, D_SAE, generator=torch.Generator().manual_seed(1)) / D_IN**0.5

    def step() -> None:
        x_BD @ W_DS

    return step


BUILDERS = {"saekit": saekit_step, "saelens": saelens_step, "gemm": gemm_step}


def dead_mask(fraction: float) -> torch.Tensor | None:
    if fraction <= 0:
        return None
    return torch.rand(D_SAE, generator=torch.Generator().manual_seed(2)) < fraction


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        line = next(ln for ln in f if ln.startswith(key + ":"))
    return int(line.split()[1])


def _memory_child(side: str, threads: int, dead_fraction: float) -> dict[str, Any]:
    torch.set_num_threads(threads)
    step = BUILDERS[side](activations(), dead_mask(dead_fraction))
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
        "peak_mb": peak_kb / 1024,
        "step_peak_delta_mb": (peak_kb - resident_kb) / 1024,
        "method": method,
    }


def peak_memory(side: str, threads: int, dead_fraction: float) -> dict[str, Any]:
    """Run one side alone in a fresh (spawned) interpreter and read its RSS marks."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_memory_child, (side, threads, dead_fraction))


def run(
    max_rounds: int = 7,
    min_rounds: int = 3,
    budget_s: float = 60.0,
    dead_fraction: float = 0.0,
    memory: bool = True,
) -> dict[str, Any]:
    """Timed rounds until `budget_s` is spent (at least min_rounds, at most max_rounds); a
    round took 10-15 s on 2 cores shared with other jobs, so the bench stays under 3 minutes."""
    threads = torch.get_num_threads()
    x_BD = activations()
    dead_S = dead_mask(dead_fraction)
    steps = {side: BUILDERS[side](x_BD, dead_S) for side in SIDES}
    for step in steps.values():
        step()  # warm-up: Adam state, allocator pools, lazy imports
    times: dict[str, list[float]] = {side: [] for side in SIDES}
    start, rounds = time.perf_counter(), 0
    while rounds < max_rounds and (rounds < min_rounds or time.perf_counter() - start < budget_s):
        for side in SIDES[rounds % 3 :] + SIDES[: rounds % 3]:
            t0 = time.perf_counter()
            steps[side]()
            times[side].append(time.perf_counter() - t0)
        rounds += 1
    ms = {side: 1e3 * statistics.median(t) for side, t in times.items()}
    tps = {side: BATCH / (ms[side] / 1e3) for side in SIDES}
    from importlib.metadata import version

    result: dict[str, Any] = {
        "bench": "train",
        "shape": {"d_in": D_IN, "d_sae": D_SAE, "k": K, "batch": BATCH, "dtype": "float32"},
        "torch_threads": threads,
        "rounds": rounds,
        "dead_fraction": dead_fraction,
        "anchor": f"sae_lens {version('sae-lens')} TopKTrainingSAE + SAETrainer.step",
        "step_ms": ms,
        "step_ms_rounds": {s: [round(1e3 * t, 1) for t in v] for s, v in times.items()},
        "saekit_tokens_per_s": tps["saekit"],
        "saelens_tokens_per_s": tps["saelens"],
        "gemm_tokens_per_s": tps["gemm"],
        "gemm_gflops": 2 * BATCH * D_IN * D_SAE / (ms["gemm"] / 1e3) / 1e9,
        "ratio_vs_anchor": tps["saekit"] / tps["saelens"],
        "saekit_step_vs_gemm": ms["saekit"] / ms["gemm"],
        "saelens_step_vs_gemm": ms["saelens"] / ms["gemm"],
        "targets": {"ratio_vs_anchor": ">= 3 (stretch 5)", "saekit_step_vs_gemm": "<= 1.5"},
    }
    if memory:
        result["memory"] = {
            side: peak_memory(side, threads, dead_fraction) for side in ("saekit", "saelens")
        }
    return result


def table(result: dict[str, Any]) -> str:
    shape, ms = result["shape"], result["step_ms"]
    mem = result.get("memory", {})
    lines = [
        f"bench train — TopK d_in {shape['d_in']}, d_sae {shape['d_sae']}, k {shape['k']}, "
        f"{shape['batch']} tokens/step, {shape['dtype']}, {result['torch_threads']} threads, "
        f"median of {result['rounds']} interleaved rounds, dead {result['dead_fraction']:.0%}",
        f"{'path':34s} {'step ms':>8s} {'tokens/s':>9s} {'x GEMM':>7s} {'resident':>9s} "
        f"{'step peak':>10s}",
    ]
    names = {
        "saekit": "saekit Trainer._step",
        "saelens": f"SAELens ({result['anchor'].split(' ')[1]})",
        "gemm": f"GEMM 4096x576@576x9216 ({result['gemm_gflops']:.0f} GF/s)",
    }
    for side in SIDES:
        m = mem.get(side)
        mem_cols = (
            f"{m['resident_mb']:7.0f}MB {m['step_peak_delta_mb']:+8.0f}MB" if m else f"{'':19s}"
        )
        lines.append(
            f"{names[side]:34s} {ms[side]:8.0f} {BATCH / ms[side] * 1e3:9.0f} "
            f"{ms[side] / ms['gemm']:7.2f} {mem_cols}"
        )
    lines.append(
        f"ratio_vs_anchor = {result['ratio_vs_anchor']:.2f} (target ≥ 3, stretch 5); saekit step "
        f"= {result['saekit_step_vs_gemm']:.2f}x GEMM (stretch ≤ 1.5)"
    )
    if mem:
        lines.append(f"memory: RSS of each side alone in a subprocess ({mem['saekit']['method']})")
    return "\n".join(lines)

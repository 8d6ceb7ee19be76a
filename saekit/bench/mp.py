"""`saekit bench mp`: one MP-SAE training step, saekit vs SAELens, and saekit MP vs TopK.

Shape: d_in 576, d_sae 9216, k 16, 4096 tokens per step, fp32, CPU. The timed steps run in one
process, interleaved in rounds (the order rotates), medians over rounds after one untimed
warm-up step each, on the same activations (`saekit.bench.train.activations`).

- saekit mp: `Trainer._step` of a real Trainer on a tied "mp" slot (fixed k, Gram path chosen
  by `choose_path`): pursuit + sparse backward, parallel-gradient removal, clip, Adam, renorm.
- SAELens: `SAETrainer.step` on `MatchingPursuitTrainingSAE` at fixed k (residual_threshold 0,
  max_iterations k, stop_on_duplicate_support False): a dense residual @ W_decᵀ per step, dense
  B×S codes decoded by a GEMM, dense backward.
- saekit topk: `Trainer._step` on `TopKSAE` at the same k (AuxK on, nothing dead yet).

ratio_vs_anchor = saekit MP tokens/s ÷ SAELens tokens/s (target ≥ 10); mp_vs_topk = saekit MP
step ÷ saekit TopK step (target ≤ 3). `breakdown` times the parts of saekit's MP step once
(encoder GEMM c_0, Gram GEMM G = W Wᵀ, the k-step loop, backward) to show what dominates.

`exact_mp_ceiling` = SAELens step ÷ (c_0 GEMM + Gram GEMM): the ratio no exact k-step MP could
beat here. Every exact pursuit needs c_0 = (x − b)Wᵀ (B·S·D) and, for steps 2..k, either one
such GEMM per step or the S·S·D Gram matrix of the current weights (which change every step);
at B 4096, S 9216 the Gram is S/B = 2.25 encoder GEMMs, so the floor is 3.25 of them even with
a free loop, backward and optimizer.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from saekit.activations.tensors import TensorStream
from saekit.bench.train import activations
from saekit.dictionaries import SAEConfig
from saekit.dictionaries.mp import MatchingPursuitSAE
from saekit.kernels.pursuit import MatchingPursuit, choose_path, gram_matrix

D_IN, D_SAE, K, BATCH = 576, 9216, 16, 4096
SIDES = ("saekit_mp", "saelens_mp", "saekit_topk")


def trainer_step(x_BD: torch.Tensor, sae_cfg: SAEConfig) -> Callable[[], None]:
    """One `Trainer._step` on a fresh slot of `sae_cfg` (b_dec 0 on both sides)."""
    from saekit.train.trainer import TrainConfig, Trainer

    cfg = TrainConfig(total_tokens=x_BD.shape[0] * 1000, wandb_mode="disabled")
    stream = TensorStream(x_BD, batch_size=x_BD.shape[0], shuffle=False)
    trainer = Trainer((sae_cfg,), cfg, stream)
    slot = trainer.slots[0]

    def step() -> None:
        trainer._step(slot, x_BD, log_now=False)

    return step


def saelens_step(x_BD: torch.Tensor, d_sae: int, k: int) -> Callable[[], None]:
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.matching_pursuit_sae import (
        MatchingPursuitTrainingSAE,
        MatchingPursuitTrainingSAEConfig,
    )
    from sae_lens.training.sae_trainer import SAETrainer

    sae_cfg = MatchingPursuitTrainingSAEConfig(
        d_in=x_BD.shape[1],
        d_sae=d_sae,
        dtype="float32",
        decoder_init_norm=1.0,
        residual_threshold=0.0,
        max_iterations=k,
        stop_on_duplicate_support=False,
    )
    cfg = SAETrainerConfig(
        total_training_samples=x_BD.shape[0] * 1000,
        train_batch_size_samples=x_BD.shape[0],
        lr_end=3e-4,  # set by the runner config's post-init in a full SAELens run
        logger=LoggingConfig(log_to_wandb=False),
    )
    trainer = SAETrainer(cfg, MatchingPursuitTrainingSAE(sae_cfg), data_provider=iter(()))

    def step() -> None:
        trainer.step(x_BD)

    return step


def _ms(t0: float) -> float:
    return 1e3 * (time.perf_counter() - t0)


def breakdown(x_BD: torch.Tensor, d_sae: int, k: int) -> dict[str, Any]:
    """Milliseconds of each part of saekit's MP step (the second of two passes: warm pools)."""
    sae = MatchingPursuitSAE(SAEConfig(method="mp", d_sae=d_sae, k=k), x_BD.shape[1])
    W = sae.W_dec
    path = choose_path(x_BD.shape[0], x_BD.shape[1], d_sae, k)
    parts: dict[str, Any] = {"path": path}
    for _ in range(2):
        t0 = time.perf_counter()
        x_BD @ W.detach().T
        parts["encoder_gemm_c0"] = _ms(t0)
        t0 = time.perf_counter()
        if path == "gram":
            gram_matrix(W, W)
        parts["gram_gemm"] = _ms(t0)
        t0 = time.perf_counter()
        _, _, r_BD = MatchingPursuit.apply(x_BD, W, W, k, path, None, None)
        parts["forward"] = _ms(t0)
        t0 = time.perf_counter()
        r_BD.pow(2).sum(dim=1).mean().backward()
        parts["backward"] = _ms(t0)
        W.grad = None
    parts["pursuit_loop"] = parts["forward"] - parts["encoder_gemm_c0"] - parts["gram_gemm"]
    return parts


def run(
    rounds: int = 3, d_in: int = D_IN, d_sae: int = D_SAE, k: int = K, batch: int = BATCH
) -> dict[str, Any]:
    from importlib.metadata import version

    if (batch, d_in) == (BATCH, D_IN):
        x_BD = activations()  # the same input as `saekit bench train`
    else:  # smaller shapes (smoke tests): the same recipe, Gaussian rows plus an offset
        gen = torch.Generator().manual_seed(0)
        x_BD = torch.randn(batch, d_in, generator=gen) + 0.5 * torch.randn(d_in, generator=gen)
    steps = {
        "saekit_mp": trainer_step(x_BD, SAEConfig(method="mp", d_sae=d_sae, k=k)),
        "saelens_mp": saelens_step(x_BD, d_sae, k),
        "saekit_topk": trainer_step(x_BD, SAEConfig(method="topk", d_sae=d_sae, k=k)),
    }
    for step in steps.values():
        step()  # warm-up: Adam state, allocator pools, lazy imports
    times: dict[str, list[float]] = {side: [] for side in SIDES}
    for r in range(rounds):
        for side in SIDES[r % 3 :] + SIDES[: r % 3]:
            t0 = time.perf_counter()
            steps[side]()
            times[side].append(_ms(t0))
    ms = {side: statistics.median(t) for side, t in times.items()}
    parts = breakdown(x_BD, d_sae, k)
    # Steps 2..k cost at least min(Gram GEMM, k − 1 encoder GEMMs); gram_gemm is 0 when unused.
    c0 = parts["encoder_gemm_c0"]
    floor_ms = c0 + (parts["gram_gemm"] if parts["path"] == "gram" else (k - 1) * c0)
    tps = {side: batch / (ms[side] / 1e3) for side in SIDES}
    return {
        "bench": "mp",
        "shape": {"d_in": d_in, "d_sae": d_sae, "k": k, "batch": batch, "dtype": "float32"},
        "torch_threads": torch.get_num_threads(),
        "rounds": rounds,
        "anchor": f"sae_lens {version('sae-lens')} MatchingPursuitTrainingSAE + SAETrainer.step",
        "step_ms": ms,
        "step_ms_rounds": {s: [round(t, 1) for t in v] for s, v in times.items()},
        "tokens_per_s": tps,
        "ratio_vs_anchor": tps["saekit_mp"] / tps["saelens_mp"],
        "mp_vs_topk": ms["saekit_mp"] / ms["saekit_topk"],
        "breakdown_ms": parts,
        "exact_mp_ceiling": ms["saelens_mp"] / floor_ms,
        "targets": {"ratio_vs_anchor": ">= 10", "mp_vs_topk": "<= 3"},
    }


def table(result: dict[str, Any]) -> str:
    shape, ms, tps = result["shape"], result["step_ms"], result["tokens_per_s"]
    lines = [
        f"bench mp — d_in {shape['d_in']}, d_sae {shape['d_sae']}, k {shape['k']}, "
        f"{shape['batch']} tokens/step, {shape['dtype']}, {result['torch_threads']} threads, "
        f"median of {result['rounds']} interleaved rounds",
        f"{'path':40s} {'step ms':>9s} {'tokens/s':>9s}",
    ]
    names = {
        "saekit_mp": "saekit MP Trainer._step",
        "saelens_mp": f"SAELens MP ({result['anchor'].split(' ')[1]}, fixed k)",
        "saekit_topk": "saekit TopK Trainer._step (same k)",
    }
    for side in SIDES:
        lines.append(f"{names[side]:40s} {ms[side]:9.0f} {tps[side]:9.0f}")
    b = result["breakdown_ms"]
    lines += [
        f"ratio_vs_anchor = {result['ratio_vs_anchor']:.2f} (target ≥ 10); "
        f"MP / TopK step = {result['mp_vs_topk']:.2f} (target ≤ 3)",
        f"saekit MP step parts ({b['path']} path): c0 GEMM {b['encoder_gemm_c0']:.0f} ms, "
        f"Gram GEMM {b['gram_gemm']:.0f} ms, {shape['k']}-step loop {b['pursuit_loop']:.0f} ms, "
        f"backward {b['backward']:.0f} ms",
        f"exact_mp_ceiling = SAELens step / (c0 + Gram GEMMs) = {result['exact_mp_ceiling']:.2f}: "
        "the most any exact k-step MP could gain here",
    ]
    return "\n".join(lines)

"""The MP-SAE training steps `saekit bench mp` times: saekit's and its peers', each as its library
runs it by default except the step count, fixed at k everywhere.

Every builder takes the batch x_BD and the shape and returns the `Side` to time plus `info`: the
configuration it runs with and every way its step differs from saekit's.

- saekit: `Trainer._step` on a tied "mp" slot, the body of `Trainer.train`.
- SAELens: its own `SAETrainer.step` on `MatchingPursuitTrainingSAE`. Its defaults stop each row
  adaptively (residual_threshold 1e-2, max_iterations = d_in, stop on a repeated atom); the bench
  sets residual_threshold 0, max_iterations k, stop_on_duplicate_support False, so it runs
  exactly k steps like every other side.
- overcomplete (the MP-SAE authors' library): `MpSAE(k=k)` trained by its own `train_sae` for
  one batch with the README recipe (Adam lr 5e-4, MSE mean), logging off (`monitoring=0`).
- saekit TopK at the same k: the one-shot SAE an MP step is compared with (`mp_vs_topk`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch

from saekit.activations.tensors import TensorStream
from saekit.bench import peers
from saekit.bench.protocol import Side
from saekit.bench.train_anchors import Shape, saelens_trainer

Builder = Callable[[torch.Tensor, Shape], tuple[Side, dict[str, Any]]]


def saekit_step(method: Literal["mp", "topk"]) -> Builder:
    """`Trainer._step` on a fresh slot of `method` ("mp" or "topk") at the bench's k."""

    def build(x_BD: torch.Tensor, shape: Shape) -> tuple[Side, dict[str, Any]]:
        from saekit.dictionaries import SAEConfig
        from saekit.train.config import TrainConfig
        from saekit.train.trainer import Trainer

        cfg = TrainConfig(total_tokens=shape.batch * 1000, wandb_mode="disabled")
        sae_cfg = SAEConfig(method=method, d_sae=shape.d_sae, k=shape.k)
        stream = TensorStream(x_BD, batch_size=x_BD.shape[0], shuffle=False)
        trainer = Trainer((sae_cfg,), cfg, stream)  # no run_dir: writes nothing
        slot = trainer.slots[0]

        def step() -> None:
            trainer._step(slot, x_BD, log_now=False)  # exactly what Trainer.train runs per step

        lr = slot.optimizer.param_groups[0]["initial_lr"]  # not get_last_lr(): step 0 warms up
        info = {
            "step": f"saekit Trainer._step on a {method} slot (the body of Trainer.train)",
            "optimizer": f"Adam (fused), lr {lr:.2e}, warmup + decay",
            "loss": "squared error summed over d_in, mean over the batch",
            "decoder": "unit-norm rows renormalized after each step, parallel gradient removed",
            "grad_clip_norm": slot.grad_clip_norm,
        }
        if method == "mp":
            info |= {
                "pursuit": f"{shape.k} steps, tied atoms, ReLU'd correlations, b_dec subtracted "
                "first; Gram path (G = W Wᵀ rebuilt each step, symmetric); backward through the "
                "unrolled loop from saved residuals, no [B, d_sae] tensor",
            }
        else:
            info["aux_k"] = f"on, variance-normalized, coefficient {sae_cfg.aux_k_coefficient}"
        return Side(step, shape.batch, state=lambda: list(slot.sae.parameters())), info

    return build


def saelens_step(x_BD: torch.Tensor, shape: Shape) -> tuple[Side, dict[str, Any]]:
    from importlib.metadata import version

    from sae_lens.saes.matching_pursuit_sae import (
        MatchingPursuitTrainingSAE,
        MatchingPursuitTrainingSAEConfig,
    )

    sae_cfg = MatchingPursuitTrainingSAEConfig(
        d_in=shape.d_in,
        d_sae=shape.d_sae,
        dtype="float32",
        decoder_init_norm=1.0,
        residual_threshold=0.0,
        max_iterations=shape.k,
        stop_on_duplicate_support=False,
    )
    sae = MatchingPursuitTrainingSAE(sae_cfg)
    trainer = saelens_trainer(sae, shape)
    cfg = trainer.cfg

    def step() -> None:
        trainer.step(x_BD)

    info = {
        "package": f"sae-lens {version('sae-lens')}",
        "step": "SAETrainer.step on MatchingPursuitTrainingSAE",
        "pursuit": f"fixed {shape.k} steps (residual_threshold 0, max_iterations {shape.k}, "
        "stop_on_duplicate_support False; its defaults stop adaptively after up to d_in steps); "
        "tied, ReLU'd correlations; a dense residual @ W_decᵀ per step, dense [B, d_sae] codes "
        "decoded by a GEMM, backward through the selected coefficients",
        "optimizer": f"Adam lr {cfg.lr}, betas ({cfg.adam_beta1}, {cfg.adam_beta2})",
        "loss": "squared error summed over d_in, mean over the batch",
        "decoder": "decoder_init_norm 1.0 (forced by SAELens for MP); no renormalization step",
        "grad_clip_norm": 1.0,
    }
    return Side(step, shape.batch, state=lambda: list(sae.parameters())), info


def overcomplete_step(x_BD: torch.Tensor, shape: Shape) -> tuple[Side, dict[str, Any]]:
    oc = peers.overcomplete_sae()
    sae = oc.MpSAE(shape.d_in, shape.d_sae, k=shape.k, device="cpu")
    optimizer = torch.optim.Adam(sae.parameters(), lr=5e-4)

    def criterion(x, x_hat, pre_codes, codes, dictionary):  # type: ignore[no-untyped-def]
        return (x - x_hat).square().mean()

    def step() -> None:
        oc.train_sae(sae, [x_BD], criterion, optimizer, nb_epochs=1, monitoring=0)

    info = {
        "package": f"overcomplete {peers.peer_version('overcomplete')}",
        "step": "train_sae(MpSAE, one batch, nb_epochs=1, monitoring=0)",
        "pursuit": f"k={shape.k} (class default 1), dropout None (default); atoms selected by "
        "the signed max (no ReLU: codes may be negative); no pre-bias, the input itself is "
        "pursued; per step a dense residual @ Wᵀ and a dense one-hot [B, d_sae] code update "
        "decoded by a GEMM, all under autograd",
        "optimizer": "Adam lr 5e-4 (README), no schedule",
        "loss": "MSE mean over batch and d_in (README criterion), no revival term",
        "decoder": "rows L2-normalized in place at every forward (DictionaryLayer 'l2'), "
        "no gradient projection",
        "grad_clip_norm": 1.0,
    }
    return Side(step, shape.batch, state=lambda: list(sae.parameters())), info


BUILDERS: dict[str, Builder] = {
    "saekit_mp": saekit_step("mp"),
    "saelens_mp": saelens_step,
    "overcomplete_mp": overcomplete_step,
    "saekit_topk": saekit_step("topk"),
}
PEERS = ("saelens_mp", "overcomplete_mp")

"""The peers' TopK training steps that `saekit bench train` times, each at its own defaults.

Every builder takes the batch x_BD (fixed for the whole bench; its device is the bench's), an
optional mask of latents to mark dead before each step, and the shape; it returns the `Side`
to time plus `info`: the configuration the peer runs with and every way its step differs
from saekit's.

- SAELens: its own `SAETrainer.step` on `TopKTrainingSAE` (default config), once with
  `use_sparse_activations` False and once True (the setting SAELens documents for fp32 with
  k ≪ d_sae); a setting that raises is reported, not timed.
- sparsify: `SparseCoder` and the optimizer `Trainer` builds by default (SignSGD in a
  ScheduleFree wrapper, momentum 0.95, lr 5e-3/√(d_sae/2¹⁴)), stepped as the per-hook body of
  `Trainer.fit` does with its default FVU loss: b_dec at the batch mean before the first step,
  decoder renormalized before every forward, the FVU read on the host for logging, backward,
  parallel-gradient removal, optimizer step, dead-latent counters. (`Trainer` itself needs a
  language model and a dataset; the loop around the SAE is transcribed, the SAE and optimizer
  are sparsify's own objects.)
- overcomplete: `TopKSAE` trained by its own `train_sae` for one batch, with the README's
  recipe (Adam lr 5e-4, MSE mean criterion) and train_sae's defaults (grad clip 1.0), logging
  off (`monitoring=0`, its fastest documented setting).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from saekit.activations.tensors import TensorStream
from saekit.bench import peers
from saekit.bench.protocol import Side


class Shape(NamedTuple):
    d_in: int
    d_sae: int
    k: int
    batch: int


Builder = Callable[[torch.Tensor, "torch.Tensor | None", Shape], tuple[Side, dict[str, Any]]]


def saekit_step(
    x_BD: torch.Tensor, dead_S: torch.Tensor | None, shape: Shape
) -> tuple[Side, dict[str, Any]]:
    from saekit.dictionaries import SAEConfig
    from saekit.train.config import TrainConfig
    from saekit.train.trainer import Trainer

    # Without a run directory a Trainer writes nothing.
    # Clipped at 1 as SAELens' anchor is (topk's default is no clip): the same work per step.
    cfg = TrainConfig(
        total_tokens=shape.batch * 1000,
        grad_clip_norm=1.0,
        wandb_mode="disabled",
        device=str(x_BD.device),
    )
    sae_cfg = SAEConfig(method="topk", d_sae=shape.d_sae, k=shape.k)
    stream = TensorStream(x_BD, batch_size=x_BD.shape[0], shuffle=False)
    trainer = Trainer((sae_cfg,), cfg, stream)
    slot = trainer.slots[0]

    def step() -> None:
        if dead_S is not None:
            slot.tokens_since_fired_S[dead_S] = cfg.dead_window_tokens
        trainer._step(slot, x_BD, log_now=False)  # exactly what Trainer.train runs per step

    lr = slot.optimizer.param_groups[0]["initial_lr"]  # not get_last_lr(): step 0 is warming up
    info = {
        "step": "saekit Trainer._step on TopKSAE (the body of Trainer.train)",
        "optimizer": f"Adam (fused), lr {lr:.2e}, warmup + decay",
        "loss": "squared error summed over d_in, mean over the batch",
        "aux_k": f"on, variance-normalized, coefficient {sae_cfg.aux_k_coefficient}",
        "decoder": "unit-norm rows renormalized after each step, parallel gradient removed",
        "grad_clip_norm": slot.grad_clip_norm,
        "weight_average": f"moving average of the weights after each step, β "
        f"{slot.average.beta}, window shrinking with the lr (what a run exports)"
        if slot.average
        else "none",
        "b_dec_init": "geometric median of the first batch in Trainer.train (outside the "
        "timed step; zero here)",
    }
    return Side(step, shape.batch, state=lambda: list(slot.sae.parameters())), info


def saelens_trainer(sae: Any, shape: Shape) -> Any:
    """SAELens' own `SAETrainer` around `sae`, configured as a full SAELens run would."""
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    cfg = SAETrainerConfig(
        total_training_samples=shape.batch * 1000,
        train_batch_size_samples=shape.batch,
        lr_end=3e-4,  # set by the runner config's post-init in a full SAELens run
        logger=LoggingConfig(log_to_wandb=False),
    )
    return SAETrainer(cfg, sae, data_provider=iter(()))


def saelens_step(sparse: bool) -> Builder:
    """SAELens' step with `use_sparse_activations=sparse`."""

    def build(
        x_BD: torch.Tensor, dead_S: torch.Tensor | None, shape: Shape
    ) -> tuple[Side, dict[str, Any]]:
        from importlib.metadata import version

        from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

        sae_cfg = TopKTrainingSAEConfig(
            d_in=shape.d_in,
            d_sae=shape.d_sae,
            k=shape.k,
            dtype="float32",
            device=str(x_BD.device),
            use_sparse_activations=sparse,
        )
        sae = TopKTrainingSAE(sae_cfg)
        trainer = saelens_trainer(sae, shape)
        cfg = trainer.cfg

        def step() -> None:
            if dead_S is not None:
                trainer.n_forward_passes_since_fired[dead_S] = cfg.dead_feature_window + 1
            trainer.step(x_BD)

        info = {
            "package": f"sae-lens {version('sae-lens')}",
            "step": "SAETrainer.step on TopKTrainingSAE",
            "use_sparse_activations": sparse,
            "optimizer": f"Adam lr {cfg.lr}, betas ({cfg.adam_beta1}, {cfg.adam_beta2})",
            "loss": "squared error summed over d_in, mean over the batch",
            "aux_k": f"on, not variance-normalized, coefficient {sae_cfg.aux_loss_coefficient}",
            "decoder": "no renormalization: rescale_acts_by_decoder_norm="
            f"{sae_cfg.rescale_acts_by_decoder_norm} puts the decoder norm in the forward",
            "grad_clip_norm": 1.0,
            "clip_order": "clips the raw gradient (saekit clips after removing the decoder's "
            "parallel component)",
            "b_dec_init": "zeros",
        }
        return Side(step, shape.batch, state=lambda: list(sae.parameters())), info

    return build


def sparsify_step(
    x_BD: torch.Tensor, dead_S: torch.Tensor | None, shape: Shape
) -> tuple[Side, dict[str, Any]]:
    sp = peers.sparsify()
    from schedulefree import ScheduleFreeWrapper
    from sparsify.sign_sgd import SignSGD

    tcfg = sp.TrainConfig(sp.SparseCoderConfig(num_latents=shape.d_sae, k=shape.k))
    sae = sp.SparseCoder(shape.d_in, tcfg.sae, x_BD.device, dtype=torch.float32)
    # Trainer.__init__, case "signum" (the default optimizer)
    lr = tcfg.lr or 5e-3 / (sae.num_latents / 2**14) ** 0.5
    opt = ScheduleFreeWrapper(SignSGD([{"params": sae.parameters(), "lr": lr}]), momentum=0.95)
    opt.train()
    since_fired_S = torch.zeros(sae.num_latents, dtype=torch.long, device=x_BD.device)
    did_fire_S = torch.zeros(sae.num_latents, dtype=torch.bool, device=x_BD.device)
    first = [True]

    def step() -> None:
        if dead_S is not None:
            since_fired_S[dead_S] = tcfg.dead_feature_threshold + 1
        if first[0]:
            sae.b_dec.data = x_BD.mean(0)  # global_step 0: b_dec at the batch mean
            first[0] = False
        sae.set_decoder_norm_to_unit_norm()
        dead_mask = since_fired_S > tcfg.dead_feature_threshold if tcfg.auxk_alpha > 0 else None
        total_variance = (x_BD - x_BD.mean(0)).pow(2).sum()
        out = sae(x=x_BD, y=x_BD, dead_mask=dead_mask, total_variance=total_variance)
        did_fire_S[out.latent_indices.flatten()] = True
        float(out.fvu.detach())  # avg_fvu for logging: one host read per step
        loss = out.fvu + tcfg.auxk_alpha * out.auxk_loss + out.multi_topk_fvu / 8
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            since_fired_S.add_(x_BD.shape[0])
            since_fired_S[did_fire_S] = 0
            did_fire_S.zero_()

    info = {
        "package": f"eai-sparsify {peers.peer_version('eai-sparsify')}",
        "step": "SparseCoder + ScheduleFreeWrapper(SignSGD), the per-hook body of Trainer.fit",
        "optimizer": f"SignSGD (signum) in ScheduleFreeWrapper, momentum 0.95, lr {lr:.2e}",
        "loss": "FVU: squared error summed over the batch ÷ its total variance",
        "aux_k": f"off (auxk_alpha {tcfg.auxk_alpha}, the default)",
        "decoder": "renormalized to unit norm before each forward, parallel gradient removed",
        "grad_clip_norm": None,
        "decoder_kernel": sp.sparse_coder.decoder_impl.__name__,
        "b_dec_init": "batch mean before the first step (the untimed probe call)",
        "not_reproduced": "Trainer.fit sets torch.set_float32_matmul_precision('high') for "
        "CUDA tensor cores; it is process-wide, so it is left at the default for every side",
    }
    return Side(step, shape.batch, state=lambda: list(sae.parameters())), info


def overcomplete_step(
    x_BD: torch.Tensor, dead_S: torch.Tensor | None, shape: Shape
) -> tuple[Side, dict[str, Any]]:
    oc = peers.overcomplete_sae()
    device = str(x_BD.device)
    sae = oc.TopKSAE(shape.d_in, nb_concepts=shape.d_sae, top_k=shape.k, device=device)
    optimizer = torch.optim.Adam(sae.parameters(), lr=5e-4)

    def criterion(x, x_hat, pre_codes, codes, dictionary):  # type: ignore[no-untyped-def]
        return (x - x_hat).square().mean()

    def step() -> None:
        oc.train_sae(sae, [x_BD], criterion, optimizer, nb_epochs=1, monitoring=0, device=device)

    info = {
        "package": f"overcomplete {peers.peer_version('overcomplete')}",
        "step": "train_sae(TopKSAE, one batch, nb_epochs=1, monitoring=0)",
        "optimizer": "Adam lr 5e-4 (README), no schedule",
        "loss": "MSE mean over batch and d_in (README criterion)",
        "aux_k": "none",
        "decoder": "rows L2-normalized in place at every forward (DictionaryLayer 'l2'), "
        "no gradient projection; codes scattered into a dense [B, d_sae] matrix",
        "grad_clip_norm": 1.0,
        "b_dec_init": "no decoder bias (x̂ = z D); the encoder Linear has its default init",
    }
    return Side(step, shape.batch, state=lambda: list(sae.parameters())), info


def gemm_step(
    x_BD: torch.Tensor, dead_S: torch.Tensor | None, shape: Shape
) -> tuple[Side, dict[str, Any]]:
    gen = torch.Generator().manual_seed(1)
    W_DS = torch.randn(shape.d_in, shape.d_sae, generator=gen).to(x_BD.device)

    def step() -> None:
        x_BD @ W_DS

    return Side(step, shape.batch), {"step": "x @ W_enc, the encoder's one dense product"}


BUILDERS: dict[str, Builder] = {
    "saekit": saekit_step,
    "saelens_dense": saelens_step(sparse=False),
    "saelens_sparse": saelens_step(sparse=True),
    "sparsify": sparsify_step,
    "overcomplete": overcomplete_step,
    "gemm": gemm_step,
}
PEERS = ("saelens_dense", "saelens_sparse", "sparsify", "overcomplete")

"""`saekit bench train` times the same work on both sides: one step of saekit's trainer and one
of SAELens' own `SAETrainer.step`, from the same weights on the same batch, AuxK off on both,
give the same parameters.

The one difference in the update is the one the bench's JSON states: saekit keeps decoder rows
at unit norm (the gradient along each row is removed before Adam, rows are renormalized after
it); SAELens folds the decoder norm into its forward instead. Here SAELens runs with
`rescale_acts_by_decoder_norm=False` (its forward then equals saekit's for unit-norm rows) and
the decoder step is wrapped around SAELens' own optimizer step, so every other part of the
update — forward, top-k, loss, backward, grad clipping, Adam — is SAELens' code.
"""

from __future__ import annotations

import torch

from saekit.activations.tensors import TensorStream
from saekit.dictionaries import SAEConfig
from saekit.train.config import TrainConfig
from saekit.train.trainer import Trainer

D_IN, D_SAE, K, BATCH, LR = 64, 512, 8, 256, 3e-4
TOL = 1e-6
"""Absolute; Adam's first step moves each entry by ≈ ±lr = 3e-4 (the sign of its gradient), so
a different selection, decode or gradient in any entry shows as ≥ 1e-4. Adam ignores the
loss's scale: the loss values are compared separately."""


def batch() -> torch.Tensor:
    """Small activations: the gradient norm is 0.38, under both sides' clip of 1.0. saekit clips
    after removing the decoder's parallel gradient, SAELens before; with clipping active that
    order changes Adam's first step only where a gradient is as small as Adam's eps (46 of
    32,768 W_enc entries at full scale, by up to 5e-6)."""
    gen = torch.Generator().manual_seed(0)
    x_BD = torch.randn(BATCH, D_IN, generator=gen) + 0.5 * torch.randn(D_IN, generator=gen)
    return 0.03 * x_BD


def saekit_trainer(x_BD: torch.Tensor) -> Trainer:
    cfg = TrainConfig(total_tokens=BATCH * 100, lr=LR, lr_warmup_steps=0, wandb_mode="disabled")
    sae_cfg = SAEConfig(method="topk", d_sae=D_SAE, k=K, aux_k_coefficient=0.0)
    stream = TensorStream(x_BD, batch_size=x_BD.shape[0], shuffle=False)
    return Trainer((sae_cfg,), cfg, stream)


def saelens_trainer(weights: dict[str, torch.Tensor]):  # type: ignore[no-untyped-def]
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    sae = TopKTrainingSAE(
        TopKTrainingSAEConfig(
            d_in=D_IN,
            d_sae=D_SAE,
            k=K,
            dtype="float32",
            aux_loss_coefficient=0.0,
            rescale_acts_by_decoder_norm=False,
        )
    )
    with torch.no_grad():
        for name, value in weights.items():
            getattr(sae, name).copy_(value)
    cfg = SAETrainerConfig(
        total_training_samples=BATCH * 100,
        train_batch_size_samples=BATCH,
        lr=LR,
        lr_end=LR,
        logger=LoggingConfig(log_to_wandb=False),
    )
    return SAETrainer(cfg, sae, data_provider=iter(()))


def with_unit_norm_decoder(trainer, W_dec: torch.nn.Parameter) -> None:  # type: ignore[no-untyped-def]
    """saekit's decoder rule around SAELens' own optimizer step (see the module docstring)."""
    adam_step = trainer.optimizer.step

    def step(*args, **kwargs):  # type: ignore[no-untyped-def]
        with torch.no_grad():
            g = W_dec.grad
            g -= (g * W_dec).sum(1, keepdim=True) * W_dec
        out = adam_step(*args, **kwargs)
        with torch.no_grad():
            W_dec.div_(W_dec.norm(dim=1, keepdim=True))
        return out

    trainer.optimizer.step = step


def test_one_step_gives_saelens_parameters():
    x_BD = batch()
    ours = saekit_trainer(x_BD)
    slot = ours.slots[0]
    with torch.no_grad():  # a nonzero b_dec, so pre-bias centering is exercised
        slot.sae.b_dec.copy_(x_BD.mean(0))
    names = ("W_enc", "b_enc", "W_dec", "b_dec")
    start = {n: getattr(slot.sae, n).detach().clone() for n in names}
    theirs = saelens_trainer(start)
    with_unit_norm_decoder(theirs, theirs.sae.W_dec)

    out = theirs.step(x_BD)
    record = ours._step(slot, x_BD, log_now=True)

    grad_norm = torch.cat([s["exp_avg"].flatten() for s in slot.optimizer.state.values()])
    assert float(grad_norm.norm()) / 0.1 < 1.0  # Adam's m = 0.1·g: no clipping took place
    assert set(out.losses) == {"mse_loss", "auxiliary_reconstruction_loss"}, out.losses
    assert float(out.losses["auxiliary_reconstruction_loss"]) == 0.0
    mse_theirs = float(out.losses["mse_loss"].detach())
    assert abs(record[f"{slot.name}/loss/mse"] - mse_theirs) < 1e-6 * mse_theirs
    for n in names:
        after_ours, after_theirs = getattr(slot.sae, n).detach(), getattr(theirs.sae, n).detach()
        moved = (after_ours - start[n]).abs().max()
        assert moved > 0.5 * LR, f"{n} did not move"  # a real step on both sides
        diff = (after_ours - after_theirs).abs().max()
        assert diff < TOL, f"{n}: saekit and SAELens differ by {diff:.2e} after one step"

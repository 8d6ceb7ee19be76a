"""ReLU SAE with the decoder-norm-weighted L1 penalty (Anthropic, April 2024 update).

    z_BS = ReLU((x − b_dec) W_enc + b_enc),   x̂_BD = z W_dec + b_dec
    mse  = Σ_d (x̂ − x)², mean over batch
    l1   = λ · sparsity_scale · mean_B Σ_j z_j ‖W_dec[j]‖

The penalty multiplies each code by its decoder-row norm, so shrinking z while growing W_dec
buys nothing; that is why the decoder is NOT renormalized (`unit_norm_decoder = False`). λ
lives in `self.sparsity_coefficient` (initial value cfg.l1_coefficient) so a target-L0
controller can move it between steps. Saved as SAELens "standard".
"""

from __future__ import annotations

from torch import Tensor

from saekit.dictionaries.base import Dictionary, SAEConfig, TrainContext, TrainOutput, sum_sq_error
from saekit.errors import SaekitError


class ReLUSAE(Dictionary):
    """The "standard" SAE: ReLU codes, L1 sparsity weighted by decoder norms."""

    method = "relu"
    unit_norm_decoder = False
    saelens_architecture = "standard"

    def __init__(self, cfg: SAEConfig, d_in: int) -> None:
        super().__init__(cfg, d_in)
        if cfg.l1_coefficient < 0:
            raise SaekitError(f"l1_coefficient must be >= 0, got {cfg.l1_coefficient}.")
        self.init_tied_weights()
        self.sparsity_coefficient = cfg.l1_coefficient

    def encode(self, x_BD: Tensor) -> Tensor:
        return self.pre_acts(x_BD).relu()

    def training_forward(self, x_BD: Tensor, ctx: TrainContext) -> TrainOutput:
        z_BS = self.encode(x_BD)
        x_hat_BD = self.decode(z_BS)
        coefficient = self.sparsity_coefficient or 0.0
        weighted_l1 = (z_BS.float() * self.W_dec.float().norm(dim=1)).sum(dim=-1).mean()
        losses = {
            "mse": sum_sq_error(x_hat_BD, x_BD),
            "l1": coefficient * ctx.sparsity_scale * weighted_l1,
        }
        return TrainOutput(x_hat_BD, z_BS, losses)

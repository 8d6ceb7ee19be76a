"""ReLU SAE with the decoder-norm-weighted L1 penalty (Anthropic, April 2024 update).

    z_BS = ReLU((x − b_dec) W_enc + b_enc),   x̂_BD = z W_dec + b_dec
    mse  = Σ_d (x̂ − x)², mean over batch
    l1   = λ · sparsity_scale · mean_B Σ_j z_j ‖W_dec[j]‖

The penalty multiplies each code by its decoder-row norm, so shrinking z while growing W_dec
buys nothing; that is why the decoder is NOT renormalized (`unit_norm_decoder = False`). λ
lives in `self.sparsity_coefficient` (initial value relu.l1_coefficient) so a target-L0
controller can move it between steps. Saved as SAELens "standard" ("transcoder" or
"skip_transcoder" as a transcoder).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor

from saekit.dictionaries.trainable import (
    TrainableDictionary,
    TrainContext,
    TrainOutput,
    sum_sq_error,
)
from saekit.errors import SaekitError

if TYPE_CHECKING:
    from saekit.dictionaries.config import SAEConfig


@dataclass(frozen=True)
class ReLUConfig:
    """relu: the L1 penalty and its optional L0 target."""

    l1_coefficient: float = 5.0
    """Weight of the decoder-norm-weighted L1 penalty (initial value if target_l0)."""
    target_l0: float | None = None
    """Steer the L1 coefficient so the final L0 lands here (±10%)."""

    def __post_init__(self) -> None:
        if self.l1_coefficient < 0:
            raise SaekitError(f"l1_coefficient must be >= 0, got {self.l1_coefficient}.")


class ReLUSAE(TrainableDictionary):
    """The "standard" SAE: ReLU codes, L1 sparsity weighted by decoder norms."""

    method = "relu"
    unit_norm_decoder = False
    saelens_architecture = "standard"

    def __init__(self, cfg: SAEConfig, d_in: int, d_out: int | None = None) -> None:
        super().__init__(cfg, d_in, d_out)
        options: ReLUConfig = cfg.options()
        self.init_tied_weights()
        self.sparsity_coefficient = options.l1_coefficient
        self.target_l0 = options.target_l0

    def encode(self, x_BD: Tensor) -> Tensor:
        return self.pre_acts(x_BD).relu()

    def training_forward(self, x_BD: Tensor, ctx: TrainContext) -> TrainOutput:
        z_BS = self.encode(x_BD)
        x_hat_BD = self.reconstruct(x_BD, z_BS)
        coefficient = self.sparsity_coefficient or 0.0
        weighted_l1 = (z_BS.float() * self.W_dec.float().norm(dim=1)).sum(dim=-1).mean()
        losses = {
            "mse": sum_sq_error(x_hat_BD, self.target(x_BD, ctx)),
            "l1": coefficient * ctx.sparsity_scale * weighted_l1,
        }
        return TrainOutput(x_hat_BD, z_BS, losses)

"""Dictionaries trained by gradient steps (the SAE family): the trainer's side of the interface.

    training_forward(x_BD, ctx) -> TrainOutput(x_hat_BD, z_BS, losses={name: scalar}[, codes])
    post_step()                   hook after each optimizer step (JumpReLU clamps θ ≥ 0)
    unit_norm_decoder             the trainer renormalizes decoder rows and projects their grads
    sparsity_coefficient          the penalty weight a target-L0 controller may steer

The trainer owns optimization; a dictionary owns its forward and its named loss terms. The
trainer sums `losses` for the backward pass and logs each term. Each loss term already
carries its coefficient; coefficients a controller may steer live in `sparsity_coefficient`.
A transcoder's forward predicts `ctx.target_BO` (the output hook's rows) instead of x.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from saekit.dictionaries.base import Dictionary
from saekit.errors import SaekitError
from saekit.kernels.sparse_ops import CsrCodes
from saekit.kernels.sparse_topk import SparseCodes

if TYPE_CHECKING:
    from saekit.dictionaries.config import SAEConfig


class TrainOutput:
    """What a training forward returns: the reconstruction, the named scalar loss terms (the
    trainer minimizes their sum) and the codes, dense (`z_BS`) or sparse (`codes`: values and
    indices of the kept latents). Sparse codes build z_BS only if it is read."""

    def __init__(
        self,
        x_hat_BD: Tensor,
        z_BS: Tensor | None,
        losses: dict[str, Tensor],
        codes: SparseCodes | CsrCodes | None = None,
    ) -> None:
        self.x_hat_BD, self.losses, self.codes, self._z_BS = x_hat_BD, losses, codes, z_BS

    @property
    def z_BS(self) -> Tensor:
        """Codes after the activation, dense (zeros where inactive)."""
        if self._z_BS is None:
            assert self.codes is not None, "TrainOutput needs dense (z_BS) or sparse codes"
            self._z_BS = self.codes.dense()
        return self._z_BS

    def firing_counts_S(self) -> Tensor:
        """Rows in which each latent fired (int64); a scatter of the sparse codes if given."""
        codes = self.codes
        return codes.firing_counts_S() if codes is not None else (self.z_BS != 0).sum(dim=0)


@dataclass
class TrainContext:
    """Per-step information the trainer passes into `training_forward`."""

    dead_mask_S: Tensor | None = None
    """Latents that have not fired in the dead window (for AuxK)."""
    sparsity_scale: float = 1.0
    """Sparsity-warmup multiplier on the sparsity penalty (0 → 1 over warmup)."""
    target_BO: Tensor | None = None
    """What the decoder must reproduce when it is not the input: a transcoder's output-hook
    activations, row for row with x (None: reconstruct x)."""
    extras: dict[str, float] = field(default_factory=dict)


class TrainableDictionary(Dictionary):
    """A dictionary the trainer optimizes: a training forward with named loss terms."""

    unit_norm_decoder: ClassVar[bool] = True
    """Whether the trainer keeps decoder rows at unit norm and projects their gradients."""
    default_lr_scale: ClassVar[float] = 1.0
    """With train.lr unset, Adam's lr is this × 2e-4/√(d_sae/2^14)."""
    default_grad_clip_norm: ClassVar[float] = 1.0
    """The gradient-norm clip when train.grad_clip_norm is unset (0: none)."""
    default_lr_warmup_steps: ClassVar[int] = 50
    """The lr's linear warmup (steps) when train.lr_warmup_steps is unset."""
    default_lr_decay_fraction: ClassVar[float] = 0.2
    """The lr's final linear decay (fraction of the run) when train.lr_decay_fraction is unset."""
    default_ema_decay: ClassVar[float] = 0.0
    """β of the exported weight average when train.ema_decay is unset (0: the last iterate)."""

    def __init__(self, cfg: SAEConfig, d_in: int, d_out: int | None = None) -> None:
        super().__init__(cfg, d_in, d_out)
        self.sparsity_coefficient: float | None = None
        """Mutable sparsity weight (relu: L1, jumprelu: L0) a target-L0 controller may steer."""
        self.target_l0: float | None = None
        """The L0 a controller steers `sparsity_coefficient` toward (None: no controller)."""

    def init_tied_weights(self) -> None:
        """Unit-norm random decoder rows (seeded), W_enc = W_decᵀ, zero biases.

        A transcoder's encoder reads another space than its decoder writes, so tying means
        nothing there: its W_enc gets unit-norm random columns of its own (the same scale), and
        a skip transcoder's W_skip starts at zero (the sparse path learns first).
        """
        gen = torch.Generator().manual_seed(self.cfg.seed)
        W_dec_SO = torch.randn(self.d_sae, self.d_out, generator=gen)
        W_dec_SO /= W_dec_SO.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec_SO)
        if self.is_transcoder:
            W_enc_DS = torch.randn(self.d_in, self.d_sae, generator=gen)
            self.W_enc = nn.Parameter(W_enc_DS / W_enc_DS.norm(dim=0, keepdim=True))
        else:
            # Row-major D×S, not a transposed view of W_dec's layout: the fused Adam step
            # copies a non-contiguous parameter, its gradient and both moments in and out.
            self.W_enc = nn.Parameter(W_dec_SO.T.contiguous())
        self.b_enc = nn.Parameter(torch.zeros(self.d_sae))
        # The trainer overwrites b_dec with the geometric median of a sample before step 0.
        self.b_dec = nn.Parameter(torch.zeros(self.d_out))
        if self.cfg.skip_connection:
            self.W_skip = nn.Parameter(torch.zeros(self.d_out, self.d_in))

    def training_forward(self, x_BD: Tensor, ctx: TrainContext) -> TrainOutput:
        raise NotImplementedError

    def target(self, x_BD: Tensor, ctx: TrainContext) -> Tensor:
        """The rows the output must match: ctx.target_BO for a transcoder, else x."""
        if not self.is_transcoder:
            return x_BD
        if ctx.target_BO is None:
            raise SaekitError(
                f"This transcoder predicts {self.cfg.output_hook!r} from {self.cfg.hook!r}: "
                "train it on a stream of both hooks."
            )
        return ctx.target_BO

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale decoder rows to unit norm (called by the trainer after each step)."""
        self.W_dec.data /= self.W_dec.data.norm(dim=1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Drop the gradient component along each (unit) decoder row, before the step."""
        if self.W_dec.grad is None:
            return
        W_SD, g_SD = self.W_dec.data, self.W_dec.grad
        # In place with one S×D temporary (vecdot's product), not two.
        g_SD.addcmul_(torch.linalg.vecdot(g_SD, W_SD).unsqueeze(1), W_SD, value=-1)

    def post_step(self) -> None:
        """Called by the trainer after every optimizer step (and decoder renorm)."""

    def export_state(self) -> dict[str, Any]:
        return {"sparsity_coefficient": self.sparsity_coefficient}

    @torch.no_grad()
    def import_tensors(self, tensors: dict[str, Tensor], state: dict[str, Any]) -> None:
        super().import_tensors(tensors, state)
        if state.get("sparsity_coefficient") is not None:
            self.sparsity_coefficient = float(state["sparsity_coefficient"])


def check_k(cfg: SAEConfig) -> None:
    """TopK-family validation: 1 <= k < d_sae."""
    if cfg.k < 1:
        raise SaekitError(f"k must be >= 1, got {cfg.k}. Typical values are 32-128.")
    if cfg.k >= cfg.d_sae:
        raise SaekitError(
            f"k={cfg.k} must be smaller than d_sae={cfg.d_sae}: with k >= d_sae nothing is "
            "sparse. Lower k or raise d_sae."
        )


def sum_sq_error(x_hat_BD: Tensor, x_BD: Tensor) -> Tensor:
    """Squared error summed over d_in, mean over the batch (the `mse` term everywhere)."""
    return (x_hat_BD.float() - x_BD.float()).pow(2).sum(dim=-1).mean()


def resolve_k_aux(cfg: SAEConfig, d_in: int) -> int:
    """AuxK width: cfg.aux_k, else d_in // 2 (Gao et al. 2024's heuristic), at least 1."""
    return cfg.aux_k if cfg.aux_k is not None else max(d_in // 2, 1)

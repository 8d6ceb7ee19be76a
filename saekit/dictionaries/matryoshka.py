"""Matryoshka BatchTopK SAE (Bussmann, Nabeshima, Karvonen, Nanda, ICML 2025, arXiv 2503.17547).

Activation is BatchTopK over the full width (see batchtopk.py). The loss asks every prefix of
the latent vector to reconstruct x on its own, with b_dec:

    x̂_w = b_dec + Σ_{j < w} z_j W_dec[j]        for w in widths (last = d_sae)
    loss = Σ_w ‖x − x̂_w‖² (summed over d_in, mean over batch)  +  aux_k

Weighting: every level has weight 1 and the terms are summed, as SAELens does. Bussmann et al.
divide the sum by G levels; under Adam that overall scale is nearly irrelevant, and summing
keeps the full-width term named `mse` identical to BatchTopK's, so logs compare across methods
and α_aux = 1/32 has the same meaning relative to it. Inner levels log as `mse_<w>`.

Widths default to d_sae/16, d_sae/4, d_sae (widths < 1 dropped). Pitfall (methods.md §1.5,
Chanin et al. 2025, arXiv 2505.11756): a narrow inner level "hedges" — its latents absorb
parts of child features they cannot afford separately — so do not make the first level tiny
(d_sae/16 = 576 latents at d_sae 9,216). AuxK uses the full-width residual, not per level.
Saved as BatchTopK: SAELens "jumprelu" with the learned global threshold.
"""

from __future__ import annotations

from torch import Tensor

from saekit.dictionaries.base import SAEConfig, TrainContext, TrainOutput, sum_sq_error
from saekit.dictionaries.batchtopk import BatchTopKSAE
from saekit.errors import SaekitError


def resolve_widths(cfg: SAEConfig) -> tuple[int, ...]:
    """The nested prefix widths, validated: strictly increasing, ending at d_sae."""
    d_sae = cfg.d_sae
    if not cfg.matryoshka_widths:
        return tuple(sorted({w for w in (d_sae // 16, d_sae // 4, d_sae) if w >= 1}))
    widths = tuple(cfg.matryoshka_widths)
    if any(w < 1 for w in widths) or any(a >= b for a, b in zip(widths, widths[1:])):
        raise SaekitError(
            f"matryoshka_widths {list(widths)} must be positive and strictly increasing, "
            f"e.g. [{d_sae // 16}, {d_sae // 4}, {d_sae}]."
        )
    if widths[-1] != d_sae:
        raise SaekitError(
            f"matryoshka_widths {list(widths)} must end at d_sae={d_sae} (the full dictionary "
            f"is the outer level). Append {d_sae}."
        )
    return widths


class MatryoshkaSAE(BatchTopKSAE):
    """BatchTopK whose every latent prefix in `widths` is trained to reconstruct x."""

    method = "matryoshka"

    def __init__(self, cfg: SAEConfig, d_in: int) -> None:
        super().__init__(cfg, d_in)
        self.widths = resolve_widths(cfg)

    def training_forward(self, x_BD: Tensor, ctx: TrainContext) -> TrainOutput:
        pre_BS = self.pre_acts(x_BD)
        entries = self.select(pre_BS)
        self.update_threshold(entries.vals_N)
        losses: dict[str, Tensor] = {}
        x_hat_BD = self.b_dec.expand_as(x_BD).to(pre_BS.dtype)
        start = 0
        for width in self.widths:
            # Decode only this band of latents and accumulate: level w sees latents [0, w).
            in_band_N = (entries.idx_N >= start) & (entries.idx_N < width)
            x_hat_BD = x_hat_BD + entries.decode(self.W_dec, in_band_N.to(entries.vals_N.dtype))
            name = "mse" if width == self.d_sae else f"mse_{width}"
            losses[name] = sum_sq_error(x_hat_BD, x_BD)
            start = width
        losses["aux_k"] = self._aux_k(x_BD, x_hat_BD, pre_BS, ctx)
        return TrainOutput(x_hat_BD, entries.dense(), losses)

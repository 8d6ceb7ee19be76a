"""Matryoshka BatchTopK SAE (Bussmann, Nabeshima, Karvonen, Nanda, ICML 2025, arXiv 2503.17547).

Activation is BatchTopK over the full width (see batchtopk.py). The loss asks every prefix of
the latent vector to reconstruct x on its own, with b_dec:

    x̂_w = b_dec + Σ_{j < w} z_j W_dec[j]        for w in widths (last = d_sae)
    loss = Σ_w ‖x − x̂_w‖² (summed over d_in, mean over batch)  +  aux_k

Weighting: every level has weight 1 and the terms are summed, as SAELens does. Bussmann et al.
divide the sum by G levels; under Adam that overall scale is nearly irrelevant, and summing
keeps the full-width term named `mse` identical to BatchTopK's, so logs compare across methods
and α_aux = 1/32 has the same meaning relative to it. Inner levels log as `mse_<w>`.

Widths default to d_sae/16, d_sae/4, d_sae (widths < 1 dropped). Pitfall (Chanin et al.
2025, arXiv 2505.11756; docs/methods/matryoshka.md): a narrow inner level "hedges" — its
latents absorb parts of child features they cannot afford separately — so do not make the
first level tiny (d_sae/16 = 576 latents at d_sae 9,216). AuxK uses the full-width
residual, not per level. With cfg.kernels ≠ "dense" each band decodes through the sparse
kernels (as BatchTopK).
Saved as BatchTopK: SAELens "jumprelu" with the learned global threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor

from saekit.dictionaries.batchtopk import BatchTopKSAE
from saekit.dictionaries.trainable import TrainContext, TrainOutput, sum_sq_error
from saekit.errors import SaekitError
from saekit.kernels.csr import select_ops
from saekit.kernels.sparse_ops import CsrCodes, csr_decode

if TYPE_CHECKING:
    from saekit.dictionaries.config import SAEConfig


@dataclass(frozen=True)
class MatryoshkaConfig:
    """matryoshka: the nested prefix widths."""

    widths: tuple[int, ...] = ()
    """Nested prefix widths ending at d_sae; empty = d_sae/16, /4, /1."""


def resolve_widths(cfg: SAEConfig) -> tuple[int, ...]:
    """The nested prefix widths, validated: strictly increasing, ending at d_sae."""
    d_sae = cfg.d_sae
    options: MatryoshkaConfig = cfg.options()
    if not options.widths:
        return tuple(sorted({w for w in (d_sae // 16, d_sae // 4, d_sae) if w >= 1}))
    widths = tuple(options.widths)
    if any(w < 1 for w in widths) or any(a >= b for a, b in zip(widths, widths[1:])):
        raise SaekitError(
            f"matryoshka.widths {list(widths)} must be positive and strictly increasing, "
            f"e.g. [{d_sae // 16}, {d_sae // 4}, {d_sae}]."
        )
    if widths[-1] != d_sae:
        raise SaekitError(
            f"matryoshka.widths {list(widths)} must end at d_sae={d_sae} (the full dictionary "
            f"is the outer level). Append {d_sae}."
        )
    return widths


class MatryoshkaSAE(BatchTopKSAE):
    """BatchTopK whose every latent prefix in `widths` is trained to reconstruct x."""

    method = "matryoshka"

    def __init__(self, cfg: SAEConfig, d_in: int, d_out: int | None = None) -> None:
        super().__init__(cfg, d_in, d_out)
        self.widths = resolve_widths(cfg)

    def training_forward(self, x_BD: Tensor, ctx: TrainContext) -> TrainOutput:
        ops = select_ops(x_BD.device, self.cfg.kernels)
        if ops is None:
            pre_BS = self.pre_acts(x_BD)
            entries = self.select(pre_BS)
            vals_N, idx_N = entries.vals_N, entries.idx_N

            def decode(in_band_N: Tensor) -> Tensor:
                return entries.decode(self.W_dec, in_band_N.to(vals_N.dtype))
        else:
            p, vals_N = self.sparse_entries(x_BD, ops)
            idx_N = p.col_N

            def decode(in_band_N: Tensor) -> Tensor:
                # The band's own sub-pattern: each band's decode and backward touch only its
                # entries, so all levels together cost one full-width decode.
                band = p.select(in_band_N)
                return csr_decode(vals_N[in_band_N], self.W_dec, None, band, ops)

        self.update_threshold(vals_N.detach())
        losses: dict[str, Tensor] = {}
        target_BO = self.target(x_BD, ctx)
        # Every level starts from b_dec (and a skip transcoder's linear path).
        x_hat_BD = self.add_skip(x_BD, self.b_dec.expand_as(target_BO).to(self.W_enc.dtype))
        start = 0
        for width in self.widths:
            # Decode only this band of latents and accumulate: level w sees latents [0, w).
            in_band_N = (idx_N >= start) & (idx_N < width)
            x_hat_BD = x_hat_BD + decode(in_band_N)
            name = "mse" if width == self.d_sae else f"mse_{width}"
            losses[name] = sum_sq_error(x_hat_BD, target_BO)
            start = width
        if ops is None:
            losses["aux_k"] = self._aux_k(target_BO, x_hat_BD, pre_BS, ctx)
            return TrainOutput(x_hat_BD, entries.dense(), losses)
        losses["aux_k"] = self._aux_k_sparse(x_BD, x_hat_BD, ctx)
        return TrainOutput(x_hat_BD, None, losses, CsrCodes(p, vals_N))

"""TopK SAE (Gao et al. 2024, "Scaling and evaluating sparse autoencoders").

    pre_BS = (x − b_dec) W_enc + b_enc
    z_BS   = keep the k largest entries of ReLU(pre) in each row, zero the rest
    x̂_BD   = z W_dec + b_dec

Losses: `mse` (squared error summed over d_in, mean over batch) and `aux_k` (variance-normalized
AuxK on dead latents, α = cfg.aux_k_coefficient, default 1/32 as in Gao et al.). Decoder rows
are kept at unit norm by the trainer, so L0 is exactly k and no L1 term is needed.

Training runs `saekit.kernels.topk_autoencoder`: after the encoder GEMM everything touches
only the B·k kept latents (decode, and the backward of decoder and encoder), and AuxK reads
only the dead latents' columns (measured step cost: docs/benchmarks.md). The codes come back sparse
(TrainOutput.codes); z_BS is built only if read. cfg.kernels picks the path: on CPU in fp32
the fused autograd function above; with Triton (CUDA), or in bf16/fp16 (which torch's CPU
sparse kernels lack), the CSR kernels of `saekit.kernels.sparse_ops`; "dense" runs
`training_forward_dense` (plain autograd, the reference; same results).
Saved as SAELens "topk" with rescale_acts_by_decoder_norm = False: our selection is on the raw
pre-activations, which is what SAELens does when that flag is off. As a transcoder
(transcoder.py) training runs the CSR path, since the fused function ties input centering
and output bias.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from saekit.dictionaries.trainable import (
    TrainableDictionary,
    TrainContext,
    TrainOutput,
    check_k,
    resolve_k_aux,
    sum_sq_error,
)
from saekit.kernels.aux_k import aux_k_loss, aux_k_loss_dead, aux_k_loss_gathered
from saekit.kernels.csr import CsrOps, CsrPattern, select_ops
from saekit.kernels.sparse_ops import csr_decode, csr_pre_acts
from saekit.kernels.sparse_topk import (
    SPARSE_DTYPES,
    SparseCodes,
    encode_topk,
    sorted_topk,
    topk_autoencoder,
)

if TYPE_CHECKING:
    from saekit.dictionaries.config import SAEConfig


class TopKSAE(TrainableDictionary):
    """Per-token TopK activation; exactly k active latents per row (fewer only if < k are > 0)."""

    method = "topk"
    unit_norm_decoder = True
    saelens_architecture = "topk"
    # Measured on SmolLM2's layer 12 at 2M tokens, seeds 0-2 (docs/benchmarks.md, bench
    # quality): no clip, decay over the last half and 4x the width rule's lr beat clip 1,
    # 20% decay and 1x on every score at every seed; so did a 10-step warmup against 50.
    default_lr_scale = 4.0
    default_grad_clip_norm = 0.0
    default_lr_warmup_steps = 10
    default_lr_decay_fraction = 0.5
    default_ema_decay = 0.98

    def __init__(self, cfg: SAEConfig, d_in: int, d_out: int | None = None) -> None:
        super().__init__(cfg, d_in, d_out)
        check_k(cfg)
        self.k = cfg.k
        self.k_aux = resolve_k_aux(cfg, d_in)
        self.init_tied_weights()

    def topk_codes(self, x_BD: Tensor) -> tuple[Tensor, Tensor]:
        """Sparse codes: values (≥ 0) and latent indices (increasing) of the k kept latents."""
        return sorted_topk(self.pre_acts(x_BD), self.k)

    def encode(self, x_BD: Tensor) -> Tensor:
        vals_BK, idx_BK = self.topk_codes(x_BD)
        return SparseCodes(vals_BK, idx_BK, self.d_sae).dense()

    def decode_sparse(self, vals_BK: Tensor, idx_BK: Tensor) -> Tensor:
        """x̂ = Σ_k vals_k · W_dec[idx_k] + b_dec, touching only the selected decoder rows
        (without a skip transcoder's skip path)."""
        W_dec_SD = self.W_dec
        out_BD = F.embedding_bag(
            idx_BK, W_dec_SD, per_sample_weights=vals_BK.to(W_dec_SD.dtype), mode="sum"
        )
        return out_BD + self.b_dec

    def training_forward(self, x_BD: Tensor, ctx: TrainContext) -> TrainOutput:
        ops = select_ops(x_BD.device, self.cfg.kernels)
        if ops is None:
            return self.training_forward_dense(x_BD, ctx)
        # The fused function ties the input centering to the output bias (both b_dec): a
        # transcoder, which has no input centering, runs the CSR kernels.
        fused = ops.name == "torch" and self.W_enc.dtype in SPARSE_DTYPES
        if not fused or self.is_transcoder:
            return self.training_forward_csr(x_BD, ctx, ops)
        dead_N = None
        if ctx.dead_mask_S is not None and self.cfg.aux_k_coefficient != 0:
            # The dead latents' indices (a host sync on GPU): AuxK then reads only their
            # columns, and nothing at all while no latent is dead.
            dead_N = ctx.dead_mask_S.nonzero().squeeze(1)
        x_hat_BD, codes, pre_dead_BN = topk_autoencoder(
            x_BD, self.W_enc, self.b_enc, self.W_dec, self.b_dec, self.k, dead_N
        )
        aux_k = x_hat_BD.new_zeros((), dtype=torch.float32)
        if dead_N is not None:
            aux_k = aux_k_loss_dead(
                x_BD,
                x_hat_BD,
                pre_dead_BN,
                dead_N,
                self.W_dec,
                self.k_aux,
                self.cfg.aux_k_coefficient,
            )
        losses = {"mse": sum_sq_error(x_hat_BD, x_BD), "aux_k": aux_k}
        return TrainOutput(x_hat_BD, None, losses, codes)

    def training_forward_csr(self, x_BD: Tensor, ctx: TrainContext, ops: CsrOps) -> TrainOutput:
        """The same forward on the CSR kernels (`ops`): sparse decode and encoder backward."""
        W_enc_DS, b_enc_S, b_in_D = self.W_enc, self.b_enc, self.input_bias
        with torch.no_grad():
            xc_BD = self.centered(x_BD)
            no_dead = torch.zeros(0, dtype=torch.long, device=x_BD.device)
            # ReLU'd values stand in for pre: where they differ both are ≤ 0, ReLU's grad 0.
            vals_BK, idx_BK, _ = encode_topk(xc_BD, W_enc_DS, b_enc_S, self.k, no_dead)
        p = CsrPattern.fixed_k(idx_BK, self.d_sae)
        pre_N = csr_pre_acts(vals_BK.flatten(), x_BD, W_enc_DS, b_enc_S, b_in_D, p, ops)
        vals_N = pre_N.relu()
        x_hat_BO = self.add_skip(x_BD, csr_decode(vals_N, self.W_dec, self.b_dec, p, ops))
        target_BO = self.target(x_BD, ctx)
        aux_k = aux_k_loss_gathered(
            x_BD,
            x_hat_BO,
            W_enc_DS,
            b_enc_S,
            self.W_dec,
            b_in_D,
            ctx.dead_mask_S,
            self.k_aux,
            self.cfg.aux_k_coefficient,
            target_BO,
        )
        losses = {"mse": sum_sq_error(x_hat_BO, target_BO), "aux_k": aux_k}
        codes = SparseCodes(vals_N.view_as(vals_BK), idx_BK, self.d_sae)
        return TrainOutput(x_hat_BO, None, losses, codes)

    def training_forward_dense(self, x_BD: Tensor, ctx: TrainContext) -> TrainOutput:
        """The same forward through plain autograd (dense pre-activation gradients)."""
        pre_BS = self.pre_acts(x_BD)
        vals_BK, idx_BK = sorted_topk(pre_BS, self.k)
        x_hat_BD = self.add_skip(x_BD, self.decode_sparse(vals_BK, idx_BK))
        target_BO = self.target(x_BD, ctx)
        losses = {
            "mse": sum_sq_error(x_hat_BD, target_BO),
            "aux_k": aux_k_loss(
                target_BO,
                x_hat_BD,
                pre_BS,
                self.W_dec,
                ctx.dead_mask_S,
                self.k_aux,
                self.cfg.aux_k_coefficient,
            ),
        }
        return TrainOutput(x_hat_BD, None, losses, SparseCodes(vals_BK, idx_BK, self.d_sae))

    def saelens_config(self) -> dict[str, Any]:
        return {"k": self.k, "rescale_acts_by_decoder_norm": False}

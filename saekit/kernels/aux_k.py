"""AuxK dead-latent loss (Gao et al. 2024, App. A.2), in two exact forms.

The top-k_aux dead latents of each row try to reconstruct the detached residual e = x − x̂
without b_dec:

    coefficient · min(n_dead / k_aux, 1) · ‖e − ê_dead‖² / ‖e − mean_B(e)‖²

The kept pre-activations are rectified (as in sparsify, whose pre-activations are ReLU'd).

`aux_k_loss` reads all B×S pre-activations and never syncs with the host: k_aux is fixed, live
latents enter as −inf and leave as 0 through the ReLU. `aux_k_loss_dead` reads only the dead
latents' columns (gathered by the caller, e.g. `topk_autoencoder(dead_N=...)`), so it costs
nothing without dead latents and O(B·n_dead·d_in) with them, at the price of knowing n_dead
on the host. Both select the same latents and give the same loss and gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _scaled_normalized_error(
    x_BD: Tensor, x_hat_BD: Tensor, e_hat_BD: Tensor, scale: float | Tensor
) -> Tensor:
    """scale · ‖e − ê‖² / ‖e − mean_B(e)‖² with e = x − x̂ detached."""
    e_BD = (x_BD.float() - x_hat_BD.float()).detach()
    # 1e-12 guards a perfect reconstruction (zero residual variance) against 0/0.
    total_var = (e_BD - e_BD.mean(dim=0)).pow(2).sum().clamp_min(1e-12)
    return scale * (e_BD - e_hat_BD.float()).pow(2).sum() / total_var


def aux_k_loss(
    x_BD: Tensor,
    x_hat_BD: Tensor,
    pre_BS: Tensor,
    W_dec_SD: Tensor,
    dead_mask_S: Tensor | None,
    k_aux: int,
    coefficient: float,
) -> Tensor:
    """AuxK from the dense pre-activations; sync-free. dead_mask_S=None skips the work.

    With no dead latent the scale is an exact 0 (a tensor, so no `.item()` is needed).
    """
    if dead_mask_S is None or coefficient == 0:
        return x_hat_BD.new_zeros((), dtype=torch.float32)
    k_aux = min(k_aux, pre_BS.shape[-1])
    dead_pre_BS = torch.where(dead_mask_S, pre_BS, float("-inf"))
    vals_BK, idx_BK = dead_pre_BS.topk(k_aux, dim=-1, sorted=False)
    e_hat_BD = F.embedding_bag(
        idx_BK, W_dec_SD, per_sample_weights=vals_BK.relu().to(W_dec_SD.dtype), mode="sum"
    )
    scale = (dead_mask_S.sum().float() / k_aux).clamp(max=1.0)
    return _scaled_normalized_error(x_BD, x_hat_BD, e_hat_BD, coefficient * scale)


def aux_k_loss_dead(
    x_BD: Tensor,
    x_hat_BD: Tensor,
    pre_dead_BN: Tensor,
    dead_N: Tensor,
    W_dec_SD: Tensor,
    k_aux: int,
    coefficient: float,
) -> Tensor:
    """AuxK from the pre-activations of the dead latents only: pre_dead_BN = pre[:, dead_N].

    Equal to `aux_k_loss` with dead_mask_S marking dead_N: when n_dead < k_aux the dense form
    also keeps k_aux − n_dead live latents, but at −inf, so with weight ReLU(−inf) = 0.
    The dead codes decode as one dense [B, n_dead] @ [n_dead, D] product: they are dense
    enough (k_aux of n_dead per row, e.g. 288 of 922) that gathering B·k_aux decoder rows
    (2.7 GB at B 4096, d_in 576) costs far more than the GEMM (0.1 GEMM of the encoder's).
    """
    n_dead = dead_N.numel()
    if n_dead == 0 or coefficient == 0:
        return x_hat_BD.new_zeros((), dtype=torch.float32)
    if n_dead <= k_aux:
        z_dead_BN = pre_dead_BN.relu()
    else:
        vals_BK, j_BK = pre_dead_BN.topk(k_aux, dim=-1, sorted=False)
        z_dead_BN = torch.zeros_like(pre_dead_BN).scatter(-1, j_BK, vals_BK.relu())
    e_hat_BD = z_dead_BN.to(W_dec_SD.dtype) @ W_dec_SD.index_select(0, dead_N)
    scale = min(n_dead / k_aux, 1.0)
    return _scaled_normalized_error(x_BD, x_hat_BD, e_hat_BD, coefficient * scale)


def aux_k_loss_gathered(
    x_BD: Tensor,
    x_hat_BD: Tensor,
    W_enc_DS: Tensor,
    b_enc_S: Tensor,
    W_dec_SD: Tensor,
    b_in_D: Tensor | None,
    dead_mask_S: Tensor | None,
    k_aux: int,
    coefficient: float,
    target_BO: Tensor | None = None,
) -> Tensor:
    """`aux_k_loss_dead` for a sparse training path that kept no differentiable B×S
    pre-activations: recomputes pre[:, dead] = ((x − b_in) W_enc + b_enc)[:, dead] by a
    B×D×n_dead product (nothing while no latent is dead). Finding the dead indices is a host
    sync on GPU. The residual is target − x̂ (a transcoder's output rows; default x)."""
    if dead_mask_S is None or coefficient == 0:
        return x_hat_BD.new_zeros((), dtype=torch.float32)
    dead_N = dead_mask_S.nonzero().squeeze(1)
    if dead_N.numel() == 0:
        return x_hat_BD.new_zeros((), dtype=torch.float32)
    xc_BD = x_BD.to(W_enc_DS.dtype)
    if b_in_D is not None:
        xc_BD = xc_BD - b_in_D
    pre_dead_BN = F.linear(xc_BD, W_enc_DS.index_select(1, dead_N).t(), b_enc_S[dead_N])
    target = x_BD if target_BO is None else target_BO
    return aux_k_loss_dead(target, x_hat_BD, pre_dead_BN, dead_N, W_dec_SD, k_aux, coefficient)

"""Reconstruction and sparsity metrics, each defined once, as pure torch functions.

Shapes: B tokens, D d_in, S d_sae, V vocabulary, T sequence positions. Functions return 0-dim
tensors (differentiable where that makes sense, so FVU can double as a loss); the streaming
accumulators return NamedTuples of Python floats for logging.

Definitions (x input, x̂ reconstruction, z codes; sums over tokens t and dimensions d):
    fvu        Σ_t‖x_t − x̂_t‖² / Σ_t‖x_t − x̄‖², x̄ = per-dimension mean over the tokens given
    explained_variance = 1 − fvu
    mse        mean_t ‖x_t − x̂_t‖²   (summed over d_in, averaged over tokens; the training loss)
    mse_per_element = mse / d_in
    cosine     mean_t cos(x_t, x̂_t)
    l2_ratio   mean_t ‖x̂_t‖ / ‖x_t‖        (< 1 means shrinkage)
    relative_reconstruction_bias = mean_t‖x̂_t‖² / mean_t⟨x_t, x̂_t⟩   (Eq. 10, arXiv 2404.16014)
    l0         per token, the number of latents with z ≠ 0 (≠ rather than > so signed codes count)
    dead / dense fraction  latents firing on 0 tokens / on more than 10% of the tokens
    kl         mean_t KL(softmax(clean_t) ‖ softmax(other_t)), summed over the vocabulary
    ce_loss_score = (CE_ablation − CE_sae) / (CE_ablation − CE_clean)

How these compare with sae_lens.evals (6.54, read from the installed source):
- explained_variance: SAELens' `ExplainedVarianceCalculator` is 1 − E‖x − x̂‖² / (E‖x‖² − ‖E x‖²)
  over the whole eval set: the same per-dimension dataset mean, summed over d, as ours. It forms
  the variance as a difference of two large numbers (in float64 on CPU); we merge per-batch
  centred sums (Chan et al.), which stays exact when ‖mean‖ ≫ std (residual streams with a
  large constant direction). Its `explained_variance_legacy` (1 − ‖r_t‖²/‖x_t − batch mean‖²
  averaged over tokens) is a mean of per-token ratios that explodes for tokens near the mean and
  depends on the eval batch size: we do not offer it. Before 6.45.1 SAELens measured explained
  variance against zero instead of the mean.
- mse: same convention (Σ over d, mean over tokens) since 6.45.2; earlier it scaled with
  1/tokens per batch. mse_per_element is F.mse_loss's default scale, d_in times smaller.
- cossim, l2_ratio, l0, kl (KL(clean ‖ other), summed over V, mean over tokens), kl_div_score
  and ce_loss_score: same formulas. SAELens' cossim has no zero-norm guard (0/0 → NaN); ours
  clamps the norms at 1e-8. SAELens' l2_ratio replaces ‖x‖ < 1e-4 by 1; we clamp at 1e-8 and
  leave the caller to filter empty tokens.
- relative_reconstruction_bias: SAELens takes the ratio per eval batch, then averages the
  ratios over batches, so the value depends on batch size; we accumulate both means over the
  whole set and take one ratio.
- dead latents: SAELens training calls a latent dead after 1,000 steps without firing; its evals
  report density = fires / tokens. Ours take firing counts over the caller's window of tokens.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

_EPS = 1e-8  # norm clamp for cosine and l2_ratio, far below real activation norms (≳ 1e-2)


def _float(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))  # bf16 keeps 3 digits: too few


def fvu(x_BD: Tensor, x_hat_BD: Tensor) -> Tensor:
    """Fraction of variance unexplained against the per-dimension mean of this batch."""
    x_BD, x_hat_BD = _float(x_BD), _float(x_hat_BD)
    residual = (x_BD - x_hat_BD).pow(2).sum()
    total = (x_BD - x_BD.mean(dim=0)).pow(2).sum()
    return residual / total  # inf/nan when all tokens are identical (no variance to explain)


def explained_variance(x_BD: Tensor, x_hat_BD: Tensor) -> Tensor:
    """1 − FVU."""
    return 1 - fvu(x_BD, x_hat_BD)


def mse(x_BD: Tensor, x_hat_BD: Tensor) -> Tensor:
    """Squared error summed over d_in, averaged over tokens (the usual SAE training loss)."""
    return (_float(x_BD) - _float(x_hat_BD)).pow(2).sum(dim=-1).mean()


def mse_per_element(x_BD: Tensor, x_hat_BD: Tensor) -> Tensor:
    """Squared error averaged over tokens and dimensions (= mse / d_in)."""
    return (_float(x_BD) - _float(x_hat_BD)).pow(2).mean()


def cosine_similarity(x_BD: Tensor, x_hat_BD: Tensor) -> Tensor:
    """Mean over tokens of cos(x_t, x̂_t)."""
    return F.cosine_similarity(_float(x_BD), _float(x_hat_BD), dim=-1, eps=_EPS).mean()


def l2_ratio(x_BD: Tensor, x_hat_BD: Tensor) -> Tensor:
    """Mean over tokens of ‖x̂_t‖ / ‖x_t‖ (shrinkage: L1-penalized SAEs sit below 1)."""
    norm_x_B = _float(x_BD).norm(dim=-1).clamp_min(_EPS)
    return (_float(x_hat_BD).norm(dim=-1) / norm_x_B).mean()


def relative_reconstruction_bias(x_BD: Tensor, x_hat_BD: Tensor) -> Tensor:
    """mean‖x̂‖² / mean⟨x, x̂⟩: 1 when x̂ is unbiased in scale, < 1 under shrinkage."""
    x_BD, x_hat_BD = _float(x_BD), _float(x_hat_BD)
    return x_hat_BD.pow(2).sum(dim=-1).mean() / (x_BD * x_hat_BD).sum(dim=-1).mean()


def l0_per_token(z_BS: Tensor) -> Tensor:
    """Number of active latents per token (float, shape B)."""
    return (z_BS != 0).sum(dim=-1).float()


class L0Stats(NamedTuple):
    """Active latents per token over a set of tokens."""

    mean: float
    """Mean L0."""
    min: float
    """Smallest L0 of any token."""
    max: float
    """Largest L0 of any token."""


def l0_stats(z_BS: Tensor) -> L0Stats:
    """Mean/min/max L0 per token."""
    l0_B = l0_per_token(z_BS)
    return L0Stats(l0_B.double().mean().item(), l0_B.min().item(), l0_B.max().item())


def firing_counts(z_BS: Tensor) -> Tensor:
    """Tokens on which each latent fired (int64, shape S)."""
    return (z_BS != 0).sum(dim=0)


def dead_fraction(counts_S: Tensor) -> Tensor:
    """Fraction of latents that never fired in the window the counts cover."""
    return (counts_S == 0).float().mean()


def dense_fraction(counts_S: Tensor, n_tokens: int, threshold: float = 0.1) -> Tensor:
    """Fraction of latents firing on more than `threshold` of the tokens (SAEBench: 10%)."""
    return (counts_S.double() / n_tokens > threshold).float().mean()


def log10_density(counts_S: Tensor, n_tokens: int, eps: float = 1e-10) -> Tensor:
    """log10(firing frequency + eps); dead latents land at log10(eps) = −10 (SAELens' floor)."""
    return torch.log10(counts_S.double() / n_tokens + eps)


class DensityHistogram(NamedTuple):
    """Histogram of per-latent log10 firing density (the SAELens feature-density plot)."""

    counts_N: Tensor
    """Latents per bin."""
    edges_N1: Tensor
    """Bin edges in log10 density (N + 1 values)."""


def density_histogram(
    counts_S: Tensor, n_tokens: int, n_bins: int = 50, lo: float = -10.0
) -> DensityHistogram:
    """Bin log10 densities over [lo, 0]; dead latents fall into the first bin."""
    density_S = log10_density(counts_S, n_tokens).clamp(lo, 0.0)
    edges_N1 = torch.linspace(lo, 0.0, n_bins + 1, dtype=torch.float64)
    return DensityHistogram(torch.histc(density_S, bins=n_bins, min=lo, max=0.0), edges_N1)


def kl_divergence_per_token(logits_clean_BV: Tensor, logits_other_BV: Tensor) -> Tensor:
    """KL(p_clean ‖ p_other) per token, summed over the last (vocabulary) dimension."""
    logp = F.log_softmax(_float(logits_clean_BV), dim=-1)
    logq = F.log_softmax(_float(logits_other_BV), dim=-1)
    return (logp.exp() * (logp - logq)).sum(dim=-1)


def kl_divergence(logits_clean_BV: Tensor, logits_other_BV: Tensor) -> Tensor:
    """Mean over tokens of KL(p_clean ‖ p_other); any leading shape (B, or B and T)."""
    return kl_divergence_per_token(logits_clean_BV, logits_other_BV).mean()


def next_token_loss(logits_BTV: Tensor, tokens_BT: Tensor) -> Tensor:
    """Cross-entropy of predicting token t+1 from position t (shape B, T − 1)."""
    logp_BTV = F.log_softmax(_float(logits_BTV[:, :-1]), dim=-1)
    return -logp_BTV.gather(-1, tokens_BT[:, 1:, None]).squeeze(-1)


def ce_loss_score(ce_clean: Tensor, ce_sae: Tensor, ce_ablation: Tensor) -> Tensor:
    """Fraction of the CE gap closed: 1 = SAE as good as the clean model, 0 = as bad as ablation."""
    return (ce_ablation - ce_sae) / (ce_ablation - ce_clean)


def kl_div_score(kl_sae: Tensor, kl_ablation: Tensor) -> Tensor:
    """(KL_ablation − KL_sae) / KL_ablation: the KL analogue of ce_loss_score."""
    return (kl_ablation - kl_sae) / kl_ablation


class ReconstructionMetrics(NamedTuple):
    """Reconstruction quality over a whole eval set."""

    fvu: float
    """Fraction of variance unexplained (dataset per-dimension mean)."""
    explained_variance: float
    """1 − fvu."""
    mse: float
    """Squared error summed over d_in, mean over tokens."""
    mse_per_element: float
    """mse / d_in (F.mse_loss's default scale)."""
    cosine: float
    """Mean per-token cosine of x and x̂."""
    l2_ratio: float
    """Mean per-token ‖x̂‖/‖x‖."""
    relative_reconstruction_bias: float
    """mean‖x̂‖² / mean⟨x, x̂⟩ over all tokens."""
    n_tokens: int
    """Tokens accumulated."""


class ReconstructionStats:
    """Streams batches; `compute()` equals the one-shot metrics on the concatenated data.

    Keeps float64 per-dimension mean and centred sum of squares, merged per batch (Chan,
    Golub, LeVeque 1979), so FVU uses the dataset mean, not each batch's.
    """

    def __init__(self, d_in: int) -> None:
        self.n = 0
        self.mean_D = torch.zeros(d_in, dtype=torch.float64)
        self.m2_D = torch.zeros(d_in, dtype=torch.float64)
        self.sums = torch.zeros(5, dtype=torch.float64)
        """Σ‖r‖², Σcos, Σl2 ratio, Σ‖x̂‖², Σ⟨x, x̂⟩ over tokens."""

    @torch.no_grad()
    def update(self, x_BD: Tensor, x_hat_BD: Tensor) -> None:
        # Reduce on the batch's device; only D + 5 numbers travel to the CPU accumulators.
        x_BD, x_hat_BD = x_BD.detach().double(), x_hat_BD.detach().double()
        n_b = x_BD.shape[0]
        if n_b == 0:
            return
        mean_b_D = x_BD.mean(dim=0)
        m2_b_D = (x_BD - mean_b_D).pow(2).sum(dim=0).cpu()
        delta_D = mean_b_D.cpu() - self.mean_D
        n_new = self.n + n_b
        self.m2_D += m2_b_D + delta_D.pow(2) * self.n * n_b / n_new
        self.mean_D += delta_D * n_b / n_new
        self.n = n_new
        self.sums += torch.stack(
            [
                (x_BD - x_hat_BD).pow(2).sum(),
                F.cosine_similarity(x_BD, x_hat_BD, dim=-1, eps=_EPS).sum(),
                (x_hat_BD.norm(dim=-1) / x_BD.norm(dim=-1).clamp_min(_EPS)).sum(),
                x_hat_BD.pow(2).sum(),
                (x_BD * x_hat_BD).sum(),
            ]
        ).cpu()

    def compute(self) -> ReconstructionMetrics:
        sq_err, cos, ratio, hat_sq, dot = self.sums.tolist()
        n = max(self.n, 1)
        fvu_ = sq_err / self.m2_D.sum().item() if self.m2_D.sum() > 0 else float("nan")
        return ReconstructionMetrics(
            fvu=fvu_,
            explained_variance=1 - fvu_,
            mse=sq_err / n,
            mse_per_element=sq_err / n / self.mean_D.numel(),
            cosine=cos / n,
            l2_ratio=ratio / n,
            relative_reconstruction_bias=hat_sq / dot if dot != 0 else float("nan"),
            n_tokens=self.n,
        )


class SparsityMetrics(NamedTuple):
    """Code sparsity over a whole eval set."""

    l0: L0Stats
    """Active latents per token: mean, min, max."""
    dead_fraction: float
    """Latents that never fired."""
    dense_fraction: float
    """Latents firing on more than 10% of the tokens."""
    n_tokens: int
    """Tokens accumulated."""


class SparsityStats:
    """Streams code batches; keeps firing counts (for dead/dense/histogram) and L0 extremes."""

    def __init__(self, d_sae: int) -> None:
        self.n = 0
        self.counts_S = torch.zeros(d_sae, dtype=torch.int64)
        self.l0_sum = 0.0
        self.l0_min = float("inf")
        self.l0_max = float("-inf")

    @torch.no_grad()
    def update(self, z_BS: Tensor) -> None:
        if z_BS.shape[0] == 0:
            return
        l0_B = l0_per_token(z_BS.detach())
        self.counts_S += firing_counts(z_BS.detach()).cpu()
        self.l0_sum += l0_B.sum().item()
        self.l0_min = min(self.l0_min, l0_B.min().item())
        self.l0_max = max(self.l0_max, l0_B.max().item())
        self.n += z_BS.shape[0]

    def compute(self, dense_threshold: float = 0.1) -> SparsityMetrics:
        return SparsityMetrics(
            l0=L0Stats(self.l0_sum / max(self.n, 1), self.l0_min, self.l0_max),
            dead_fraction=dead_fraction(self.counts_S).item(),
            dense_fraction=dense_fraction(self.counts_S, max(self.n, 1), dense_threshold).item(),
            n_tokens=self.n,
        )

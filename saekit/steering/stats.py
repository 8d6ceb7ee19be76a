"""Uncertainty for steering comparisons: bootstrap intervals and the concept-vs-ΔCE Pareto area.

Every method at a site is measured on the same evaluation prompts, so its results form a matrix
X_m[f, p] (its features × the shared prompts). A bootstrap resample draws the prompts once, with
replacement, for all methods (the pairing) and each method's features independently:

    mean_m* = mean of X_m[f*, p*]          d_AB* = mean_A* − mean_B*

The 95% interval is the 2.5 and 97.5 percentiles of the resampled statistic. Because the prompts
are shared, a prompt that is easy for every method moves mean_A* and mean_B* together and
cancels in d_AB*: the difference is paired over prompts while still counting the sampling of
features. With one column (a per-feature value such as the Pareto area) only features are
resampled.

Pareto area: a direction's points (ΔCE_κ, c_κ) over the KL budgets, with (0, 0) for no
steering, define the frontier F(x) = max{c_κ : ΔCE_κ ≤ x} (the best concept gain reached at
collateral damage ≤ x on ordinary text); its area is (1/X)∫₀ˣ F(x) dx ∈ [0, 1] up to a ΔCE
range X common to the methods compared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from saekit.errors import SaekitError


@dataclass(frozen=True)
class Interval:
    """A statistic with its 95% bootstrap interval."""

    mean: float
    """The statistic on the data as observed."""
    lo: float
    """2.5th percentile of the bootstrap distribution."""
    hi: float
    """97.5th percentile of the bootstrap distribution."""

    def record(self) -> dict[str, float]:
        return {"mean": self.mean, "lo": self.lo, "hi": self.hi}


def _counts(n: int, n_boot: int, gen: torch.Generator) -> Tensor:
    """How often each of n items is drawn in each resample, [n_boot, n]."""
    idx_BN = torch.randint(n, (n_boot, n), generator=gen)
    return torch.zeros(n_boot, n, dtype=torch.float64).scatter_add_(
        1, idx_BN, torch.ones_like(idx_BN, dtype=torch.float64)
    )


def bootstrap_means(
    xs: Sequence[Tensor], n_boot: int = 2000, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Observed means [M] and resampled means [M, n_boot] of matrices X_m [F_m, P].

    The prompt draw is shared by all matrices (paired); features are drawn per matrix.
    """
    if not xs:
        raise SaekitError("Nothing to bootstrap: give at least one matrix of values.")
    P = xs[0].shape[1]
    if any(x.ndim != 2 or x.shape[1] != P or x.shape[0] < 1 for x in xs):
        raise SaekitError("Bootstrap matrices must be [features ≥ 1, prompts] with equal prompts.")
    gen = torch.Generator().manual_seed(seed)
    prompts_BP = _counts(P, n_boot, gen)
    observed, resampled = [], []
    for x in xs:
        x_FP = x.double()
        feats_BF = _counts(x_FP.shape[0], n_boot, gen)
        total_B = torch.einsum("bf,fp,bp->b", feats_BF, x_FP, prompts_BP)
        resampled.append(total_B / (x_FP.shape[0] * P))
        observed.append(x_FP.mean())
    return torch.stack(observed), torch.stack(resampled)


def _interval(observed: Tensor, resampled_B: Tensor) -> Interval:
    lo, hi = torch.quantile(resampled_B, torch.tensor([0.025, 0.975], dtype=torch.float64))
    return Interval(float(observed), float(lo), float(hi))


def mean_interval(x_FP: Tensor, n_boot: int = 2000, seed: int = 0) -> Interval:
    """Mean of X [features, prompts] with its 95% interval over features and prompts."""
    observed, resampled = bootstrap_means([x_FP], n_boot, seed)
    return _interval(observed[0], resampled[0])


def paired_difference(a_FP: Tensor, b_GP: Tensor, n_boot: int = 2000, seed: int = 0) -> Interval:
    """mean(A) − mean(B) over the same prompts, with its 95% interval (paired over prompts)."""
    observed, resampled = bootstrap_means([a_FP, b_GP], n_boot, seed)
    return _interval(observed[0] - observed[1], resampled[0] - resampled[1])


def pareto_area(delta_ce: Sequence[float], concept: Sequence[float], x_max: float) -> float:
    """(1/X)∫₀ˣ max{c_i : ΔCE_i ≤ x} dx with the origin (0, 0) included; ΔCE < 0 counts as 0."""
    if not x_max > 0:
        raise SaekitError(f"The ΔCE range of a Pareto area must be positive, got {x_max}.")
    if len(delta_ce) != len(concept):
        raise SaekitError("Give one concept gain per ΔCE point.")
    points = sorted((max(0.0, float(x)), float(c)) for x, c in zip(delta_ce, concept))
    area, best, x_prev = 0.0, 0.0, 0.0
    for x, c in points:
        if x >= x_max:
            break
        area += best * (x - x_prev)
        best, x_prev = max(best, c), x
    area += best * (x_max - x_prev)
    return area / x_max

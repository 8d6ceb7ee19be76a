"""Confidence intervals over targets: percentile bootstrap of a mean and of a paired difference.

The unit of replication is the target (a category or blend): its precision, AUC or held-out
loss is one number per method. `bootstrap_ci` resamples targets with replacement and takes the
(α/2, 1 − α/2) percentiles of the resampled means (Efron's percentile interval, what
`scipy.stats.bootstrap(method="percentile")` computes). `paired_ci` does the same for the
per-target difference of two methods, so the target-to-target spread that both methods share
cancels: methods can differ clearly even where their own intervals overlap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def bootstrap_ci(
    values: Sequence[float], level: float = 0.95, n_boot: int = 10_000, seed: int = 0
) -> dict[str, float]:
    """Mean of `values` (NaNs dropped) and its percentile-bootstrap interval [lo, hi]."""
    x = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if x.size == 0:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}
    means = x[np.random.default_rng(seed).integers(0, x.size, (n_boot, x.size))].mean(axis=1)
    alpha = 1.0 - level
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return {"mean": float(x.mean()), "lo": float(lo), "hi": float(hi), "n": int(x.size)}


def paired_ci(
    a: Sequence[float], b: Sequence[float], level: float = 0.95, n_boot: int = 10_000, seed: int = 0
) -> dict[str, float]:
    """Mean of a − b over targets where both are defined, with its bootstrap interval and the
    share of targets where a > b."""
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths; got {len(a)} and {len(b)}")
    diffs = [x - y for x, y in zip(a, b, strict=True) if not (math.isnan(x) or math.isnan(y))]
    out = bootstrap_ci(diffs, level, n_boot, seed)
    out["wins"] = sum(d > 0 for d in diffs) / len(diffs) if diffs else math.nan
    return out


def fmt_ci(ci: dict[str, float], digits: int = 3) -> str:
    """ "0.812 [0.760, 0.858]"."""
    return f"{ci['mean']:.{digits}f} [{ci['lo']:.{digits}f}, {ci['hi']:.{digits}f}]"

"""Summary statistics of activation rows, printed by `saekit cache` and the main job."""

from __future__ import annotations

from torch import Tensor

OUTLIER_MULTIPLE = 10.0
"""A row whose norm exceeds this multiple of the median norm is an outlier (the rule of the
stream's `max_norm_multiple` filter at 10)."""


def activation_stats(x_ND: Tensor) -> dict[str, float]:
    """Norm and value statistics of [rows, d] activations, and the outliers: their fraction of
    the rows and of the total variance (which FVU divides by)."""
    x = x_ND.float()
    norms = x.norm(dim=1)
    outlier_N = norms > OUTLIER_MULTIPLE * norms.median()
    var_N = (x - x.mean(0)).pow(2).sum(dim=1)
    return {
        "outliers": float(outlier_N.float().mean()),
        "outlier_var": float(var_N[outlier_N].sum() / var_N.sum().clamp_min(1e-30)),
        "rows": float(x.shape[0]),
        "d": float(x.shape[1]),
        "mean_norm": float(norms.mean()),
        "median_norm": float(norms.median()),
        "max_norm": float(norms.max()),
        "mean": float(x.mean()),
        "std": float(x.std()),
        "mean_abs_per_dim_mean": float(x.mean(0).abs().mean()),
    }


def format_stats(stats: dict[str, dict[str, float]]) -> str:
    cols = ["rows", "d", "mean_norm", "median_norm", "max_norm", "mean", "std", "outliers"]
    cols.append("outlier_var")
    lines = [f"{'hook':34s} " + " ".join(f"{c:>11s}" for c in cols)]
    for hook, s in stats.items():
        lines.append(f"{hook:34s} " + " ".join(f"{s[c]:11.4g}" for c in cols))
    return "\n".join(lines)

"""Summary statistics of activation rows, printed by `saekit cache` and the main job."""

from __future__ import annotations

from torch import Tensor


def activation_stats(x_ND: Tensor) -> dict[str, float]:
    """Norm and value statistics of [rows, d] activations."""
    x = x_ND.float()
    norms = x.norm(dim=1)
    return {
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
    cols = ["rows", "d", "mean_norm", "median_norm", "max_norm", "mean", "std"]
    lines = [f"{'hook':34s} " + " ".join(f"{c:>11s}" for c in cols)]
    for hook, s in stats.items():
        lines.append(f"{hook:34s} " + " ".join(f"{s[c]:11.4g}" for c in cols))
    return "\n".join(lines)

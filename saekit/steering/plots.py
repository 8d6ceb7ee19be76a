"""Steering figures: score and concept gain against the KL budget, one line per method."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_score_vs_kl(rows: list[dict[str, Any]], title: str, path: Path) -> Path:
    """Mean score S and concept gain c (evaluation prompts) against κ for each method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    methods = sorted({r["method"] for r in rows})
    for method in methods:
        pts = [r for r in rows if r["method"] == method and r["kappa"] != "selected"]
        for ax, metric in zip(axes, ("score", "concept_gain")):
            xs = [r["kappa"] for r in pts if r[metric] is not None]
            ys = [r[metric] for r in pts if r[metric] is not None]
            ax.plot(xs, ys, marker="o", label=method)
    for ax, label in zip(axes, ("steering score S", "concept gain c")):
        ax.set_xscale("log")
        ax.set_xlabel("next-token KL budget κ (nats)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

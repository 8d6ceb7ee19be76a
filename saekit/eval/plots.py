"""PNG plots of a run: training curves and latent density histograms (matplotlib, Agg)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_history(history: Path, out: Path) -> Path:
    """Loss, FVU and L0 curves of every dictionary from history.jsonl."""
    rows = []
    for line in history.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # blank, or the half-written last line of a run still training
    series: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        for key, value in row.items():
            if "/" in key:
                sae, metric = key.split("/", 1)
                series[metric][sae].append((row["step"], value))
    panels = [m for m in ("loss/total", "fvu", "l0", "dead_fraction") if m in series]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(4.2 * max(len(panels), 1), 3.4))
    axes = [axes] if len(panels) <= 1 else list(axes)
    for ax, metric in zip(axes, panels):
        for sae, points in series[metric].items():
            steps, values = zip(*points)
            ax.plot(steps, values, label=sae)
        ax.set_title(metric)
        ax.set_xlabel("step")
        if metric in ("loss/total", "fvu"):
            ax.set_yscale("log")
    if panels:
        axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_density(metrics: dict[str, Any], out: Path) -> Path:
    """Histogram of log10 firing density of the latents (dead latents at the left edge)."""
    hist = metrics["density_histogram"]
    edges, counts = hist["edges"], hist["counts"]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.bar(edges[:-1], counts, width=[b - a for a, b in zip(edges[:-1], edges[1:])], align="edge")
    ax.set_xlabel("log10 firing density")
    ax.set_ylabel("latents")
    ax.set_title(
        f"{metrics['method']} d_sae={metrics['d_sae']} · dead {metrics['dead_fraction']:.1%}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out

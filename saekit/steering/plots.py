"""Steering figures: score and concept gain against the KL budget, and the study's concept gain
against collateral damage (ΔCE) with interval bands; one line per method."""

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


def plot_concept_vs_ce(study: dict[str, Any], path: Path) -> Path:
    """Per site: mean concept gain c against mean ΔCE_ref at each κ, one line per method, with
    the 95% interval of c (over features and prompts) as a band; (0, 0) is no steering."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(study))
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 4), squeeze=False)
    for ax, (hook, site) in zip(axes[0], study.items()):
        for method, m in site["methods"].items():
            pts = [
                b
                for b in m["budgets"]
                if b.get("concept_gain") is not None and b.get("delta_ce_ref") is not None
            ]
            if not pts:
                continue
            xs = [0.0] + [b["delta_ce_ref"] for b in pts]
            c = [b["concept_gain"] for b in pts]
            (line,) = ax.plot(xs, [0.0] + [x["mean"] for x in c], marker="o", label=method)
            lo, hi = [0.0] + [x["lo"] for x in c], [0.0] + [x["hi"] for x in c]
            ax.fill_between(xs, lo, hi, alpha=0.2, color=line.get_color())
        ax.set_xlabel("ΔCE on held-out text (nats)")
        ax.set_ylabel("concept gain c (95% interval)")
        ax.set_title(hook, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

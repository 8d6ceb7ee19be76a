"""MP-SAE vs one-shot SAEs on the hierarchical tree G2 (docs/evaluation.md), levels 0..8.

The claim under test (the MP-SAE paper's abstract and experiments; docs/methods/mp.md): as
sibling correlation grows, one-shot SAEs (TopK, BatchTopK) orthogonalize siblings, Matryoshka
keeps parents but distorts sibling correlations, and MP keeps both. Per level (true cosine
0.1·level within {parents + leaves} and within each sibling triple) and method, each
dictionary is trained by the real Trainer (`bench.synthetic.train_on`) and scored by
`bench.synthetic.score` (MMCS, Gram distortion, FVU, L0, sibling/implication violations),
plus:

- sibling cosine: mean cosine between the atoms matched to sibling features (true: 0.1·level);
- absorption: `absorption` of each parent given its children, averaged over the parents;
- MP only: adaptive inference up to 4k steps with a 5% relative-residual stop (L0 mean/min/max).

The SAE init seed is the data seed + 1: both draw randn first, and with equal seeds a
FlatSuperposition's features are exactly the initial atoms. Threads = 1 during the study: at
d_in 20 a thread barrier costs more than the work it splits.

    python -m saekit.bench.mp_synthetic [--plot runs/bench-mp-synthetic.png] [--steps 1000]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from saekit.activations.synthetic import HierarchicalTree
from saekit.bench.synthetic import sae_config, score, train_on
from saekit.dictionaries import Dictionary
from saekit.dictionaries.mp import MatchingPursuitSAE
from saekit.eval.synthetic_metrics import absorption, match_features

LEVELS = tuple(range(9))
METHODS = ("mp", "topk", "batchtopk", "matryoshka")
COLUMNS = {
    "mmcs": "MMCS",
    "gram_distortion": "gram dist",
    "sibling_cosine": "sib cos",
    "absorption_rate": "absorb",
    "sibling_violation": "sib viol",
    "implication_violation": "impl viol",
    "fvu": "FVU",
    "l0": "L0",
}


@torch.no_grad()
def tree_metrics(
    data: HierarchicalTree, sae: Dictionary, n_tokens: int = 16384
) -> dict[str, float]:
    """Learned sibling cosine and mean parent absorption on fresh tokens."""
    match = match_features(data.features_FD, sae.W_dec.detach())
    atoms_SD = sae.W_dec.detach() / sae.W_dec.detach().norm(dim=1, keepdim=True)
    cosines = []
    for p in data.parents:
        kids = [int(match.atom_F[c]) for c in data.children_of(p)]
        cos_CC = atoms_SD[kids] @ atoms_SD[kids].T
        cosines += cos_CC[~torch.eye(len(kids), dtype=torch.bool)].tolist()
    sample = data.sample(n_tokens, generator=torch.Generator().manual_seed(999))
    z_BS = sae.encode(sample.x_BD)
    rates = [
        absorption(z_BS, sample.codes_BF, p, data.children_of(p), int(match.atom_F[p])).rate
        for p in data.parents
    ]
    return {
        "sibling_cosine": sum(cosines) / len(cosines),
        "absorption_rate": sum(rates) / len(rates),
    }


@torch.no_grad()
def adaptive_metrics(data: HierarchicalTree, sae: MatchingPursuitSAE) -> dict[str, float]:
    x_BD = data.sample(16384, generator=torch.Generator().manual_seed(999)).x_BD
    out = sae.encode_adaptive(x_BD, max_steps=4 * sae.k, residual_threshold=0.05)
    x_hat_BD = sae.decode(out.z_BS)
    fvu = (x_BD - x_hat_BD).pow(2).sum() / (x_BD - x_BD.mean(0)).pow(2).sum()
    return {f"l0_{k}": v for k, v in out.l0().items()} | {"fvu": float(fvu)}


def run(
    levels: tuple[int, ...] = LEVELS,
    methods: tuple[str, ...] = METHODS,
    steps: int = 1000,
    batch_size: int = 512,
    seed: int = 0,
    plot: str | None = "runs/bench-mp-synthetic.png",
) -> dict[str, Any]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    results: dict[str, dict[str, dict[str, float]]] = {}
    adaptive: dict[str, dict[str, float]] = {}
    try:
        for level in levels:
            data = HierarchicalTree(level=level, seed=seed)
            results[str(level)] = {}
            for method in methods:
                cfg = sae_config(method, data, seed + 1)
                sae = train_on(data, cfg, steps, batch_size)
                m = score(data, sae) | tree_metrics(data, sae)
                results[str(level)][method] = m
                if isinstance(sae, MatchingPursuitSAE):
                    adaptive[str(level)] = adaptive_metrics(data, sae)
    finally:
        torch.set_num_threads(threads)
    result = {
        "bench": "mp_synthetic",
        "generator": "HierarchicalTree (20 features, d_in 20, E[L0] 1.36), true cosine 0.1·level",
        "steps": steps,
        "batch_size": batch_size,
        "seed": seed,
        "results": results,
        "mp_adaptive": adaptive,
    }
    if plot:
        result["plot"] = str(save_plot(result, Path(plot)))
    return result


def table(result: dict[str, Any]) -> str:
    lines = [
        f"bench mp_synthetic — tree, {result['steps']} steps × {result['batch_size']} tokens, "
        "true sibling cosine = 0.1·level",
        f"{'level':>5s} {'method':11s} " + " ".join(f"{c:>9s}" for c in COLUMNS.values()),
    ]
    for level, by_method in result["results"].items():
        for method, m in by_method.items():
            cells = [f"{m[c]:9.3f}" if c in m else f"{'-':>9s}" for c in COLUMNS]
            lines.append(f"{level:>5s} {method:11s} " + " ".join(cells))
    if result["mp_adaptive"]:
        lines.append(
            "MP adaptive (≤ 4k steps, stop at ‖r‖ ≤ 0.05‖x − b_dec‖): L0 mean/min/max, FVU"
        )
        for level, a in result["mp_adaptive"].items():
            lines.append(
                f"{level:>5s} {a['l0_mean']:6.2f} {a['l0_min']:4.0f} {a['l0_max']:4.0f} "
                f"{a['fvu']:7.4f}"
            )
    return "\n".join(lines)


def save_plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = ("sibling_cosine", "gram_distortion", "mmcs", "absorption_rate")
    levels = [int(lv) for lv in result["results"]]
    methods = list(next(iter(result["results"].values())))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    for ax, metric in zip(axes, panels):
        for method in methods:
            ys = [result["results"][str(lv)][method][metric] for lv in levels]
            ax.plot(levels, ys, marker="o", label=method)
        if metric == "sibling_cosine":
            ax.plot(levels, [0.1 * lv for lv in levels], "k--", label="true")
        ax.set_xlabel("level (true cosine 0.1·level)")
        ax.set_title(COLUMNS[metric] if metric != "mmcs" else "MMCS")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"MP-SAE vs one-shot SAEs on the G2 tree ({result['steps']} steps)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plot", default="runs/bench-mp-synthetic.png", help="PNG output path")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--levels", type=int, nargs="+", default=list(LEVELS))
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    result = run(tuple(args.levels), METHODS, args.steps, args.batch_size, plot=args.plot)
    print(json.dumps(result) if args.json else table(result))


if __name__ == "__main__":
    main()

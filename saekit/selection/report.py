"""`saekit select RUN_DIR --evaluate`: retrieval quality + downstream check → selection.json.

selection.json (written atomically to OUT_DIR, default RUN_DIR/selection/):
    {"sae", "hook", "config", "finetune", "retrieval": {ratio, pool_size, categories,
     summary: {method: {precision|recall|auc: {mean, std}}}, per_category},
     "downstream": {"categories": {cat: {method: {response_loss, content_loss, ...}}},
                    "mean": {method: {response_loss, content_loss}}, "best_baseline"},
     "plots": {"retrieval", "downstream"}, "seconds": {...}}
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from saekit.errors import SaekitError  # noqa: E402
from saekit.rundir import write_json  # noqa: E402
from saekit.selection.config import DataFields, SelectConfig  # noqa: E402
from saekit.selection.data import Sample, load_samples, offline_categories, split_category  # noqa: E402
from saekit.selection.evaluate import mean_std, retrieval_eval, retrieval_table  # noqa: E402
from saekit.selection.finetune import FinetuneConfig, compare_subsets  # noqa: E402
from saekit.selection.scoring import build_probes, embed_sets, score_methods  # noqa: E402
from saekit.selection.select import Selector  # noqa: E402
from saekit.selection.sparse import n_selected, rank  # noqa: E402


def labelled_splits(
    by_cat: dict[str, list[Sample]],
    n_categories: int,
    per_category: int,
    n_target: int,
    n_heldout: int,
    seed: int,
) -> tuple[list[Sample], list[Sample], dict[str, list[Sample]]]:
    """(pool, target, held-out per category) over `n_categories` categories drawn with `seed`."""
    need = n_target + n_heldout + per_category
    eligible = sorted(c for c, s in by_cat.items() if len(s) >= need)
    if len(eligible) < n_categories:
        raise SaekitError(
            f"Only {len(eligible)} categories have ≥ {need} samples; lower --categories "
            f"(now {n_categories}) or --per-category (now {per_category})."
        )
    chosen = sorted(random.Random(seed).sample(eligible, n_categories))
    pool: list[Sample] = []
    target: list[Sample] = []
    heldout: dict[str, list[Sample]] = {}
    for c in chosen:
        parts = split_category(by_cat[c], n_target, n_heldout, seed)
        pool += parts["pool"][:per_category]
        target += parts["target"]
        heldout[c] = parts["heldout"]
    pool = [replace(s, source_index=i) for i, s in enumerate(pool)]
    return pool, target, heldout


def _plot_retrieval(result: dict[str, Any], path: Path) -> Path:
    summary = result["summary"]
    methods, metrics = list(summary), ("precision", "recall", "auc")
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(methods)
    for j, m in enumerate(methods):
        xs = [i + j * width for i in range(len(metrics))]
        ax.bar(
            xs,
            [summary[m][k]["mean"] for k in metrics],
            width,
            yerr=[summary[m][k]["std"] for k in metrics],
            label=m,
            capsize=2,
        )
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(metrics))], [f"{k}" for k in metrics])
    ax.set_ylim(0, 1.05)
    ax.set_title(
        f"retrieval over {len(result['categories'])} held-out categories "
        f"(ratio {result['ratio']:.3f})"
    )
    ax.legend(fontsize=8, ncol=len(methods), loc="upper center", bbox_to_anchor=(0.5, -0.08))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_downstream(down: dict[str, Any], path: Path) -> Path:
    cats = list(down["categories"])
    methods = list(next(iter(down["categories"].values())))
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(methods)
    for j, m in enumerate(methods):
        xs = [i + j * width for i in range(len(cats))]
        ax.bar(xs, [down["categories"][c][m]["response_loss"] for c in cats], width, label=m)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cats))], cats, fontsize=8)
    ax.set_ylabel("held-out response loss (nats/token)")
    ax.set_title("fine-tuned on each selected subset (lower is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def downstream_table(down: dict[str, Any]) -> str:
    methods = list(down["mean"])
    lines = [f"{'category':28s} " + " ".join(f"{m:>10s}" for m in methods)]
    for c, row in down["categories"].items():
        lines.append(
            f"{c[:28]:28s} " + " ".join(f"{row[m]['response_loss']:10.3f}" for m in methods)
        )
    lines.append(
        f"{'mean':28s} "
        + " ".join(f"{down['mean'][m]['response_loss']['mean']:10.3f}" for m in methods)
    )
    return "\n".join(lines)


def run_selection_eval(
    selector: Selector,
    out_dir: str | Path,
    cfg: SelectConfig | None = None,
    ft_cfg: FinetuneConfig | None = None,
    pool_spec: str = "offline",
    fields: DataFields | None = None,
    n_categories: int = 24,
    per_category: int = 30,
    n_target: int = 5,
    n_heldout: int = 20,
    n_downstream: int = 3,
    ratio: float | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Retrieval metrics of every method over `n_categories` held-out categories, then the
    downstream check on `n_downstream` of them; writes OUT_DIR/selection.json and PNGs."""
    cfg, ft_cfg = cfg or SelectConfig(), ft_cfg or FinetuneConfig()
    t0 = time.perf_counter()
    if pool_spec == "offline":
        by_cat = offline_categories(n_target + n_heldout + per_category)
    else:
        by_cat = {}
        for s in load_samples(pool_spec, fields, "pool"):
            by_cat.setdefault(s.category, []).append(s)
        if set(by_cat) == {""}:
            raise SaekitError(f"{pool_spec} has no category labels; set --category-field.")
    pool, target, heldout = labelled_splits(
        by_cat, n_categories, per_category, n_target, n_heldout, cfg.seed
    )
    probes = build_probes(selector.model, selector.sae, selector.hook, cfg, baselines=True)
    emb = embed_sets(selector.model, probes, pool, target, cfg, True, progress)
    t_embed = time.perf_counter() - t0
    retrieval = retrieval_eval(emb, pool, target, cfg, ratio)
    if progress:
        print(retrieval_table(retrieval))
    candidates = [m for m in retrieval["summary"] if m not in ("mona", "random")]
    best = max(candidates, key=lambda m: retrieval["summary"][m]["auc"]["mean"])
    down: dict[str, Any] = {"best_baseline": best, "categories": {}}
    k = n_selected(retrieval["ratio"], len(pool))
    for c in retrieval["categories"][:n_downstream]:
        rows = [i for i, s in enumerate(target) if s.category == c]
        scores = score_methods(emb, pool, target, cfg, rows)
        subsets = {
            m: [pool[i] for i in rank(scores[m], k).tolist()] for m in ("mona", "random", best)
        }
        down["categories"][c] = compare_subsets(
            selector.model, subsets, heldout[c], ft_cfg, progress
        )
    methods = list(next(iter(down["categories"].values()))) if down["categories"] else []
    down["mean"] = {
        m: {
            key: mean_std([row[m][key] for row in down["categories"].values()])
            for key in ("response_loss", "content_loss")
        }
        for m in methods
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "sae": selector.sae_name,
        "hook": selector.hook,
        "config": asdict(cfg),
        "finetune": asdict(ft_cfg),
        "pool": pool_spec,
        "sae_fvu": probes[0].meter.fvu() if probes[0].meter is not None else None,
        "retrieval": retrieval,
        "downstream": down,
        "plots": {"retrieval": str(_plot_retrieval(retrieval, out / "selection-retrieval.png"))},
        "seconds": {"embed": t_embed, "total": time.perf_counter() - t0},
    }
    if down["categories"]:
        result["plots"]["downstream"] = str(
            _plot_downstream(down, out / "selection-downstream.png")
        )
    write_json(out / "selection.json", result)
    return result

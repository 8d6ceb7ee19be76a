"""`saekit select RUN_DIR --evaluate`: retrieval quality + downstream check → selection.json.

selection.json (written atomically to OUT_DIR, default RUN_DIR/selection/); every CI is a 95%
percentile bootstrap over targets (saekit.selection.stats):
    {"sae", "hook", "config", "finetune", "pool", "keywords", "sae_fvu",
     "retrieval": {ratio, pool_size, targets: {name: {kind, categories}},
                   summary: {method: {precision|auc: {mean, lo, hi, n}}},
                   precision_by_kind, paired_vs_mona: {method: {precision|auc: CI + wins}},
                   per_target: {target: {method: {precision, recall, auc}}}},
     "downstream": {targets, per_target: {ft: {target: {method: losses}}},
                    mean: {ft: {method: CI}}, paired_vs_mona: {ft: {method: CI + wins}}},
     "plots": {"retrieval", "downstream"}, "seconds": {embed, downstream, total}}
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from saekit.errors import SaekitError  # noqa: E402
from saekit.models.hooks import HookedModel  # noqa: E402
from saekit.rundir import write_json  # noqa: E402
from saekit.selection.config import DataFields, SelectConfig  # noqa: E402
from saekit.selection.data import Sample, load_samples, offline_categories  # noqa: E402
from saekit.selection.evaluate import retrieval_eval, retrieval_table  # noqa: E402
from saekit.selection.finetune import FinetuneConfig, compare_subsets  # noqa: E402
from saekit.selection.pool import (  # noqa: E402
    StudyPool,
    Target,
    build_study_pool,
    labelled_study_pool,
)
from saekit.selection.scoring import Embeddings, build_probes, embed_sets, score_methods  # noqa: E402
from saekit.selection.select import Selector  # noqa: E402
from saekit.selection.sparse import rank  # noqa: E402
from saekit.selection.stats import bootstrap_ci, fmt_ci, paired_ci  # noqa: E402


def _bar_ci(ax: Any, xs: list[float], cis: list[dict[str, float]], width: float, **kw: Any) -> None:
    means = [c["mean"] for c in cis]
    err = [[m - c["lo"] for m, c in zip(means, cis)], [c["hi"] - m for m, c in zip(means, cis)]]
    ax.bar(xs, means, width, yerr=err, capsize=3, **kw)


def _plot_retrieval(result: dict[str, Any], path: Path) -> Path:
    summary = result["summary"]
    methods = list(summary)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, label in zip(axes, ("precision", "auc"), ("precision@R", "ROC-AUC")):
        _bar_ci(ax, list(range(len(methods))), [summary[m][metric] for m in methods], 0.7)
        ax.set_xticks(range(len(methods)), methods, rotation=30, fontsize=8)
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{label}: mean, 95% CI over {len(result['targets'])} targets", fontsize=9)
    fig.suptitle(f"retrieval on a pool of {result['pool_size']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_downstream(down: dict[str, Any], path: Path) -> Path:
    runs = list(down["mean"])
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 4), squeeze=False)
    for ax, ft in zip(axes[0], runs):
        methods = list(down["mean"][ft])
        _bar_ci(ax, list(range(len(methods))), [down["mean"][ft][m] for m in methods], 0.7)
        ax.set_xticks(range(len(methods)), methods, rotation=30, fontsize=8)
        ax.set_ylabel("held-out response loss (nats/token)")
        ax.set_title(f"{ft}: mean, 95% CI over {len(down['targets'])} targets", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def downstream_table(down: dict[str, Any]) -> str:
    lines = []
    for ft, means in down["mean"].items():
        lines.append(
            f"downstream ({ft}): held-out response loss, mean and 95% CI over "
            f"{len(down['targets'])} targets; Δ = method − mona (paired, lower is better)"
        )
        for m, ci in means.items():
            diff = down["paired_vs_mona"][ft].get(m)
            lines.append(f"{m:10s} {fmt_ci(ci):>24s} {fmt_ci(diff) if diff else '':>26s}")
    return "\n".join(lines)


def _downstream(
    models: dict[str, HookedModel],
    emb: Embeddings,
    study: StudyPool,
    targets: list[Target],
    cfg: SelectConfig,
    ft_cfg: FinetuneConfig,
    methods: list[str],
    progress: bool,
) -> dict[str, Any]:
    """Fine-tune on each method's subset (R samples) and on the full pool, per target and per
    fine-tuning method; held-out losses with CIs over targets and paired differences."""
    per: dict[str, dict[str, Any]] = {ft: {} for ft in models}
    for t in targets:
        scores = score_methods(emb, study.pool, study.exemplars, cfg, study.exemplar_rows(t))
        k = sum(s.category in t.categories for s in study.pool)
        subsets = {m: [study.pool[i] for i in rank(scores[m], k).tolist()] for m in methods}
        subsets["full_pool"] = study.pool
        for ft, model in models.items():
            run_cfg = replace(ft_cfg, method=ft)  # type: ignore[arg-type]
            per[ft][t.name] = compare_subsets(
                model, subsets, study.target_heldout(t), run_cfg, progress
            )
    names = [t.name for t in targets]
    mean, paired = {}, {}
    for ft, rows in per.items():
        cols = {m: [rows[n][m]["response_loss"] for n in names] for m in rows[names[0]]}
        mean[ft] = {m: bootstrap_ci(v, seed=cfg.seed) for m, v in cols.items()}
        paired[ft] = {
            m: paired_ci(v, cols["mona"], seed=cfg.seed) for m, v in cols.items() if m != "mona"
        }
    return {
        "targets": names,
        "subset_size": "R: the target's relevant count; full_pool draws from the whole pool",
        "per_target": per,
        "mean": mean,
        "paired_vs_mona": paired,
    }


def _study(
    pool_spec: str,
    fields: DataFields | None,
    cfg: SelectConfig,
    n_categories: int,
    per_category: int,
    n_target: int,
    n_heldout: int,
    distractors: int,
) -> StudyPool:
    if pool_spec == "offline":
        return build_study_pool(
            offline_categories(n_target + n_heldout + 1),
            per_category=per_category,
            n_target=n_target,
            n_heldout=n_heldout,
            distractors=distractors,
            seed=cfg.seed,
        )
    by_cat: dict[str, list[Sample]] = {}
    for s in load_samples(pool_spec, fields, "pool"):
        by_cat.setdefault(s.category, []).append(s)
    if set(by_cat) == {""}:
        raise SaekitError(f"{pool_spec} has no category labels; set --category-field.")
    return labelled_study_pool(by_cat, n_categories, per_category, n_target, n_heldout, cfg.seed)


def run_selection_eval(
    selector: Selector,
    out_dir: str | Path,
    cfg: SelectConfig | None = None,
    ft_cfg: FinetuneConfig | None = None,
    pool_spec: str = "offline",
    fields: DataFields | None = None,
    n_categories: int = 24,
    per_category: int = 120,
    n_target: int = 5,
    n_heldout: int = 20,
    n_downstream: int = 6,
    ratio: float | None = None,
    progress: bool = True,
    ft_models: dict[str, HookedModel] | None = None,
    distractors: int = 10,
) -> dict[str, Any]:
    """Retrieval metrics of every method over the study's targets, then the downstream check
    on `n_downstream` of them; writes OUT_DIR/selection.json and PNGs.

    `pool_spec` "offline" builds the study pool (saekit.selection.pool); a labelled jsonl makes
    `n_categories` of its categories the targets. `ft_models` maps fine-tuning methods
    ("last_blocks", "lora") to the model they run on (LoRA needs the HF backend); default:
    last_blocks on the selector's model."""
    cfg, ft_cfg = cfg or SelectConfig(), ft_cfg or FinetuneConfig()
    ft_models = ft_models if ft_models is not None else {"last_blocks": selector.model}
    t0 = time.perf_counter()
    study = _study(
        pool_spec, fields, cfg, n_categories, per_category, n_target, n_heldout, distractors
    )
    probes = build_probes(selector.model, selector.sae, selector.hook, cfg, True, selector.extra)
    emb = embed_sets(selector.model, probes, study.pool, study.exemplars, cfg, True, progress)
    t_embed = time.perf_counter() - t0
    retrieval = retrieval_eval(emb, study, cfg, ratio)
    if progress:
        print(retrieval_table(retrieval))
    n = min(n_downstream, len(study.targets))
    chosen = [study.targets[i * len(study.targets) // n] for i in range(n)] if n else []
    t1 = time.perf_counter()
    down = (
        _downstream(
            ft_models, emb, study, chosen, cfg, ft_cfg, list(retrieval["summary"]), progress
        )
        if chosen and ft_models
        else {}
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "sae": selector.sae_name,
        "hook": selector.hook,
        "config": asdict(cfg),
        # The methods that ran are ft_models' keys; ft_cfg.method is only each run's template.
        "finetune": {k: v for k, v in asdict(ft_cfg).items() if k != "method"}
        | {"methods": list(ft_models) if down else []},
        "pool": pool_spec,
        "keywords": study.keywords,
        "sae_fvu": probes[0].meter.fvu() if probes[0].meter is not None else None,
        "retrieval": retrieval,
        "downstream": down,
        "plots": {"retrieval": str(_plot_retrieval(retrieval, out / "selection-retrieval.png"))},
        "seconds": {
            "embed": t_embed,
            "downstream": time.perf_counter() - t1,
            "total": time.perf_counter() - t0,
        },
    }
    if down:
        result["plots"]["downstream"] = str(
            _plot_downstream(down, out / "selection-downstream.png")
        )
    write_json(out / "selection.json", result)
    return result

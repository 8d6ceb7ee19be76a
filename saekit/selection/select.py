"""`saekit select RUN_DIR --pool POOL --target TARGET`: rank a pool by MoNA, write the subset.

Outputs in the output directory (default RUN_DIR/selection/):
    ranking.jsonl   every pool sample, best first: rank, pool row, MoNA score, baseline scores
    selected.jsonl  the top ⌈ratio · N⌉ samples (instruction, response, category) — the subset
    report.json     config, counts, timings, storage, per-baseline overlap with MoNA's subset
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from saekit.dictionaries import Dictionary, load_dictionary
from saekit.errors import SaekitError
from saekit.models.hooks import HookedModel, build_hooked_model
from saekit.recipe import load_run
from saekit.rundir import RunDir, write_json
from saekit.selection.config import DataFields, SelectConfig
from saekit.selection.data import Sample, load_samples
from saekit.selection.scoring import build_probes, embed_sets, jaccard_scores, score_methods
from saekit.selection.sparse import n_selected, rank


@dataclass
class Selector:
    """A hooked model and the dictionary whose features represent samples."""

    model: HookedModel
    sae: Dictionary
    hook: str
    sae_name: str
    extra: list[tuple[str, Dictionary, str]] = field(default_factory=list)
    """More dictionaries scored as MoNA methods: (method name, dictionary, hook)."""

    def also(self, run_dir: str | Path, sae_name: str | None = None) -> str:
        """Score MoNA with another dictionary too (e.g. an SNMF of the same model) as method
        "mona_METHOD"; returns that name."""
        other = load_selector(run_dir, sae_name, model=self.model)
        name = f"mona_{other.sae.method}"
        taken = {"mona", *(n for n, _, _ in self.extra)}
        if name in taken:
            name = f"{name}{sum(n.startswith(name) for n in taken) + 1}"
        self.extra.append((name, other.sae, other.hook))
        return name


def load_selector(
    run_dir: str | Path,
    sae_name: str | None = None,
    model_name: str | None = None,
    hook: str | None = None,
    model: HookedModel | None = None,
) -> Selector:
    """The run's (or SAE dir's) dictionary and model; `sae_name` picks one of several."""
    recipe, all_targets = load_run(run_dir, hook)
    targets = all_targets
    if sae_name is not None:
        targets = [t for t in all_targets if t.name == sae_name]
        if not targets:
            names = ", ".join(t.name for t in all_targets)
            raise SaekitError(f"No dictionary {sae_name!r} in {run_dir}; choose one of: {names}.")
    name, sae_dir, sae_hook = targets[0]
    if model is None:
        model_cfg = recipe.model if model_name is None else replace(recipe.model, name=model_name)
        model = build_hooked_model(model_cfg)
    sae = load_dictionary(sae_dir).to(model.device).eval()
    if model.width(sae_hook) != sae.d_in:
        raise SaekitError(
            f"Dictionary {name} reads d_in={sae.d_in} but hook {sae_hook} has width "
            f"{model.width(sae_hook)}; pass the model it was trained on (--model)."
        )
    return Selector(model, sae, sae_hook, name)


def dedup(samples: list[Sample]) -> list[Sample]:
    """Drop exact (instruction, response) duplicates, keeping the first (pitfall 6: duplicates
    get identical scores and would fill the subset with copies)."""
    seen: set[tuple[str, str]] = set()
    out = []
    for s in samples:
        key = (s.instruction.strip(), s.response.strip())
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    partial = path.with_name(path.name + ".partial")
    with partial.open("w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    partial.replace(path)


def select_data(
    selector: Selector,
    pool: list[Sample],
    target: list[Sample],
    cfg: SelectConfig | None = None,
    out_dir: str | Path | None = None,
    baselines: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Rank `pool` for `target` by MoNA (+ baselines); write outputs if `out_dir`; the report."""
    cfg = cfg or SelectConfig()
    if not pool:
        raise SaekitError("The pool is empty; give at least one candidate sample.")
    if not target:
        raise SaekitError("The target is empty; give at least one target exemplar.")
    n_raw = len(pool)
    pool = dedup(pool) if cfg.dedup else pool
    t0 = time.perf_counter()
    probes = build_probes(
        selector.model, selector.sae, selector.hook, cfg, baselines, selector.extra
    )
    emb = embed_sets(selector.model, probes, pool, target, cfg, baselines, progress)
    t_embed = time.perf_counter() - t0
    if baselines:
        scores = score_methods(emb, pool, target, cfg)
    else:
        labels = [s.category for s in target] if cfg.aggregation == "subtask_max" else None
        scores = {  # MoNA and MoNA on every extra dictionary
            name: jaccard_scores(vecs, emb.target.sparse[name], cfg, labels)
            for name, vecs in emb.pool.sparse.items()
        }
    k = n_selected(cfg.ratio, len(pool))
    picks = {m: rank(s, k) for m, s in scores.items()}
    order = rank(scores["mona"], len(pool))
    chosen = set(picks["mona"].tolist())
    report: dict[str, Any] = {
        "sae": selector.sae_name,
        "hook": selector.hook,
        "config": asdict(cfg),
        "pool_size": n_raw,
        "pool_after_dedup": len(pool),
        "target_size": len(target),
        "selected": k,
        "seconds_embed": t_embed,
        "seconds_total": time.perf_counter() - t0,
        "storage_bytes": emb.pool.sparse["mona"].nbytes(),
        "sae_fvu": probes[0].meter.fvu() if probes[0].meter is not None else None,
        "methods": sorted(scores),
        "overlap_with_mona": {
            m: len(chosen & set(p.tolist())) / k for m, p in picks.items() if m != "mona"
        },
        "mean_content_tokens": {
            "pool": float(emb.pool.content_tokens_N.float().mean()),
            "selected": float(emb.pool.content_tokens_N[picks["mona"]].float().mean()),
        },
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        ranking = [
            {
                "rank": r,
                "row": pool[i].source_index,
                **{m: float(s[i]) for m, s in scores.items()},
                "category": pool[i].category,
                "instruction": pool[i].instruction[:200],
            }
            for r, i in enumerate(order.tolist())
        ]
        _write_jsonl(out / "ranking.jsonl", ranking)
        _write_jsonl(out / "selected.jsonl", [pool[i].record() for i in picks["mona"].tolist()])
        write_json(out / "report.json", report)
        report["out_dir"] = str(out)
    report["selected_rows"] = [pool[i].source_index for i in picks["mona"].tolist()]
    return report


def select_from_specs(
    run_dir: str | Path,
    pool_spec: str,
    target_spec: str,
    cfg: SelectConfig | None = None,
    fields: DataFields | None = None,
    out_dir: str | Path | None = None,
    baselines: bool = True,
    sae_name: str | None = None,
    model_name: str | None = None,
) -> dict[str, Any]:
    """Load pool and target by spec (jsonl / HF id / offline[:CATS]) and run `select_data`."""
    cfg, fields = cfg or SelectConfig(), fields or DataFields()
    pool = load_samples(pool_spec, fields, "pool")
    target = load_samples(target_spec, fields, "target")
    selector = load_selector(run_dir, sae_name, model_name)
    out = Path(out_dir) if out_dir is not None else RunDir(run_dir).selection
    return select_data(selector, pool, target, cfg, out, baselines)

"""`run_steering_eval`: the steering score of a run's features, with DiffMean and random
directions at the same hooks as references; writes steering.json and PNG plots.

steering.json's "study" holds, per site, every method's means with 95% intervals at every KL
budget, its controls, its concept-vs-ΔCE Pareto area and the paired differences between methods
(study.py); steering-study.png draws concept gain against ΔCE with the interval bands.

Per hook, one `SiteStudy` holds the dictionary features, the DiffMean directions built there
from labelled text sets, and `n_random` random directions. Every direction is calibrated to the
same KL budgets, so rows of the table compare methods at equal disruption of the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm import tqdm

from saekit.config import to_dict
from saekit.dictionaries import load_dictionary
from saekit.dictionaries.saelens_format import load_log10_density
from saekit.errors import SaekitError
from saekit.models.hooks import HookedModel, build_hooked_model
from saekit.recipe import load_run
from saekit.rundir import RunDir, write_json
from saekit.steering.directions import (
    Direction,
    dictionary_direction,
    diffmean_directions,
    maxact_targets,
    random_directions,
    vocab_targets,
)
from saekit.steering.judge import Judge, JudgeConfig
from saekit.steering.plots import plot_concept_vs_ce, plot_score_vs_kl
from saekit.steering.protocol import SiteStudy, SteeringConfig
from saekit.steering.score import MEANS, measure_curves, score_site, summarize
from saekit.steering.study import site_study

Labelled = tuple[dict[str, list[str]], list[str]]
"""({concept: texts}, neutral texts) for DiffMean directions."""


def pick_features(sae_dir: Path, d_sae: int, n: int, seed: int = 0) -> list[int]:
    """n features, seeded, among those firing on 1e-4..1e-1 of tokens when densities are saved."""
    candidates = list(range(d_sae))
    density_S = load_log10_density(sae_dir)
    if density_S is not None:
        alive = [i for i in candidates if -4.0 <= float(density_S[i]) <= -1.0]
        candidates = alive or candidates
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(candidates), generator=gen)[: min(n, len(candidates))]
    return sorted(candidates[int(i)] for i in order)


def run_steering_eval(
    run_dir: str | Path | Sequence[str | Path],
    model: HookedModel | None = None,
    config: SteeringConfig | None = None,
    n_features: int = 4,
    features: Sequence[int] | None = None,
    labelled: Labelled | None | bool = True,
    out_dir: str | Path | None = None,
    model_name: str | None = None,
    judge: JudgeConfig | None = None,
    model_dtype: Literal["float32", "bfloat16"] | None = None,
) -> dict[str, Any]:
    """Score steering for the dictionaries of one or more runs; write steering.json + PNGs.

    `features` fixes the feature indices (else `n_features` are picked per dictionary);
    `labelled` gives DiffMean text sets (True = the offline evals concepts, False/None = none);
    `judge` (optional) also rates the continuations at the selected strength; `model_dtype`
    ("float32", "bfloat16") overrides the runs' model dtype, for every method alike.
    """
    cfg = config or SteeringConfig()
    runs = [Path(run_dir)] if isinstance(run_dir, str | Path) else [Path(p) for p in run_dir]
    if not runs:
        raise SaekitError("Give at least one run directory.")
    out = RunDir(out_dir if out_dir is not None else runs[0])
    out.path.mkdir(parents=True, exist_ok=True)
    loaded = [load_run(r) for r in runs]
    recipe = loaded[0][0]
    if model_name is not None:
        recipe = replace(recipe, model=replace(recipe.model, name=model_name))
    if model_dtype is not None:
        recipe = replace(recipe, model=replace(recipe.model, dtype=model_dtype))
    if len({rec.model.name for rec, _ in loaded}) > 1 and model_name is None:
        raise SaekitError("These runs use different models; compare runs of one model.")
    if model is None:
        model = build_hooked_model(recipe.model)
    elif model_dtype is not None:
        raise SaekitError("model_dtype applies to the model saekit loads; cast the model you pass.")
    by_hook: dict[str, list[Direction]] = {}
    for _, targets in loaded:
        for name, sae_dir, hook in targets:
            sae = load_dictionary(sae_dir)
            idx = (
                list(features)
                if features is not None
                else pick_features(sae_dir, sae.d_sae, n_features, cfg.seed)
            )
            for i in idx:
                v = dictionary_direction(sae, i)
                by_hook.setdefault(hook, []).append(
                    Direction(f"{name}#{i}", sae.method, hook, v, [])
                )
    if labelled is True:
        from saekit.steering.concepts import evals_concept_texts

        labelled = evals_concept_texts()
    reference_BT = _reference(recipe, model, cfg)
    report: dict[str, Any] = {
        "runs": [str(r) for r in runs],
        "model": recipe.model.name,
        "model_dtype": recipe.model.dtype,
        "config": to_dict(cfg),
        "sites": {},
        "table": [],
        "study": {},
    }
    for hook, dirs in by_hook.items():
        if labelled:
            concepts, neutral = labelled
            made = diffmean_directions(model, hook, concepts, neutral)
            for concept, v in tqdm(
                made, desc=f"DiffMean {hook}", total=len(concepts), unit="concept"
            ):
                dirs.append(Direction(f"diffmean:{concept}", "diffmean", hook, v, []))
        rand_KD = random_directions(model.width(hook), cfg.n_random, cfg.seed)
        dirs += [Direction(f"random:{j}", "random", hook, v, []) for j, v in enumerate(rand_KD)]
        _assign_targets(model, hook, dirs, cfg, reference_BT)
        study = SiteStudy(model, hook, dirs, cfg, reference_BT)
        results = score_site(study, measure_curves(study))
        if judge is not None and judge.backend != "none":
            _judge_site(Judge(judge), results)
        rows = [{"hook": hook, **r} for r in summarize(results, cfg.kl_targets, cfg.select_kappa)]
        plot = plot_score_vs_kl(rows, f"steering at {hook}", out.steering_plot(hook))
        report["sites"][hook] = {
            "alpha_max": study.alpha_max,
            "directions": results,
            "plot": str(plot),
        }
        report["table"] += rows
        report["study"][hook] = site_study(results, cfg.kl_targets, cfg.n_boot, cfg.seed)
    report["study_plot"] = str(plot_concept_vs_ce(report["study"], out.steering_study_plot))
    write_json(out.steering, report)
    return report


def _judge_site(judge: Judge, results: dict[str, Any]) -> None:
    """Judge ratings of every non-random direction's continuations at its selected κ."""
    for name, res in results.items():
        chosen = res["selected"]
        if res["kind"] == "random" or chosen is None:
            continue
        concept = (
            name.split(":", 1)[1]
            if res["kind"] == "diffmean"
            else "words such as " + ", ".join(repr(t.strip()) for t in res["targets"][:10])
        )
        ratings = [judge.rate(concept, prompt + text) for prompt, text in chosen["samples"]]
        chosen["judge"] = {
            "concept_description": concept,
            **{
                k: sum(r[k] for r in ratings) / len(ratings)
                for k in ("concept", "fluency", "score")
            },
        }


def _assign_targets(
    model: HookedModel,
    hook: str,
    dirs: list[Direction],
    cfg: SteeringConfig,
    reference_BT: torch.Tensor | None,
) -> None:
    if cfg.targets == "vocab":
        for d in dirs:
            d.targets = vocab_targets(model, hook, d.vector_D, cfg.target_tokens)
        return
    if reference_BT is None:
        raise SaekitError("targets: maxact needs reference text; set reference_windows > 0.")
    v_KD = torch.stack([d.vector_D for d in dirs])
    for d, t in zip(dirs, maxact_targets(model, hook, v_KD, reference_BT, cfg.target_tokens)):
        d.targets = t


def _reference(recipe: Any, model: HookedModel, cfg: SteeringConfig) -> torch.Tensor | None:
    """Held-out windows of the run's corpus (64 tokens each) for ΔCE_ref and maxact targets."""
    n = max(cfg.reference_windows, 16 if cfg.targets == "maxact" else 0)
    if n == 0:
        return None
    from saekit.data.text import build_windows

    max_tokens = n * recipe.data.context_size
    windows = build_windows(recipe.data, model.tokenizer, "eval", max_tokens=max_tokens)
    return windows.get(0, min(n, len(windows)))[:, :64]


def steering_table(report: dict[str, Any]) -> str:
    """The comparison table: one line per (hook, method, κ)."""
    cols = (*MEANS, "delta_ce_ref", "z", "null_score", "specificity", "sign_flip_concept")
    head = f"{'hook':28s} {'method':9s} {'kappa':>8s} {'reach':>6s} "
    head += " ".join(f"{c[:10]:>10s}" for c in cols)
    lines = [head]
    for r in report["table"]:
        cells = [f"{r[c]:10.3f}" if r.get(c) is not None else f"{'-':>10s}" for c in cols]
        kappa = r["kappa"] if isinstance(r["kappa"], str) else f"{r['kappa']:g}"
        reach = f"{r['reached']}/{r['directions']}"
        line = f"{r['hook'][:28]:28s} {r['method']:9s} {kappa:>8s} {reach:>6s} "
        lines.append(line + " ".join(cells))
    return "\n".join(lines)

"""`saekit eval RUN_DIR`: every number measured on a run, in one `report.json`.

Each dictionary of the run (or one SAE directory) gets its core metrics (eval/core.py:
reconstruction, sparsity, CE/KL spliced), next to the same metrics for its null controls
(eval/controls.py: random directions, the untrained dictionary), and a density plot;
dictionaries with at most
`FEATURE_VIEWS_MAX` features (SNMF's usual size) also list every feature's input and output
views (eval/feature_views.py; larger ones are browsed in the dashboard). The interpretability
scores (interp/), the steering scores (steering/) and the data-selection results (selection/)
are computed on request or read from the run directory, so the report and the printed
summary table hold everything that was measured. SAEBench's sparse probing and first-letter
absorption run on request too (report/saebench.py). Every aggregate score with an interval and
control margins goes into `report["scorecard"]` (report/scorecard.py), which `saekit eval`
prints. This aggregation sits above the evaluators: they never import it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from saekit.data.text import build_windows
from saekit.dictionaries import load_dictionary
from saekit.eval.absorption import AbsorptionConfig
from saekit.eval.controls import CONTROLS, control_dictionaries
from saekit.eval.core import evaluate_core
from saekit.eval.feature_views import feature_views
from saekit.eval.plots import plot_density, plot_history
from saekit.eval.probing import ProbingConfig
from saekit.models.hooks import HookedModel, build_hooked_model
from saekit.recipe import load_run
from saekit.report.saebench import SAEBENCH_COLUMNS, probing_tasks, saebench_evals
from saekit.report.saebench_core import saebench_core as run_saebench_core
from saekit.report.saebench_core import side_by_side
from saekit.report.scorecard import build_scorecard, scorecard_table
from saekit.rundir import RunDir, write_json

FEATURE_VIEWS_MAX = 512
"""Dictionaries up to this many features get per-feature views in report.json (an SNMF of
100 features: ~0.3 MB of JSON); wider ones would make the report tens of MB."""

SUMMARY_COLUMNS = (
    "fvu",
    "explained_variance",
    "l0_mean",
    "dead_fraction",
    "dense_fraction",
    "l2_ratio",
    "ce_clean",
    "ce_sae",
    "ce_loss_score",
    "kl_sae",
)
INTERP_COLUMNS = ("detection", "fuzzing", "simulation")
"""Mean LLM-free interpretability scores (saekit.interp), shown when they were computed."""


def evaluate_run(
    path: str | Path,
    model_name: str | None = None,
    hook: str | None = None,
    n_windows: int = 64,
    model: HookedModel | None = None,
    out_dir: str | Path | None = None,
    interp_windows: int = 0,
    steering_features: int = 0,
    controls: tuple[str, ...] = CONTROLS,
    seed: int = 0,
    probing: ProbingConfig | None = None,
    absorption: AbsorptionConfig | None = None,
    saebench_core: bool = False,
) -> dict[str, Any]:
    """Evaluate, write report.json + plots into `out_dir` (default: the run dir), return it.

    interp_windows > 0 also scores every feature's interpretability on that many held-out
    windows (saekit.interp: interp.json, the dashboard's data); steering_features > 0 also
    scores that many features per dictionary for steering (saekit.steering: steering.json).
    Steering and selection results already in the output dir are aggregated either way.
    `controls` (a subset of eval/controls.py's CONTROLS; () skips them) are evaluated next
    to every dictionary; `seed` seeds the random control and the bootstraps. `probing` /
    `absorption` also run SAEBench's sparse probing / first-letter absorption; `saebench_core`
    puts SAEBench's core metrics of the same windows next to saekit's (report/saebench_core.py).
    """
    run = RunDir(path)
    recipe, targets = load_run(run.path, hook)
    tasks = probing_tasks(probing) if probing is not None else None  # bad input fails first
    if model_name is not None:
        recipe = replace(recipe, model=replace(recipe.model, name=model_name))
    out = RunDir(out_dir) if out_dir is not None else run
    out.path.mkdir(parents=True, exist_ok=True)
    if model is None:
        model = build_hooked_model(recipe.model)
    windows = build_windows(
        recipe.data, model.tokenizer, "eval", max_tokens=n_windows * recipe.data.context_size
    )
    report: dict[str, Any] = {
        "run": str(run.path),
        "model": recipe.model.name,
        "eval_windows": min(n_windows, len(windows)),
        "saes": {},
    }
    for name, sae_dir, sae_hook in targets:
        sae = load_dictionary(sae_dir).to(model.device)  # loads on CPU; the model may not be
        ctrl = control_dictionaries(sae, seed, controls)
        metrics = evaluate_core(
            model, sae, sae_hook, windows, n_windows=n_windows, controls=ctrl, seed=seed
        )
        metrics["plots"] = {"density": str(plot_density(metrics, out.plot(f"{name}-density")))}
        if sae.d_sae <= FEATURE_VIEWS_MAX:
            metrics["feature_views"] = feature_views(model, sae, sae_hook, windows, n_windows)
        if saebench_core:
            theirs = run_saebench_core(model, sae_dir, windows, n_windows, name)
            metrics["saebench_core"] = side_by_side(metrics, theirs)
            metrics["saebench_core_tokens_per_batch"] = theirs["tokens_per_batch"]
        report["saes"][name] = metrics
    saebench_evals(report, targets, model, out, probing, absorption, seed, tasks)
    aggregate(report, run, out, hook, model, interp_windows, steering_features)
    report["scorecard"] = build_scorecard(
        report, out.read_json(out.steering), out.read_json(out.selection_json)
    )
    for metrics in report["saes"].values():  # the scorecard holds them, with their units
        metrics.pop("scores", None)
        for section in ("interp", "sparse_probing", "absorption"):
            if isinstance(metrics.get(section), dict):
                metrics[section].pop("scores", None)
    if run.history.is_file():
        curves = plot_history(run.history, out.plot("training-curves"))
        report["plots"] = {"history": str(curves)}
    write_json(out.report, report)
    return report


def aggregate(
    report: dict[str, Any],
    run: RunDir,
    out: RunDir,
    hook: str | None,
    model: HookedModel,
    interp_windows: int,
    steering_features: int,
) -> None:
    """Add interpretability, steering and selection results to a core report (in place)."""
    if interp_windows > 0:
        from saekit.interp import InterpConfig, run_interp_eval

        interp = run_interp_eval(
            run.path,
            hook=hook,
            cfg=InterpConfig(n_windows=interp_windows),
            model=model,
            out_dir=out.path,
        )
        for name, summary in interp["saes"].items():
            metrics = report["saes"].setdefault(name, {})
            metrics["interp"] = summary
            for score in INTERP_COLUMNS:
                metrics[score] = summary.get(f"{score}_mean")
    if steering_features > 0:
        from saekit.steering import run_steering_eval
        from saekit.steering.protocol import DEFAULT_PROMPTS, SteeringConfig

        # 8 prompts, 2 KL budgets, 12-token continuations, 3 random directions (its cost per
        # direction: docs/benchmarks.md); `saekit steer compare` runs the full protocol.
        light = SteeringConfig(
            prompts=DEFAULT_PROMPTS[:8], kl_targets=(0.1, 0.5), gen_tokens=12, n_random=3
        )
        run_steering_eval(
            run.path, model=model, config=light, n_features=steering_features, out_dir=out.path
        )
    steering = out.read_json(out.steering)
    if steering is not None:
        report["steering"] = {"file": str(out.steering), "table": steering.get("table", [])}
    data = out.read_json(out.selection_json)
    if data is not None:
        report["selection"] = {
            "file": str(out.selection_json),
            "retrieval": data.get("retrieval", {}).get("summary"),
            "downstream": data.get("downstream", {}).get("mean"),
        }


def summary_table(report: dict[str, Any]) -> str:
    cols = [
        c
        for c in (*SUMMARY_COLUMNS, *INTERP_COLUMNS, *SAEBENCH_COLUMNS)
        if any(m.get(c) is not None for m in report["saes"].values())
    ]
    lines = [f"{'dictionary':44s} " + " ".join(f"{c[:12]:>12s}" for c in cols)]
    for name, metrics in report["saes"].items():
        cells = [
            f"{metrics[c]:12.4g}" if metrics.get(c) is not None else f"{'-':>12s}" for c in cols
        ]
        lines.append(f"{name[:44]:44s} " + " ".join(cells))
    steering = report.get("steering", {}).get("table", [])
    if steering:
        lines.append("steering (score S by KL budget; S = harmonic mean of concept gain, fluency):")
        for row in steering:
            kappa = row["kappa"] if isinstance(row["kappa"], str) else f"{row['kappa']:g}"
            s, c, f = (_num(row.get(k)) for k in ("score", "concept_gain", "fluency"))
            lines.append(
                f"  {row['hook'][:34]:34s} {row['method']:10s} KL {kappa:>8s}  "
                f"S {s}  concept {c}  fluency {f}"
            )
    for name, metrics in report["saes"].items():
        if metrics.get("saebench_core"):
            lines.append(f"{name}: saekit vs SAEBench core eval (docs/evaluation.md: conventions)")
            lines += [
                f"  {key:20s} saekit {v['saekit']:<12.6g} SAEBench {v['saebench']:.6g}"
                for key, v in metrics["saebench_core"].items()
            ]
    if report.get("scorecard"):
        lines.append(scorecard_table(report["scorecard"]))
    return "\n".join(lines)


def _num(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "-"

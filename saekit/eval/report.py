"""`saekit eval RUN_DIR`: evaluate every dictionary of a run (or one SAE directory) and write
`report.json`, PNG plots and a printed summary table."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from saekit.config import from_dict
from saekit.data.text import build_windows
from saekit.dictionaries import SNMFDictionary, load_dictionary
from saekit.errors import SaekitError
from saekit.eval.core import evaluate_core
from saekit.eval.plots import plot_density, plot_history
from saekit.eval.snmf_views import snmf_report
from saekit.models.hooks import HookedModel, build_hooked_model
from saekit.recipe import Recipe

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


def resolve_targets(path: Path, hook: str | None) -> tuple[Recipe, list[tuple[str, Path, str]]]:
    """The recipe and the (name, sae_dir, hook) list to evaluate at `path`."""
    if (path / "recipe.yaml").is_file():
        recipe = from_dict(Recipe, yaml.safe_load((path / "recipe.yaml").read_text()))
        sae_dirs = sorted(p for p in (path / "saes").glob("*") if (p / "cfg.json").is_file())
        if not sae_dirs:
            raise SaekitError(
                f"{path} has no trained dictionaries under saes/; run "
                "`saekit train` first (or resume it)."
            )
        targets = []
        for d in sae_dirs:
            meta = json.loads((d / "cfg.json").read_text()).get("metadata", {})
            targets.append((d.name, d, hook or meta.get("hook_name") or recipe.stream.hooks[0]))
        return recipe, targets
    if (path / "cfg.json").is_file():
        meta = json.loads((path / "cfg.json").read_text()).get("metadata", {})
        name = hook or meta.get("hook_name")
        if not name:
            raise SaekitError(f"{path}/cfg.json names no hook; pass --hook HOOK_NAME.")
        return Recipe(), [(path.name, path, name)]
    raise SaekitError(
        f"{path} is neither a run directory (recipe.yaml) nor an SAE directory (cfg.json)."
    )


def evaluate_run(
    path: str | Path,
    model_name: str | None = None,
    hook: str | None = None,
    n_windows: int = 64,
    model: HookedModel | None = None,
    out_dir: str | Path | None = None,
    interp_windows: int = 0,
    steering_features: int = 0,
) -> dict[str, Any]:
    """Evaluate, write report.json + plots into `out_dir` (default: the run dir), return it.

    interp_windows > 0 also scores every feature's interpretability on that many held-out
    windows (saekit.interp: interp.json, the dashboard's data); steering_features > 0 also
    scores that many features per dictionary for steering (saekit.steering: steering.json).
    Steering and selection results already in the output dir are aggregated either way.
    """
    run = Path(path)
    recipe, targets = resolve_targets(run, hook)
    if model_name is not None:
        recipe = replace(recipe, model=replace(recipe.model, name=model_name))
    out = Path(out_dir) if out_dir is not None else run
    out.mkdir(parents=True, exist_ok=True)
    if model is None:
        model = build_hooked_model(recipe.model)
    windows = build_windows(
        recipe.data, model.tokenizer, "eval", max_tokens=n_windows * recipe.data.context_size
    )
    report: dict[str, Any] = {
        "run": str(run),
        "model": recipe.model.name,
        "eval_windows": min(n_windows, len(windows)),
        "saes": {},
    }
    for name, sae_dir, sae_hook in targets:
        sae = load_dictionary(sae_dir).to(model.device)  # loads on CPU; the model may not be
        metrics = evaluate_core(model, sae, sae_hook, windows, n_windows=n_windows)
        metrics["plots"] = {"density": str(plot_density(metrics, out / f"{name}-density.png"))}
        if isinstance(sae, SNMFDictionary):  # per-feature input and output views
            metrics["snmf"] = snmf_report(model, sae, sae_hook, windows, n_windows)
        report["saes"][name] = metrics
    aggregate(report, run, out, hook, model, interp_windows, steering_features)
    history = run / "history.jsonl"
    if history.is_file():
        report["plots"] = {"history": str(plot_history(history, out / "training-curves.png"))}
    partial = out / "report.json.partial"
    partial.write_text(json.dumps(report, indent=1))
    partial.replace(out / "report.json")
    return report


def aggregate(
    report: dict[str, Any],
    run: Path,
    out: Path,
    hook: str | None,
    model: HookedModel,
    interp_windows: int,
    steering_features: int,
) -> None:
    """Add interpretability, steering and selection results to a core report (in place)."""
    if interp_windows > 0:
        from saekit.interp import InterpConfig, run_interp_eval

        interp = run_interp_eval(
            run, hook=hook, cfg=InterpConfig(n_windows=interp_windows), model=model, out_dir=out
        )
        for name, summary in interp["saes"].items():
            metrics = report["saes"].setdefault(name, {})
            metrics["interp"] = summary
            for score in INTERP_COLUMNS:
                metrics[score] = summary.get(f"{score}_mean")
    if steering_features > 0:
        from saekit.steering import run_steering_eval
        from saekit.steering.protocol import DEFAULT_PROMPTS, SteeringConfig

        # 8 prompts, 2 KL budgets, 12-token continuations, 3 random directions: ~2.5 min per
        # direction on 2 CPU cores; `saekit steer compare` runs the full protocol.
        light = SteeringConfig(
            prompts=DEFAULT_PROMPTS[:8], kl_targets=(0.1, 0.5), gen_tokens=12, n_random=3
        )
        run_steering_eval(run, model=model, config=light, n_features=steering_features, out_dir=out)
    steering = out / "steering.json"
    if steering.is_file():
        table = json.loads(steering.read_text()).get("table", [])
        report["steering"] = {"file": str(steering), "table": table}
    selection = out / "selection" / "selection.json"
    if selection.is_file():
        data = json.loads(selection.read_text())
        report["selection"] = {
            "file": str(selection),
            "retrieval": data.get("retrieval", {}).get("summary"),
            "downstream": data.get("downstream", {}).get("mean"),
        }


def summary_table(report: dict[str, Any]) -> str:
    cols = [
        c
        for c in (*SUMMARY_COLUMNS, *INTERP_COLUMNS)
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
    return "\n".join(lines)


def _num(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "-"

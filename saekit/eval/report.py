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


def _targets(path: Path, hook: str | None) -> tuple[Recipe, list[tuple[str, Path, str]]]:
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
) -> dict[str, Any]:
    """Evaluate, write report.json + plots into `out_dir` (default: the run dir), return it."""
    run = Path(path)
    recipe, targets = _targets(run, hook)
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
    history = run / "history.jsonl"
    if history.is_file():
        report["plots"] = {"history": str(plot_history(history, out / "training-curves.png"))}
    partial = out / "report.json.partial"
    partial.write_text(json.dumps(report, indent=1))
    partial.replace(out / "report.json")
    return report


def summary_table(report: dict[str, Any]) -> str:
    cols = [c for c in SUMMARY_COLUMNS if any(c in m for m in report["saes"].values())]
    lines = [f"{'dictionary':44s} " + " ".join(f"{c[:12]:>12s}" for c in cols)]
    for name, metrics in report["saes"].items():
        cells = [f"{metrics[c]:12.4g}" if c in metrics else f"{'-':>12s}" for c in cols]
        lines.append(f"{name[:44]:44s} " + " ".join(cells))
    return "\n".join(lines)

"""SAEBench's sparse probing and first-letter absorption in `saekit eval` (--probing,
--absorption): probing.json, absorption.json, and each dictionary's report entry with its
scorecard scores.

Scorecard scores (eval/scorecard.py's `Score`):
    sparse_probing  top_K_accuracy for each k: mean test accuracy over the tasks, interval over
                    tasks, the null controls probed on the same tasks (paired margins); the
                    residual-stream probe (the ceiling) is in the entry, not a control
    absorption      absorption_fraction, full_absorption (lower is better): means over the
                    letters whose probe F1 passes, interval over those letters, the null
                    controls scored on the same prompts and letters (paired margins; the
                    model forwards and the letter probe are shared, eval/absorption.py)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from saekit.data.tasks import ProbingTask, load_tasks
from saekit.dictionaries import load_dictionary
from saekit.eval.absorption import (
    AbsorptionConfig,
    absorption_data,
    check_width,
    score_absorption,
)
from saekit.eval.controls import control_dictionaries
from saekit.eval.probing import RESIDUAL, ProbingConfig, evaluate_probing
from saekit.eval.scorecard import Score, Units, score
from saekit.models.hooks import HookedModel
from saekit.rundir import RunDir, Target, write_json

SAEBENCH_COLUMNS = ("probing_k1", "probing_k5", "absorption_fraction", "full_absorption")
"""SAEBench's sparse probing (test accuracy of the top-1/top-5 probes, mean over tasks) and
first-letter absorption, shown in the summary table when they were computed."""


@dataclass(frozen=True)
class SAEBenchEvals:
    """SAEBench's evaluations that `saekit eval` runs on request (--probing, --absorption)."""

    probing: ProbingConfig = field(default_factory=ProbingConfig)
    """Sparse probing on binary classification tasks."""
    absorption: AbsorptionConfig = field(default_factory=AbsorptionConfig)
    """First-letter feature absorption."""


def saebench_evals(
    report: dict[str, Any],
    targets: list[Target],
    model: HookedModel,
    out: RunDir,
    probing: ProbingConfig | None,
    absorption: AbsorptionConfig | None,
    seed: int = 0,
    tasks: list[ProbingTask] | None = None,
) -> None:
    """Sparse probing (every dictionary of a hook in one pass over the tasks: `tasks`, else
    those `probing` names) and absorption, into probing.json / absorption.json and each
    dictionary's report entry (in place)."""
    if probing is None and absorption is None:
        return
    by_hook: dict[str, dict[str, Any]] = {}
    for name, sae_dir, sae_hook in targets:
        by_hook.setdefault(sae_hook, {})[name] = load_dictionary(sae_dir).to(model.device)
    if probing is not None:
        results = {
            hook: evaluate_probing(model, saes, hook, probing, tasks)
            for hook, saes in by_hook.items()
        }
        write_json(out.probing, results)
        for hook, res in results.items():
            for name in by_hook[hook]:
                entry = probing_summary(res, name, seed)
                report["saes"][name]["sparse_probing"] = entry
                report["saes"][name]["probing_k1"] = entry["top_k"].get("k=1")
                report["saes"][name]["probing_k5"] = entry["top_k"].get("k=5")
    if absorption is not None:
        absorbed: dict[str, Any] = {}
        for hook, saes in by_hook.items():
            for name, sae in saes.items():  # before the forwards, not after
                check_width(sae, model.width(hook), hook, name)
            data = absorption_data(model, hook, absorption)
            for name, sae in saes.items():
                res = absorbed[name] = score_absorption(data, sae, absorption)
                controls = {}
                if absorption.controls:
                    for c, control in control_dictionaries(sae, seed).items():
                        controls[c] = absorbed[f"{name}/{c}"] = score_absorption(
                            data, control, absorption
                        )
                report["saes"][name]["absorption"] = absorption_summary(
                    res, controls, absorption.min_probe_f1, seed
                )
                report["saes"][name]["absorption_fraction"] = res["mean_absorption_fraction"]
                report["saes"][name]["full_absorption"] = res["mean_full_absorption"]
        write_json(out.absorption, absorbed)


def probing_tasks(cfg: ProbingConfig) -> list[ProbingTask]:
    """The tasks `cfg` names, read before any model runs so that a bad name fails at once."""
    return load_tasks(cfg.tasks, cfg.text_field, cfg.label_field, cfg.hf_split)


def probing_summary(res: dict[str, Any], name: str, seed: int = 0) -> dict[str, Any]:
    """One dictionary's mean accuracies by k, the residual ceiling, its controls (floors), its
    margin over the stronger control at each k, and the scorecard's scores."""
    mean, per_task = res["mean"], res["per_task"]
    prefix = f"{name}/"
    controls = {key.removeprefix(prefix): v for key, v in mean.items() if key.startswith(prefix)}
    margin = {
        k: acc - max(c[k] for c in controls.values()) for k, acc in mean[name].items()
    } if controls else {}  # fmt: skip
    key = "tasks:" + ",".join(t["task"] for t in res["tasks"])

    def units(input_name: str, k: str) -> Units:
        return Units.mean_of(per_task[input_name][k], "tasks", key)

    scores: dict[str, dict[str, Any]] = {}
    for k in mean[name]:
        ctrl = {c: units(prefix + c, k) for c in controls}
        found: Score = score(units(name, k), ctrl, higher_is_better=True, seed=seed)
        scores[f"accuracy_{k.replace('=', '')}"] = found.to_json()
    return {
        "top_k": mean[name],
        "residual_all": mean[RESIDUAL]["all"],
        "residual_top_k": {k: v for k, v in mean[RESIDUAL].items() if k != "all"},
        "controls": controls,
        "margin_over_strongest_control": margin,
        "n_tasks": len(res["tasks"]),
        "scores": scores,
    }


ABSORPTION_METRICS = (
    ("absorption_fraction", "mean_absorption_fraction", "mean_absorption_fraction"),
    ("full_absorption", "full_absorption_rate", "mean_full_absorption"),
)
"""Scorecard name, per-letter column and summary key of each absorption score."""


def absorption_summary(
    res: dict[str, Any],
    controls: dict[str, dict[str, Any]],
    min_probe_f1: float,
    seed: int = 0,
) -> dict[str, Any]:
    """One dictionary's absorption entry: its means, the controls' means, its margin over the
    stronger control (the one with less absorption) and the scorecard's scores. Lower is
    better, so the margin is control − dictionary: > 0 means less absorption than both."""
    summary = {k: v for k, v in res.items() if k not in ("per_letter", "config")}
    summary["controls"] = {
        c: {key: r[key] for _, _, key in ABSORPTION_METRICS} for c, r in controls.items()
    }
    summary["margin_over_strongest_control"] = {
        metric: min(r[key] for r in controls.values()) - res[key]
        for metric, _, key in ABSORPTION_METRICS
        if controls and res[key] is not None and all(r[key] is not None for r in controls.values())
    }
    summary["scores"] = absorption_scores(res, min_probe_f1, seed, controls)
    return summary


def absorption_scores(
    res: dict[str, Any],
    min_probe_f1: float,
    seed: int = 0,
    controls: dict[str, dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Mean absorption fraction and full-absorption rate over the letters kept in the means,
    with the controls' rates on the same letters (paired: the letter probe, and so the kept
    letters, do not depend on the dictionary)."""
    kept = [row for row in res["per_letter"] if row["probe_f1"] > min_probe_f1]
    out: dict[str, dict[str, Any]] = {}
    if not kept:
        return out
    key = "letters:" + ",".join(row["letter"] for row in kept)
    letters = {row["letter"] for row in kept}
    for metric, column, _ in ABSORPTION_METRICS:
        units = Units.mean_of([row[column] for row in kept], "letters", key)
        ctrl = {
            c: Units.mean_of(
                [row[column] for row in r["per_letter"] if row["letter"] in letters],
                "letters",
                key,
            )
            for c, r in (controls or {}).items()
        }
        out[metric] = score(units, ctrl, higher_is_better=False, seed=seed).to_json()
    return out

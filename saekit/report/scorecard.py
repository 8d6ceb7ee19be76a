"""The scorecard: per dictionary, each section's scores with 95% intervals, the same scores
for the null controls, and the margin over the strongest control (eval/scorecard.py's
`Score`).

Sections, in the order they print, and where their scores come from:

    core              eval/core.py with eval/controls.py: intervals over held-out windows
    sparse_probing    eval/probing.py (scored in report/saebench.py): accuracy at each k,
                      intervals over tasks, paired with the controls probed on the same
                      tasks and splits
    absorption        eval/absorption.py (scored in report/saebench.py): intervals over the
                      letters kept, no controls (a control's absorption is not a bar to clear)
    interpretability  interp/: intervals over features, controls on a feature subsample
    steering          steering.json: the selected-budget score S of each steered feature,
                      random directions at the same hook as the control (intervals over the
                      steered features, so a light protocol's 2 features give wide ones)
    selection         selection/selection.json: MoNA retrieval over held-out categories,
                      random selection as the control (intervals over categories)

A section appears when it was measured. Any evaluator that stores
`{"scores": {metric: Score.to_json()}}` under `report["saes"][NAME][SECTION]` fills its
section.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from saekit.eval.scorecard import HEADLINE, Score, Units, beats_controls, score

SECTIONS = (
    "core",
    "sparse_probing",
    "absorption",
    "interpretability",
    "steering",
    "selection",
)
Card = dict[str, dict[str, Score]]
"""{section: {metric: Score}} of one dictionary."""


def steering_scores(steering: Mapping[str, Any], name: str, hook: str) -> dict[str, Score]:
    """The steering score S of `name`'s features at their selected KL budget vs random
    directions at the same hook (steering.json's per-direction results)."""
    site = steering.get("sites", {}).get(hook, {})
    dirs = site.get("directions", {})

    def selected(keep: Any) -> Units:
        vals = [
            r["selected"].get("score")
            for key, r in dirs.items()
            if keep(key, r) and isinstance(r.get("selected"), dict)
        ]
        return Units.mean_of(vals, "steered directions")

    mine = selected(lambda key, r: key.rpartition("#")[0] == name)
    if not len(mine):
        return {}
    rand = selected(lambda key, r: r.get("kind") == "random")
    return {"steering_score": score(mine, {"random": rand})}


def selection_scores(selection: Mapping[str, Any]) -> dict[str, Score]:
    """MoNA's retrieval AUC and precision over held-out categories vs random selection
    (paired: both rank the same pool for the same categories)."""
    per_cat = selection.get("retrieval", {}).get("per_category", {})
    cats = sorted(per_cat)
    if not cats or "mona" not in per_cat[cats[0]]:
        return {}
    key = "categories:" + ",".join(cats)
    out = {}
    for metric in ("auc", "precision"):

        def units(method: str, metric: str = metric) -> Units:
            vals = np.array([per_cat[c].get(method, {}).get(metric, np.nan) for c in cats])
            return Units("held-out categories", key, vals, np.ones(len(cats)))

        ctrl = {"random": units("random")} if "random" in per_cat[cats[0]] else {}
        out[f"retrieval_{metric}"] = score(units("mona"), ctrl)
    return out


def build_scorecard(
    report: Mapping[str, Any],
    steering: Mapping[str, Any] | None = None,
    selection: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, dict[str, Any]]]:
    """{dictionary: {section: {metric: Score JSON}}} from a report and the run's files."""
    cards: dict[str, dict[str, dict[str, Any]]] = {}
    for name, metrics in report["saes"].items():
        card: dict[str, dict[str, Any]] = {}
        if metrics.get("scores"):
            card["core"] = metrics["scores"]
        for section in ("sparse_probing", "absorption"):
            if isinstance(metrics.get(section), dict) and metrics[section].get("scores"):
                card[section] = metrics[section]["scores"]
        if isinstance(metrics.get("interp"), dict) and metrics["interp"].get("scores"):
            card["interpretability"] = metrics["interp"]["scores"]
        if steering is not None:
            found = steering_scores(steering, name, metrics.get("hook", ""))
            if found:
                card["steering"] = {k: s.to_json() for k, s in found.items()}
        if selection is not None and _selection_is_for(selection, name):
            found = selection_scores(selection)
            if found:
                card["selection"] = {k: s.to_json() for k, s in found.items()}
        cards[name] = {s: card[s] for s in SECTIONS if s in card}
    return cards


def _selection_is_for(selection: Mapping[str, Any], name: str) -> bool:
    sae = str(selection.get("sae", ""))
    return not sae or sae.rstrip("/").rpartition("/")[2] == name


def load_card(card: Mapping[str, Mapping[str, Any]]) -> Card:
    return {sec: {m: Score.from_json(s) for m, s in scores.items()} for sec, scores in card.items()}


def headline(card: Card) -> list[tuple[str, str, Score]]:
    """(section, metric, score) in print order: each section's headline metrics."""
    rows = []
    for section, scores in card.items():
        names = HEADLINE.get(section, tuple(scores))
        rows += [(section, m, scores[m]) for m in names if m in scores]
    return rows


def fmt(x: float | None, digits: int = 3) -> str:
    if x is None or not np.isfinite(x):
        return "-"
    return f"{x:.{digits}f}" if abs(x) < 1000 else f"{x:.4g}"


def fmt_ci(ci: tuple[float, float] | None, digits: int = 3) -> str:
    return f"[{fmt(ci[0], digits)}, {fmt(ci[1], digits)}]" if ci is not None else ""


def scorecard_table(cards: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """The printed scorecard: one block per dictionary."""
    lines = []
    head = (
        f"  {'section':16s} {'score':20s} {'value [95% CI]':>26s} {'random':>8s} {'init':>8s} "
        f"{'margin [95% CI]':>26s} {'beats':>5s}  resampled"
    )
    for name, raw in cards.items():
        card = load_card(raw)
        if not card:
            continue
        lines += [f"scorecard of {name} (margin: over the strongest control)", head]
        for section, metric, s in headline(card):
            value = f"{fmt(s.value)} {fmt_ci(s.ci)}"
            margin = f"{fmt(s.margin)} {fmt_ci(s.margin_ci)}" if s.margin is not None else "-"
            ctrl = [fmt(s.controls.get(c)) for c in ("random", "init")]
            lines.append(
                f"  {section:16s} {metric[:20]:20s} {value:>26s} {ctrl[0]:>8s} {ctrl[1]:>8s} "
                f"{margin:>26s} {beats_controls(s.margin_ci, len(s.units)):>5s}  {s.resampled}"
            )
    return "\n".join(lines)

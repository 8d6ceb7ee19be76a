"""Method-level steering results with 95% intervals, paired differences and Pareto areas.

Reads the per-direction results of `score_site` (steering.json's sites) and, per site and
method (a dictionary's method, `diffmean` or `random`), reports at every KL budget κ:

    score, concept_gain, fluency   mean over features × evaluation prompts, with the 95%
                                   interval of a bootstrap over features and prompts (stats.py)
    delta_ce_ref                   mean ΔCE on held-out text (collateral damage)
    sign_flip_concept              concept gain of −α at the same κ (should be ≈ 0), interval
    null_score, beats_null         the random directions' S on each feature's own targets
                                   (mean), and the fraction of features whose S beats all of them

and over budgets the area under the concept-vs-ΔCE Pareto frontier (stats.pareto_area) with its
interval over features. Features that do not reach a budget are left out of that budget's
numbers and counted (`reached`). Paired differences between every two methods of a site share
the prompt draw of the bootstrap (stats.paired_difference).

The Pareto range X is the median ΔCE at the largest budget over all of the site's directions,
so every method is integrated over the same range of collateral damage.
"""

from __future__ import annotations

import statistics
from itertools import combinations
from typing import Any

import torch

from saekit.steering.stats import mean_interval, paired_difference, pareto_area

METRICS = ("score", "concept_gain", "fluency")
"""Per-prompt metrics with intervals."""


def _matrix(points: list[dict[str, Any]], metric: str) -> torch.Tensor:
    return torch.tensor([p["per_prompt"][metric] for p in points], dtype=torch.float64)


def _at(results: dict[str, Any], kind: str, kappa: float) -> list[dict[str, Any]]:
    """Reached curve points of one method's directions at κ."""
    return [
        p
        for r in results.values()
        if r["kind"] == kind
        for p in r["curve"]
        if p["kappa"] == kappa and p["reached"] and "per_prompt" in p
    ]


def pareto_range(results: dict[str, Any]) -> float | None:
    """X: median ΔCE_ref at the largest budget over all directions of the site."""
    values = []
    for r in results.values():
        reached = [p for p in r["curve"] if p["reached"] and p.get("delta_ce_ref") is not None]
        if reached:
            values.append(max(reached, key=lambda p: p["kappa"])["delta_ce_ref"])
    positive = [v for v in values if v > 0]
    return statistics.median(positive) if positive else None


def feature_areas(results: dict[str, Any], kind: str, x_max: float) -> list[float]:
    """Each direction's Pareto area (concept gain vs ΔCE_ref) over [0, x_max]."""
    areas = []
    for r in results.values():
        if r["kind"] != kind:
            continue
        pts = [p for p in r["curve"] if p["reached"] and p.get("delta_ce_ref") is not None]
        areas.append(
            pareto_area([p["delta_ce_ref"] for p in pts], [p["concept_gain"] for p in pts], x_max)
        )
    return areas


def site_study(
    results: dict[str, Any], kappas: tuple[float, ...], n_boot: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Per-method intervals, controls, Pareto areas and paired differences at one site."""
    kinds = sorted({r["kind"] for r in results.values()})
    x_max = pareto_range(results)
    methods: dict[str, Any] = {}
    for kind in kinds:
        n_dirs = sum(r["kind"] == kind for r in results.values())
        budgets = []
        for kappa in sorted(kappas):
            pts = _at(results, kind, kappa)
            row: dict[str, Any] = {"kappa": kappa, "reached": len(pts), "directions": n_dirs}
            if pts:
                for m in METRICS:
                    row[m] = mean_interval(_matrix(pts, m), n_boot, seed).record()
                row |= _controls(pts, n_boot, seed)
            budgets.append(row)
        entry: dict[str, Any] = {"directions": n_dirs, "budgets": budgets}
        if x_max is not None:
            areas = torch.tensor(feature_areas(results, kind, x_max), dtype=torch.float64)
            entry["pareto_auc"] = mean_interval(areas[:, None], n_boot, seed).record()
        methods[kind] = entry
    return {
        "pareto_x_max": x_max,
        "methods": methods,
        "pairs": _pairs(results, kinds, kappas, x_max, n_boot, seed),
    }


def _controls(pts: list[dict[str, Any]], n_boot: int, seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    ce = [p["delta_ce_ref"] for p in pts if p.get("delta_ce_ref") is not None]
    if ce:
        out["delta_ce_ref"] = sum(ce) / len(ce)
    flips = [p["sign_flip"] for p in pts if (p.get("sign_flip") or {}).get("per_prompt")]
    if flips:
        x_FP = torch.tensor([f["per_prompt"]["concept_gain"] for f in flips], dtype=torch.float64)
        out["sign_flip_concept"] = mean_interval(x_FP, n_boot, seed).record()
        out["sign_flip_reached"] = len(flips)
    nulls = [p for p in pts if p.get("null_max") is not None]
    if nulls:
        out["null_score"] = sum(p["null_mean"] for p in nulls) / len(nulls)
        out["beats_null"] = sum(p["score"] > p["null_max"] for p in nulls) / len(nulls)
    return out


def _pairs(
    results: dict[str, Any],
    kinds: list[str],
    kappas: tuple[float, ...],
    x_max: float | None,
    n_boot: int,
    seed: int,
) -> list[dict[str, Any]]:
    out = []
    for a, b in combinations(kinds, 2):
        for kappa in sorted(kappas):
            pa, pb = _at(results, a, kappa), _at(results, b, kappa)
            if not pa or not pb:
                continue
            for m in METRICS:
                diff = paired_difference(_matrix(pa, m), _matrix(pb, m), n_boot, seed)
                out.append({"a": a, "b": b, "kappa": kappa, "metric": m, **diff.record()})
        if x_max is not None:
            fa = torch.tensor(feature_areas(results, a, x_max), dtype=torch.float64)[:, None]
            fb = torch.tensor(feature_areas(results, b, x_max), dtype=torch.float64)[:, None]
            diff = paired_difference(fa, fb, n_boot, seed)
            out.append({"a": a, "b": b, "kappa": None, "metric": "pareto_auc", **diff.record()})
    return out


def _ci(x: dict[str, float] | None) -> str:
    return f"{x['mean']:.3f} [{x['lo']:.3f}, {x['hi']:.3f}]" if x else "-"


def study_table(study: dict[str, Any]) -> str:
    """Per site: each method's rows by κ with intervals, its Pareto area, and the pairs."""
    lines = []
    for hook, site in study.items():
        lines.append(f"{hook}  (Pareto range ΔCE ≤ {site['pareto_x_max'] or 0:.3f} nats)")
        lines.append(
            f"  {'method':9s} {'κ':>5s} {'reach':>6s} {'S':>22s} {'concept c':>22s} "
            f"{'fluency f':>22s} {'ΔCE':>6s} {'flip c':>22s} {'null S':>6s} {'beats':>5s}"
        )
        for kind, m in site["methods"].items():
            for r in m["budgets"]:
                cells = [_ci(r.get(k)) for k in METRICS]
                ce, null = r.get("delta_ce_ref"), r.get("null_score")
                beats = r.get("beats_null")
                lines.append(
                    f"  {kind:9s} {r['kappa']:5g} {r['reached']:>3d}/{r['directions']:<2d} "
                    + " ".join(f"{c:>22s}" for c in cells)
                    + f" {'-' if ce is None else f'{ce:.3f}':>6s}"
                    + f" {_ci(r.get('sign_flip_concept')):>22s}"
                    + f" {'-' if null is None else f'{null:.3f}':>6s}"
                    + f" {'-' if beats is None else f'{beats:.2f}':>5s}"
                )
            lines.append(f"  {kind:9s} Pareto area {_ci(m.get('pareto_auc'))}")
        lines.append("  paired differences a − b (95% interval; * = excludes 0):")
        for p in site["pairs"]:
            if p["metric"] not in ("score", "pareto_auc"):
                continue
            star = "*" if p["lo"] > 0 or p["hi"] < 0 else " "
            where = "Pareto area" if p["kappa"] is None else f"S at κ {p['kappa']:g}"
            lines.append(f"    {p['a']:>9s} − {p['b']:9s} {where:13s} {_ci(p)} {star}")
    return "\n".join(lines)

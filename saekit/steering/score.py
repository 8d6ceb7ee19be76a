"""Steering scores from measured settings: per-κ curves with their controls, strength selection.

For a direction f with target set T_f at strength α(κ), over a prompt split:
    c = concept gain on T_f, f = fluency, S = harmonic mean (metrics.py), each a prompt mean.
Every κ of the curve also records, on the evaluation prompts: c, f and S per prompt (the
bootstrap's input, study.py), ΔCE_ref, the random null (random directions at the same κ scored
on T_f: mean, std, max and the z-score of S, left undefined when the null has no spread) and the
sign flip (−α calibrated to the same κ: its concept gain on T_f, teacher-forced, no generation).
κ* maximizes S on the selection split (with `select_kappa`, the default); at κ* also:
specificity c(f on T_f) / mean_g c(f on T_g) over the other non-random directions g
(denominator floored at 1e-3), the Jaccard overlap between the tokens steering raises most and
T_f, and sample continuations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from saekit.steering.calibrate import Calibration
from saekit.steering.metrics import concept_gain, fluency, harmonic
from saekit.steering.protocol import Setting, SiteStudy

MEANS = ("score", "concept_gain", "fluency", "concept_rate", "delta_nll")
"""Metrics averaged over directions in the summary rows."""
PER_PROMPT = ("score", "concept_gain", "fluency")
"""Metrics kept per evaluation prompt for the bootstrap."""
Measured = dict[str, dict[float, Setting | Calibration]]
"""Direction name → κ → its measured Setting, or its Calibration when κ was not reached."""


@dataclass
class Curves:
    """Every direction's settings at +α(κ) and, for the sign-flip control, at −α(κ)."""

    plus: Measured
    flip: Measured


def _per_prompt(study: SiteStudy, s: Setting, n: int, rows: list[int]) -> dict[str, Any]:
    base = study.base
    c_P = concept_gain(base.mass_PN[rows, n], s.mass_PN[rows, n])
    out: dict[str, Any] = {"concept_gain": c_P, "hit10": s.hit_PN[rows, n]}
    if s.nll_P is not None and s.rep3_P is not None and s.rate_PN is not None:
        assert base.nll_P is not None and base.rate_PN is not None
        f_P = fluency(s.nll_P[rows] - base.nll_P[rows], s.rep3_P[rows])
        out |= {
            "fluency": f_P,
            "score": harmonic(c_P, f_P),
            "concept_rate": s.rate_PN[rows, n] - base.rate_PN[rows, n],
            "delta_nll": s.nll_P[rows] - base.nll_P[rows],
            "rep3": s.rep3_P[rows],
        }
    return out


def _scores(study: SiteStudy, s: Setting, n: int, rows: list[int]) -> dict[str, float]:
    return {k: float(v.mean()) for k, v in _per_prompt(study, s, n, rows).items()}


def measure_curves(study: SiteStudy) -> Curves:
    """Calibrate every direction to every κ (and −α for non-random ones), then measure."""
    cfg = study.cfg
    kappas = sorted(cfg.kl_targets)
    pairs = [(n, 1.0) for n in range(len(study.directions))]
    if cfg.sign_flip:
        pairs += [(n, -1.0) for n, d in enumerate(study.directions) if d.kind != "random"]
    cals = study.calibrate_all(pairs, kappas)
    curves = Curves({}, {})
    for sign, full, into in ((1.0, True, curves.plus), (-1.0, False, curves.flip)):
        items = [(n, c) for (n, sg), cs in cals.items() if sg == sign for c in cs if c.reached]
        what = "measuring" if sign > 0 else "sign flips"
        settings = iter(study.measure_all(items, full, desc=f"{what} {study.hook}"))
        for (n, sg), cs in cals.items():
            if sg == sign:
                # An unreached target keeps its Calibration (reached=False), never measured.
                into[study.directions[n].name] = {
                    c.kappa: next(settings) if c.reached else c for c in cs
                }
    return curves


def _null(study: SiteStudy, curves: Curves, n: int, kappa: float, score: float) -> dict[str, Any]:
    """Random directions at the same κ scored on direction n's targets."""
    null = [
        _scores(study, s, n, study.eval)["score"]
        for g, d in enumerate(study.directions)
        if d.kind == "random"
        and g != n
        and isinstance(s := curves.plus[d.name].get(kappa), Setting)
    ]
    if not null:
        return {}
    mean = sum(null) / len(null)
    std = float(torch.tensor(null).std()) if len(null) > 1 else 0.0
    # No floor on the spread: a null whose directions all score the same (often all 0) says
    # nothing about how unusual S is, so z is left undefined; null_max still shows whether S
    # beats every random direction.
    z = (score - mean) / std if std > 0 else None
    return {"null_mean": mean, "null_std": std, "null_max": max(null), "z": z}


def _flip(study: SiteStudy, s: Setting | Calibration | None, n: int) -> dict[str, Any] | None:
    if s is None:
        return None
    cal = s.calibration if isinstance(s, Setting) else s
    out: dict[str, Any] = {"alpha": cal.alpha, "kl": cal.kl, "reached": cal.reached}
    if isinstance(s, Setting):
        per = _per_prompt(study, s, n, study.eval)
        out |= {k: float(v.mean()) for k, v in per.items()}
        out["per_prompt"] = {"concept_gain": _rounded(per["concept_gain"])}
    return out


def _rounded(x: torch.Tensor) -> list[float]:
    return [round(float(v), 5) for v in x]


def score_site(study: SiteStudy, curves: Curves) -> dict[str, Any]:
    """Per-direction results (curve with controls at every κ, selection) for one site."""
    results: dict[str, Any] = {}
    for n, d in enumerate(study.directions):
        curve, best_kappa, best_sel = [], None, -1.0
        for kappa, s in curves.plus[d.name].items():
            cal = s.calibration if isinstance(s, Setting) else s
            row: dict[str, Any] = {
                "kappa": kappa,
                "alpha": cal.alpha,
                "kl": cal.kl,
                "reached": cal.reached,
            }
            if isinstance(s, Setting):
                per = _per_prompt(study, s, n, study.eval)
                row.update({k: float(v.mean()) for k, v in per.items()})
                row["per_prompt"] = {k: _rounded(per[k]) for k in PER_PROMPT}
                row["delta_ce_ref"] = (
                    s.ce_ref - study.base.ce_ref
                    if s.ce_ref is not None and study.base.ce_ref is not None
                    else None
                )
                if d.kind != "random":
                    row.update(_null(study, curves, n, kappa, row["score"]))
                if study.cfg.select_kappa:
                    row["score_sel"] = _scores(study, s, n, study.sel)["score"]
                    if row["score_sel"] > best_sel:
                        best_kappa, best_sel = kappa, row["score_sel"]
            if d.kind != "random" and d.name in curves.flip:
                row["sign_flip"] = _flip(study, curves.flip[d.name].get(kappa), n)
            curve.append(row)
        res: dict[str, Any] = {
            "kind": d.kind,
            "targets": [study.model.tokenizer.decode([t]) for t in d.targets],
            "curve": curve,
            "selected": None,
        }
        if best_kappa is not None:
            res["selected"] = _selected(study, curves, n, best_kappa, curve)
        results[d.name] = res
    return results


def _selected(
    study: SiteStudy, curves: Curves, n: int, kappa: float, curve: list[dict[str, Any]]
) -> dict[str, Any]:
    d = study.directions[n]
    s = curves.plus[d.name][kappa]
    assert isinstance(s, Setting)
    row = next(r for r in curve if r["kappa"] == kappa)
    keep = ("null_mean", "null_std", "null_max", "z", "sign_flip")
    out: dict[str, Any] = {"kappa": kappa, "alpha": s.calibration.alpha}
    out.update(_scores(study, s, n, study.eval))
    out.update({k: row[k] for k in keep if k in row})
    out["samples"] = s.samples
    # Specificity against the other non-random directions' target sets.
    others = [g for g, e in enumerate(study.directions) if g != n and e.kind != "random"]
    if others:
        c_g = [_scores(study, s, g, study.eval)["concept_gain"] for g in others]
        out["specificity"] = out["concept_gain"] / max(sum(c_g) / len(c_g), 1e-3)
    # TokenChange vs targets: do the tokens steering promotes most match the target set?
    change, targets = set(s.raised[: len(d.targets)]), set(d.targets)
    out["token_change_overlap"] = len(change & targets) / len(change | targets)
    return out


def summarize(
    results: dict[str, Any], kappas: tuple[float, ...], selected: bool = True
) -> list[dict[str, Any]]:
    """One row per (kind, κ) and, if κ* was `selected`, per kind at it: means over directions."""
    kinds = sorted({r["kind"] for r in results.values()})
    rows: list[dict[str, Any]] = []
    for kind in kinds:
        group = [r for r in results.values() if r["kind"] == kind]
        for kappa in sorted(kappas):
            pts = [p for r in group for p in r["curve"] if p["kappa"] == kappa]
            hit = [p for p in pts if p["reached"]]
            rows.append(
                {
                    "method": kind,
                    "kappa": kappa,
                    "directions": len(group),
                    "reached": len(hit),
                    **{m: _mean([p[m] for p in hit]) for m in MEANS},
                    "delta_ce_ref": _mean([p.get("delta_ce_ref") for p in hit]),
                    **_controls(hit),
                }
            )
        chosen = [r["selected"] for r in group if r["selected"] is not None]
        if not selected:
            continue  # select_kappa off: no selection was made, so no row claims one
        rows.append(
            {
                "method": kind,
                "kappa": "selected",
                "directions": len(group),
                "reached": len(chosen),
                **{m: _mean([c[m] for c in chosen]) for m in MEANS},
                **_controls(chosen),
                "specificity": _mean([c.get("specificity") for c in chosen]),
            }
        )
    return rows


def _controls(points: list[dict[str, Any]]) -> dict[str, float | None]:
    flips = [p["sign_flip"] for p in points if (p.get("sign_flip") or {}).get("reached")]
    return {
        "z": _mean([p.get("z") for p in points]),
        "null_score": _mean([p.get("null_mean") for p in points]),
        "sign_flip_concept": _mean([f["concept_gain"] for f in flips]),
    }


def _mean(xs: list[Any]) -> float | None:
    vals = [x for x in xs if x is not None and math.isfinite(x)]
    return sum(vals) / len(vals) if vals else None

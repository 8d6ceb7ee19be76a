"""Steering scores from measured settings: per-κ curves, strength selection, controls.

For a direction f with target set T_f at strength α(κ), over a prompt split:
    c = concept gain on T_f, f = fluency, S = harmonic mean (metrics.py), each a prompt mean.
κ* maximizes S on the selection split; every number reported at κ* comes from the evaluation
split. Controls at κ*: random directions at the same KL scored on T_f (null mean, std, max and
the z-score of S, undefined when the null has no spread), the sign flip −α(κ*), and
specificity c(f on T_f) / mean_g c(f on T_g) over the other directions g of the study (the
denominator is floored at 1e-3 so it stays finite).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from tqdm import tqdm

from saekit.steering.directions import Direction
from saekit.steering.metrics import concept_gain, fluency, harmonic
from saekit.steering.protocol import Setting, SiteStudy

MEANS = ("score", "concept_gain", "fluency", "concept_rate", "delta_nll")
"""Metrics averaged over directions in the summary rows."""


def _scores(study: SiteStudy, s: Setting, n: int, rows: list[int]) -> dict[str, float]:
    base = study.base
    c_P = concept_gain(base.mass_PN[rows, n], s.mass_PN[rows, n])
    f_P = fluency(s.nll_P[rows] - base.nll_P[rows], s.rep3_P[rows])
    return {
        "score": float(harmonic(c_P, f_P).mean()),
        "concept_gain": float(c_P.mean()),
        "fluency": float(f_P.mean()),
        "hit10": float(s.hit_PN[rows, n].mean()),
        "concept_rate": float((s.rate_PN[rows, n] - base.rate_PN[rows, n]).mean()),
        "delta_nll": float((s.nll_P[rows] - base.nll_P[rows]).mean()),
        "rep3": float(s.rep3_P[rows].mean()),
    }


def measure_curves(study: SiteStudy, desc: str = "steering") -> dict[str, dict[float, Any]]:
    """Every direction's reached settings, keyed by name then κ (positive sign)."""
    out: dict[str, dict[float, Setting]] = {}
    for d in tqdm(study.directions, desc=desc, unit="direction"):
        settings: dict[float, Any] = {}
        for cal in study.calibrate(d, study.cfg.kl_targets):
            # An unreached target keeps its Calibration (reached=False) and is never measured.
            settings[cal.kappa] = study.measure(d, cal) if cal.reached else cal
        out[d.name] = settings
    return out


def score_site(study: SiteStudy, curves: dict[str, dict[float, Any]]) -> dict[str, Any]:
    """Per-direction results (curve, selection, controls) for one site."""
    names = [d.name for d in study.directions]
    randoms = [i for i, d in enumerate(study.directions) if d.kind == "random"]
    results: dict[str, Any] = {}
    for n, d in enumerate(study.directions):
        curve, best_kappa, best_sel = [], None, -1.0
        for kappa, s in curves[d.name].items():
            cal = s.calibration if isinstance(s, Setting) else s
            row: dict[str, Any] = {
                "kappa": kappa,
                "alpha": cal.alpha,
                "kl": cal.kl,
                "reached": cal.reached,
            }
            if isinstance(s, Setting):
                sel = _scores(study, s, n, study.sel)
                row.update({"score_sel": sel["score"], **_scores(study, s, n, study.eval)})
                row["delta_ce_ref"] = (
                    s.ce_ref - study.base.ce_ref
                    if s.ce_ref is not None and study.base.ce_ref is not None
                    else None
                )
                if sel["score"] > best_sel:
                    best_kappa, best_sel = kappa, sel["score"]
            curve.append(row)
        res: dict[str, Any] = {
            "kind": d.kind,
            "targets": [study.model.tokenizer.decode([t]) for t in d.targets],
            "curve": curve,
            "selected": None,
        }
        if best_kappa is not None:
            res["selected"] = _selected(study, curves, d, n, best_kappa, randoms, names)
        results[d.name] = res
    return results


def _selected(
    study: SiteStudy,
    curves: dict[str, dict[float, Any]],
    d: Direction,
    n: int,
    kappa: float,
    randoms: list[int],
    names: list[str],
) -> dict[str, Any]:
    s: Setting = curves[d.name][kappa]
    out: dict[str, Any] = {"kappa": kappa, "alpha": s.calibration.alpha}
    out.update(_scores(study, s, n, study.eval))
    out["samples"] = s.samples
    # Null: random directions at the same κ, scored on this direction's targets.
    null = [
        _scores(study, curves[names[r]][kappa], n, study.eval)["score"]
        for r in randoms
        if r != n and isinstance(curves[names[r]].get(kappa), Setting)
    ]
    if d.kind != "random" and null:
        mean = sum(null) / len(null)
        std = float(torch.tensor(null).std()) if len(null) > 1 else 0.0
        out["null_mean"], out["null_std"], out["null_max"] = mean, std, max(null)
        # No floor on the spread: a null whose directions all score the same (often all 0)
        # says nothing about how unusual S is, so z is left undefined; null_max still shows
        # whether S beats every random direction.
        out["z"] = (out["score"] - mean) / std if std > 0 else None
    # Specificity against the other non-random directions' target sets.
    others = [g for g, e in enumerate(study.directions) if g != n and e.kind != "random"]
    if others:
        c_g = [_scores(study, s, g, study.eval)["concept_gain"] for g in others]
        c_other = sum(c_g) / len(c_g)
        out["specificity"] = out["concept_gain"] / max(c_other, 1e-3)
    # TokenChange vs targets: do the tokens steering promotes most match the target set?
    k = len(d.targets)
    change = set(s.logit_gain_V.topk(k).indices.tolist())
    out["token_change_overlap"] = len(change & set(d.targets)) / len(change | set(d.targets))
    if study.cfg.sign_flip and d.kind != "random":
        (cal,) = study.calibrate(d, [kappa], sign=-1.0)
        flip: dict[str, Any] = {"alpha": cal.alpha, "kl": cal.kl, "reached": cal.reached}
        if cal.reached:
            flip.update(_scores(study, study.measure(d, cal), n, study.eval))
        out["sign_flip"] = flip
    return out


def summarize(results: dict[str, Any], kappas: tuple[float, ...]) -> list[dict[str, Any]]:
    """One row per (kind, κ) and per kind at the selected κ: means over directions."""
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
                }
            )
        chosen = [r["selected"] for r in group if r["selected"] is not None]
        rows.append(
            {
                "method": kind,
                "kappa": "selected",
                "directions": len(group),
                "reached": len(chosen),
                **{m: _mean([c[m] for c in chosen]) for m in MEANS},
                "z": _mean([c["z"] for c in chosen if c.get("z") is not None]),
                "specificity": _mean([c["specificity"] for c in chosen if "specificity" in c]),
                "sign_flip_score": _mean(
                    [c["sign_flip"]["score"] for c in chosen if "score" in c.get("sign_flip", {})]
                ),
            }
        )
    return rows


def _mean(xs: list[float]) -> float | None:
    vals = [x for x in xs if x is not None and math.isfinite(x)]
    return sum(vals) / len(vals) if vals else None

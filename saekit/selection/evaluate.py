"""Retrieval quality of every method on a labelled study pool (docs/selection.md).

Every target of the study (one category, or a blend of 2-3) is scored in turn: its exemplars
(never in the pool) form the target, and a method scores the whole pool; the target's
categories are the relevant samples, R of them. With ratio ρ a method selects ⌈ρN⌉ samples:
    precision@ρ = relevant share of the selection,
    recall@ρ    = selected relevant samples / R,
    ROC-AUC     = P(score of a relevant sample > score of another), ties count ½
                  (Mann-Whitney U over average ranks).
The default ρ is R/N per target (R-precision: precision = recall, 1 for a perfect ranking).
Means carry 95% bootstrap CIs over targets, and every method its paired difference to MoNA.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saekit.selection.config import SelectConfig
from saekit.selection.pool import StudyPool
from saekit.selection.scoring import Embeddings, score_methods
from saekit.selection.sparse import n_selected, rank
from saekit.selection.stats import bootstrap_ci, fmt_ci, paired_ci


def roc_auc(scores_N: Tensor, positive_N: Tensor) -> float:
    """Area under the ROC curve, ties counted ½ (NaN without both classes)."""
    pos = positive_N.bool().numpy()
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    s = scores_N.double().numpy()
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    start = 0
    for end in range(1, len(s) + 1):  # average ranks over runs of equal scores
        if end == len(s) or sorted_s[end] != sorted_s[start]:
            ranks[order[start:end]] = (start + end + 1) / 2
            start = end
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def retrieval_metrics(scores_N: Tensor, positive_N: Tensor, ratio: float) -> dict[str, float]:
    k = n_selected(ratio, len(scores_N))
    picked = rank(scores_N, k)
    hits = int(positive_N[picked].sum())
    return {
        "precision": hits / k,
        "recall": hits / max(int(positive_N.sum()), 1),
        "auc": roc_auc(scores_N, positive_N),
    }


def retrieval_eval(
    emb: Embeddings, study: StudyPool, cfg: SelectConfig, ratio: float | None = None
) -> dict[str, Any]:
    """Per-target precision@R / AUC of every method, bootstrap CIs over targets, and each
    method's paired difference against MoNA."""
    per_target: dict[str, dict[str, dict[str, float]]] = {}
    labels_N = [s.category for s in study.pool]
    for t in study.targets:
        positive_N = torch.tensor([lab in t.categories for lab in labels_N])
        rho = ratio if ratio is not None else float(positive_N.sum()) / len(labels_N)
        scores = score_methods(emb, study.pool, study.exemplars, cfg, study.exemplar_rows(t))
        per_target[t.name] = {m: retrieval_metrics(s, positive_N, rho) for m, s in scores.items()}
    names = [t.name for t in study.targets]
    methods = list(per_target[names[0]])

    def column(m: str, k: str, kinds: tuple[str, ...] = ("single", "mixed")) -> list[float]:
        return [per_target[t.name][m][k] for t in study.targets if t.kind in kinds]

    summary = {
        m: {k: bootstrap_ci(column(m, k), seed=cfg.seed) for k in ("precision", "auc")}
        for m in methods
    }
    by_kind = {
        kind: {m: bootstrap_ci(column(m, "precision", (kind,)), seed=cfg.seed) for m in methods}
        for kind in sorted({t.kind for t in study.targets})
    }
    paired = {
        m: {
            k: paired_ci(column(m, k), column("mona", k), seed=cfg.seed)
            for k in ("precision", "auc")
        }
        for m in methods
        if m != "mona" and "mona" in methods
    }
    return {
        "ratio": "R: the target's positive count" if ratio is None else ratio,
        "pool_size": len(study.pool),
        "targets": {
            t.name: {"kind": t.kind, "categories": list(t.categories)} for t in study.targets
        },
        "summary": summary,
        "precision_by_kind": by_kind,
        "paired_vs_mona": paired,
        "per_target": per_target,
    }


def retrieval_table(result: dict[str, Any]) -> str:
    lines = [
        f"retrieval: {len(result['targets'])} targets, pool {result['pool_size']}; mean and "
        "95% bootstrap CI over targets; Δ = method − mona (paired)",
        f"{'method':10s} {'precision@R':>22s} {'ROC-AUC':>22s} {'Δ precision':>22s} {'Δ AUC':>22s}",
    ]
    for m, row in result["summary"].items():
        diff = result["paired_vs_mona"].get(m)
        cells = [fmt_ci(row["precision"]), fmt_ci(row["auc"])]
        cells += [fmt_ci(diff["precision"]), fmt_ci(diff["auc"])] if diff else ["", ""]
        lines.append(f"{m:10s} " + " ".join(f"{c:>22s}" for c in cells))
    return "\n".join(lines)

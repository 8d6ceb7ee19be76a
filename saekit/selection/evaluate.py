"""Retrieval quality of every method on a labelled pool (issue deliverable 5a).

Each of C target categories is held out in turn: its `n_target` exemplars (never in the pool)
form the target, and a method scores the whole pool. With ratio ρ it selects ⌈ρN⌉ samples:
    precision@ρ = same-category share of the selection,
    recall@ρ    = selected same-category samples / same-category samples in the pool,
    ROC-AUC     = P(score of a same-category sample > score of another), ties count ½
                  (Mann-Whitney U over average ranks).
The default ρ is the category share of the pool (1/C), where a perfect ranking reaches
precision = recall = 1. Mean ± std are over categories.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saekit.selection.config import SelectConfig
from saekit.selection.data import Sample
from saekit.selection.scoring import Embeddings, score_methods
from saekit.selection.sparse import n_selected, rank


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


def mean_std(values: Sequence[float]) -> dict[str, float]:
    arr = np.array([v for v in values if not math.isnan(v)], dtype=np.float64)
    if arr.size == 0:
        return {"mean": math.nan, "std": math.nan}
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0}


def retrieval_eval(
    emb: Embeddings,
    pool: Sequence[Sample],
    target: Sequence[Sample],
    cfg: SelectConfig,
    ratio: float | None = None,
) -> dict[str, Any]:
    """Per-category and aggregate precision / recall / AUC of every method."""
    categories = sorted({s.category for s in target})
    labels_N = [s.category for s in pool]
    rho = ratio if ratio is not None else 1.0 / len({*labels_N})
    per_cat: dict[str, dict[str, dict[str, float]]] = {}
    for c in categories:
        rows = [i for i, s in enumerate(target) if s.category == c]
        positive_N = torch.tensor([lab == c for lab in labels_N])
        scores = score_methods(emb, pool, target, cfg, rows)
        per_cat[c] = {m: retrieval_metrics(s, positive_N, rho) for m, s in scores.items()}
    methods = list(next(iter(per_cat.values())))
    summary = {
        m: {
            k: mean_std([per_cat[c][m][k] for c in categories])
            for k in ("precision", "recall", "auc")
        }
        for m in methods
    }
    return {
        "ratio": rho,
        "pool_size": len(pool),
        "categories": categories,
        "n_target_per_category": len(target) // max(len(categories), 1),
        "summary": summary,
        "per_category": per_cat,
    }


def retrieval_table(result: dict[str, Any]) -> str:
    lines = [
        f"retrieval: {len(result['categories'])} target categories, pool {result['pool_size']}, "
        f"ratio {result['ratio']:.4f}",
        f"{'method':10s} {'precision':>15s} {'recall':>15s} {'ROC-AUC':>15s}",
    ]
    for m, row in result["summary"].items():
        cells = [
            f"{row[k]['mean']:.3f} ± {row[k]['std']:.3f}" for k in ("precision", "recall", "auc")
        ]
        lines.append(f"{m:10s} " + " ".join(f"{c:>15s}" for c in cells))
    return "\n".join(lines)

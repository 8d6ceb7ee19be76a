"""Per-feature views derived from one `FeatureData`: token entropies, quantile samples,
activation histogram, co-occurring and decoder-similar neighbours, vocabulary projection."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saekit.interp.collect import HIST_BINS, HIST_RANGE, FeatureData

NEIGHBOUR_BLOCK = 512
"""Features per block of the [block, S] similarity products (bounded memory for big S)."""
QUANTILES = 10
PER_QUANTILE = 2


def normalized_entropy(ids: list[int]) -> float:
    """H(q) / log N of the empirical distribution of `ids` (0: one token, 1: all distinct)."""
    n = len(ids)
    if n <= 1:
        return 0.0
    probs = np.array(list(Counter(ids).values()), dtype=np.float64) / n
    return float(-(probs * np.log(probs)).sum() / math.log(n))


def token_entropies(data: FeatureData, s: int) -> tuple[float, float, list[tuple[int, int]]]:
    """(top-token entropy, previous-token entropy, most common top tokens with counts)."""
    valid = data.tok_vals_SN[s] > 0
    ids = data.tok_ids_SN[s][valid].tolist()
    prev = data.tok_prev_SN[s][valid].tolist()
    return normalized_entropy(ids), normalized_entropy(prev), Counter(ids).most_common(10)


def quantile_samples(data: FeatureData, s: int) -> list[list[int]]:
    """Reservoir slots grouped into activation quantiles, highest first, 2 per quantile."""
    slots = [i for i, c in enumerate(data.res_ex_SR[s].tolist()) if c >= 0]
    if not slots:
        return []
    maxes = data.res_acts_SRL[s, slots].amax(dim=1)
    order = [slots[i] for i in torch.argsort(maxes, descending=True).tolist()]
    groups = np.array_split(np.array(order), min(QUANTILES, len(order)))
    return [g[:PER_QUANTILE].tolist() for g in groups]


def activation_histogram(data: FeatureData, s: int) -> dict[str, list[float]]:
    """Occupied bins of the feature's log10-activation histogram."""
    counts = data.hist_SH[s]
    nz = torch.nonzero(counts).flatten()
    if not len(nz):
        return {"edges": [], "counts": []}
    lo, hi = int(nz.min()), int(nz.max()) + 1
    edges = torch.linspace(*HIST_RANGE, HIST_BINS + 1)[lo : hi + 1]
    return {"edges": [round(float(e), 3) for e in edges], "counts": counts[lo:hi].tolist()}


def cooccurrence_neighbours(ex_max_CS: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Top-n features by Jaccard overlap of the examples they fire in: ([S, n] ids, values)."""
    active_CS = (ex_max_CS > 0).float()
    count_S = active_CS.sum(0)
    ids, vals = [], []
    for a in range(0, active_CS.shape[1], NEIGHBOUR_BLOCK):
        blk = slice(a, a + NEIGHBOUR_BLOCK)
        inter_BS = active_CS[:, blk].T @ active_CS
        jac_BS = inter_BS / (count_S[blk, None] + count_S[None] - inter_BS).clamp_min(1)
        jac_BS[torch.arange(jac_BS.shape[0]), torch.arange(a, a + jac_BS.shape[0])] = -1
        v, i = jac_BS.topk(min(n, jac_BS.shape[1] - 1), dim=1)
        ids.append(i)
        vals.append(v)
    return torch.cat(ids), torch.cat(vals)


def decoder_neighbours(W_dec_SD: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Top-n features by cosine similarity of decoder rows (redundancy, splitting)."""
    unit = W_dec_SD.float() / W_dec_SD.float().norm(dim=1, keepdim=True).clamp_min(1e-8)
    ids, vals = [], []
    for a in range(0, unit.shape[0], NEIGHBOUR_BLOCK):
        cos_BS = unit[a : a + NEIGHBOUR_BLOCK] @ unit.T
        cos_BS[torch.arange(cos_BS.shape[0]), torch.arange(a, a + cos_BS.shape[0])] = -2
        v, i = cos_BS.topk(min(n, cos_BS.shape[1] - 1), dim=1)
        ids.append(i)
        vals.append(v)
    return torch.cat(ids), torch.cat(vals)


def unembedding(model: Any) -> Tensor | None:
    """W_U [d_model, vocab] with the final norm's weight folded in, or None if not found."""
    m = model.model
    if model.is_transformer_lens:
        W_U = m.W_U.detach().float()
        ln = getattr(m, "ln_final", None)
        w = getattr(ln, "w", None)
        return W_U * w.detach().float()[:, None] if isinstance(w, Tensor) else W_U
    out = m.get_output_embeddings() if hasattr(m, "get_output_embeddings") else None
    if out is None:
        return None
    W_U = out.weight.detach().float().T
    norm = getattr(getattr(m, "model", None), "norm", None)
    w = getattr(norm, "weight", None)
    return W_U * w.detach().float()[:, None] if isinstance(w, Tensor) else W_U


def vocab_projection(W_dec_SD: Tensor, W_U_DV: Tensor, n: int) -> dict[str, Tensor]:
    """Top/bottom-n logits of every decoder row through the unembedding ([S, n] each)."""
    tops, tids, bots, bids = [], [], [], []
    for a in range(0, W_dec_SD.shape[0], NEIGHBOUR_BLOCK):
        logits_BV = W_dec_SD[a : a + NEIGHBOUR_BLOCK].float() @ W_U_DV
        t = logits_BV.topk(n, dim=1)
        b = logits_BV.topk(n, dim=1, largest=False)
        tops.append(t.values)
        tids.append(t.indices)
        bots.append(b.values)
        bids.append(b.indices)
    return {
        "top": torch.cat(tops),
        "top_ids": torch.cat(tids),
        "bottom": torch.cat(bots),
        "bottom_ids": torch.cat(bids),
    }

"""Per-feature records as JSON: `features/I.json` (everything the feature page shows) and the rows
of `table.json` (what the index table shows). Token ids become display strings here."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from saekit.dictionaries import Dictionary
from saekit.interp.collect import FeatureData
from saekit.interp.config import InterpConfig
from saekit.interp.explain import decode_key
from saekit.interp.views import (
    activation_histogram,
    cooccurrence_neighbours,
    decoder_neighbours,
    quantile_samples,
    token_entropies,
    unembedding,
    vocab_projection,
)
from saekit.rundir import write_json


class TokenText:
    """Token id → display string, cached (a tokenizer decodes one id at a time slowly)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.cache: dict[int, str] = {}

    def __call__(self, tid: int) -> str:
        if tid not in self.cache:
            text = self.tokenizer.decode([tid]) if self.tokenizer is not None else f"<{tid}>"
            self.cache[tid] = text
        return self.cache[tid]


def _r(x: float) -> float:
    return float(f"{x:.4g}")


def _example(data: FeatureData, ex: int, acts: np.ndarray, text: TokenText) -> dict[str, Any]:
    toks = data.ex_tokens_CL[ex].tolist()
    mask = data.ex_mask_CL[ex].tolist()
    return {
        "tokens": [text(t) for t in toks],
        "acts": [_r(a) if m else 0.0 for a, m in zip(acts.tolist(), mask)],
        "max": _r(float(acts.max())),
        "test": bool(data.ex_test_C[ex]),
    }


def feature_records(
    model: Any,
    sae: Dictionary,
    data: FeatureData,
    scores: dict[int, dict[str, Any]],
    cfg: InterpConfig,
    out_dir: Path,
) -> list[dict[str, Any]]:
    """Write one JSON per feature that fired; return the index-table rows of every feature."""
    text = TokenText(model.tokenizer)
    n = cfg.n_neighbours
    co_ids, co_vals = cooccurrence_neighbours(data.ex_max_CS.float(), n)
    W_dec = sae.W_dec.detach().float().cpu()
    dec_ids, dec_vals = decoder_neighbours(W_dec, n)
    W_U = unembedding(model)
    proj = None
    if W_U is not None and W_U.shape[0] == sae.d_out:  # the space the decoder writes
        proj = vocab_projection(W_dec, W_U.cpu(), cfg.n_logits)
    if out_dir.exists():
        shutil.rmtree(out_dir)  # stale pages of an earlier, wider dictionary must not survive
    rows = []
    n_tok = max(data.n_tokens, 1)
    vocab = int(data.token_counts_V.shape[0])  # the key space of the explanations
    for s in tqdm(range(sae.d_sae), desc="feature pages", disable=sae.d_sae < 2000):
        count = int(data.counts_S[s])
        sc = scores.get(s, {})
        expl = ["".join(text(t) for t in decode_key(k, vocab)) for k in sc.get("explanation", [])]
        ent, prev_ent, common = token_entropies(data, s)
        row = {
            "index": s,
            "density": count / n_tok,
            "max_act": _r(float(data.max_S[s])),
            "mean_act": _r(float(data.sums_S[s]) / max(count, 1)),
            "token_entropy": _r(ent) if count else None,
            "top_tokens": [text(t) for t, _ in common[:3]],
            "explanation": expl,
            **{
                k: (_r(v) if isinstance(v, float) else v)
                for k, v in sc.items()
                if k != "explanation"
            },
        }
        rows.append(row)
        if not count:
            continue
        top = [
            _example(data, int(c), data.top_acts_SKL[s, i].numpy(), text)
            for i, c in enumerate(data.top_ex_SK[s].tolist())
            if data.top_max_SK[s, i] > 0
        ]
        quant = [
            [
                _example(data, int(data.res_ex_SR[s, i]), data.res_acts_SRL[s, i].numpy(), text)
                for i in group
            ]
            for group in quantile_samples(data, s)
        ]
        page = row | {
            "count": count,
            "prev_token_entropy": _r(prev_ent),
            "top_token_counts": [[text(t), c] for t, c in common],
            "top_examples": top,
            "quantiles": quant,
            "histogram": activation_histogram(data, s),
            "cooccurrence": [
                [int(j), _r(float(v))] for j, v in zip(co_ids[s], co_vals[s]) if v > 0
            ],
            "decoder_neighbours": [[int(j), _r(float(v))] for j, v in zip(dec_ids[s], dec_vals[s])],
        }
        if proj is not None:
            page["logits"] = {
                side: [
                    [text(int(t)), _r(float(v))]
                    for t, v in zip(proj[f"{side}_ids"][s], proj[side][s])
                ]
                for side in ("top", "bottom")
            }
        write_json(out_dir / f"{s}.json", page, indent=None)
    return rows

"""What a feature means: where it writes (output view) and what turns it on (input view).

A feature is a decoder row W_dec[i] (an SNMF atom: a sparse direction over the d_mlp neurons).
Its views, as in the SNMF paper (arXiv 2506.10920), for a dictionary read at an MLP's
hidden activation (`blocks.L.mlp.hook_post`, the input of W_out):

    residual direction   f_i = W_out W_dec[i]               (d_model); models with a post-MLP
                         norm (Gemma-2's ln2_post) use f_i = ln2_post(W_out W_dec[i] + b_out)
    vocabulary view      logits_i = ln_final(f_i) W_U: the top tokens are what the feature
                         promotes, the bottom tokens what it suppresses (for nonnegative codes
                         the sign of f_i is meaningful)
    input view           the held-out tokens with the largest codes z_i, each with the
                         `context` tokens before it

The output views read TransformerLens weights (blocks[L].mlp.W_out, ln_final, W_U) through
`HookedModel.model`; on other backends or hooks only the input view is produced. Hierarchical
dictionaries (`Dictionary.feature_parents`) also list each feature's parent.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor

from saekit.dictionaries import Dictionary
from saekit.models.hooks import HookedModel

_MLP_POST = re.compile(r"blocks\.(\d+)\.mlp\.hook_post")


def mlp_layer(model: HookedModel, hook: str) -> int | None:
    """Layer L of a TransformerLens `blocks.L.mlp.hook_post` hook, else None."""
    match = _MLP_POST.fullmatch(hook)
    return int(match.group(1)) if match and model.is_transformer_lens else None


@torch.no_grad()
def residual_directions(model: HookedModel, layer: int, W_dec_SD: Tensor) -> Tensor:
    """f_S,M: each feature's write into the residual stream (post-MLP norm applied if any)."""
    block: Any = model.model.blocks[layer]  # type: ignore[index]
    W_out_DM = block.mlp.W_out
    dirs_SM = W_dec_SD.to(W_out_DM) @ W_out_DM
    if hasattr(block, "ln2_post"):  # Gemma-2 normalizes the MLP output before the residual add
        dirs_SM = block.ln2_post((dirs_SM + block.mlp.b_out)[:, None, :])[:, 0]
    return dirs_SM


@torch.no_grad()
def vocab_projection(
    model: HookedModel, dirs_SM: Tensor, top: int = 10
) -> tuple[list[list[tuple[str, float]]], list[list[tuple[str, float]]]]:
    """(top, bottom) `top` tokens of ln_final(f_i) W_U per feature, with their logits."""
    tl = model.model
    logits_SV = tl.ln_final(dirs_SM[:, None, :])[:, 0] @ tl.W_U  # type: ignore[operator]
    hi, lo = logits_SV.topk(top, dim=1), logits_SV.topk(top, dim=1, largest=False)
    return _named(model, hi.values, hi.indices), _named(model, lo.values, lo.indices)


def _named(model: HookedModel, vals_SK: Tensor, ids_SK: Tensor) -> list[list[tuple[str, float]]]:
    tok = model.tokenizer
    return [
        [(tok.decode([int(t)]), round(float(v), 4)) for v, t in zip(v_K, t_K)]
        for v_K, t_K in zip(vals_SK, ids_SK)
    ]


@torch.no_grad()
def input_view(
    model: HookedModel,
    sae: Dictionary,
    hook: str,
    windows: Any,
    n_windows: int = 64,
    top: int = 10,
    context: int = 8,
    batch_windows: int = 8,
) -> list[list[dict[str, Any]]]:
    """Per feature, the `top` held-out tokens with the largest codes and their contexts."""
    n_windows = min(n_windows, len(windows))
    codes, where = [], []
    for start in range(0, n_windows, batch_windows):
        tokens_BT = windows.get(start, min(batch_windows, n_windows - start))
        mask_BT = windows.token_mask(tokens_BT)
        acts_BTD = model.capture(tokens_BT.to(model.device), [hook])[hook]
        codes.append(sae.encode(acts_BTD[mask_BT.to(acts_BTD.device)].float()).cpu())
        b_N, t_N = mask_BT.nonzero(as_tuple=True)
        where.append(torch.stack([b_N + start, t_N], dim=1))
    if not codes:
        return [[] for _ in range(sae.d_sae)]
    z_NS, where_N2 = torch.cat(codes), torch.cat(where)
    vals_KS, rows_KS = z_NS.topk(min(top, z_NS.shape[0]), dim=0)
    tok = model.tokenizer
    out: list[list[dict[str, Any]]] = []
    for s in range(sae.d_sae):
        entries = []
        for v, r in zip(vals_KS[:, s], rows_KS[:, s]):
            if float(v) <= 0:
                break  # a feature that never fires on these windows lists fewer tokens
            w, t = (int(x) for x in where_N2[r])
            ids_T = windows.get(w, 1)[0]
            entries.append(
                {
                    "token": tok.decode([int(ids_T[t])]),
                    "context": tok.decode(ids_T[max(0, t - context) : t].tolist()),
                    "activation": round(float(v), 5),
                }
            )
        out.append(entries)
    return out


def feature_views(
    model: HookedModel,
    sae: Dictionary,
    hook: str,
    windows: Any,
    n_windows: int = 64,
    top: int = 10,
) -> dict[str, Any]:
    """The `feature_views` section of report.json: both views of every feature (+ parents)."""
    inputs = input_view(model, sae, hook, windows, n_windows, top)
    layer = mlp_layer(model, hook)
    tops: list[Any] = [None] * sae.d_sae
    bottoms: list[Any] = [None] * sae.d_sae
    if layer is not None:
        tops, bottoms = vocab_projection(model, residual_directions(model, layer, sae.W_dec), top)
    parents = sae.feature_parents()
    features = [
        {
            "index": i,
            "input_top_tokens": inputs[i],
            "output_top_tokens": tops[i],
            "output_bottom_tokens": bottoms[i],
            **({"parent": parents[i]} if parents is not None else {}),
        }
        for i in range(sae.d_sae)
    ]
    return {"layer": layer, "features": features}

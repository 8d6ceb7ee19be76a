"""TransformerLens weights stored in the memory layout its forward reads them in.

TransformerLens keeps its weights as [d_model, d_mlp], [n_heads, d_model, d_head] and so on,
and on every forward turns them into the contiguous [out, in] matrices `F.linear` wants:
`W_gate.T.contiguous()`, `W_U.T.contiguous()`, `rearrange(W_Q, "h d e -> (h e) d")`. Those
are copies of every weight matrix of the model on every call. A forward over thousands of
positions hardly notices; a KV-cached decoding step over one position per row copies the whole
model (about 540 MB for SmolLM2-135M, the unembedding alone 113 MB) to multiply it by a few
dozen rows (what that costs: docs/benchmarks.md, "Timings behind design choices").

`lay_out_for_reads` stores each such weight with the strides that make TransformerLens' own
transpose or rearrange a contiguous view, so `.contiguous()` and `reshape` copy nothing. The
values are unchanged and `F.linear` receives the same contiguous matrix as before, so every
output of the default forward is bit-identical; only where the bytes sit changes. (With
`use_attn_result`, TL multiplies W_O elementwise without copying it: a model loaded that way
keeps W_O as it is, and one switched to it later sums per-head results in another order, which
moves them by float rounding only.)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# (parameter name, the permutation TransformerLens applies before it needs a contiguous tensor)
_READS: dict[str, tuple[tuple[str, tuple[int, ...]], ...]] = {
    # simple_attn_linear: "head_index d_model d_head -> (head_index d_head) d_model"; the
    # output projection: "head_index d_head d_model -> d_model (head_index d_head)".
    "attention": (
        ("W_Q", (0, 2, 1)),
        ("W_K", (0, 2, 1)),
        ("W_V", (0, 2, 1)),
        ("_W_K", (0, 2, 1)),
        ("_W_V", (0, 2, 1)),
        ("W_O", (2, 0, 1)),
    ),
    # GatedMLP and Unembed: F.linear(x, W.T.contiguous())
    "gated_mlp": (("W_gate", (1, 0)), ("W_in", (1, 0)), ("W_out", (1, 0))),
    "unembed": (("W_U", (1, 0)),),
}


def _kind(module: nn.Module) -> str | None:
    from transformer_lens.components import AbstractAttention, GatedMLP, Unembed

    if isinstance(module, AbstractAttention):
        return "attention"
    if isinstance(module, GatedMLP):
        return "gated_mlp"
    if isinstance(module, Unembed):
        return "unembed"
    return None


def _store_as_read(param: nn.Parameter, perm: tuple[int, ...]) -> None:
    """Same values; memory laid out so that `param.permute(*perm)` is contiguous."""
    inverse = tuple(perm.index(i) for i in range(len(perm)))
    with torch.no_grad():
        param.data = param.data.permute(*perm).contiguous().permute(*inverse)


def lay_out_for_reads(model: Any) -> int:
    """Re-store a HookedTransformer's weights as its forward reads them; returns how many.

    Other models (HF modules read their [out, in] weights as stored) are left alone.
    """
    if not hasattr(model, "hook_dict"):
        return 0
    n = 0
    for module in model.modules():
        kind = _kind(module)
        if kind is None:
            continue
        for name, perm in _READS[kind]:
            if name == "W_O" and model.cfg.use_attn_result:
                continue
            param = module._parameters.get(name)
            if param is None or not param.is_floating_point() or param.ndim != len(perm):
                continue
            _store_as_read(param, perm)
            n += 1
    return n

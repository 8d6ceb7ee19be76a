"""Steering directions and their target token sets.

A `Direction` is a unit vector at one hook: a dictionary feature (SAE decoder row or SNMF
atom, both at the hook the dictionary was trained on), a difference-in-means direction
(mean activation on concept texts minus mean on neutral texts), a random direction, or any
vector. Its target token set T (docs/steering.md, "Protocol") is either

    vocab    the top-k tokens of ln_final(r) W_U, r the direction's write into the residual
             stream (r = v at residual hooks; r = W_out v at an MLP's hidden activation);
    maxact   the k tokens whose occurrences have the largest mean projection ⟨h_t, v⟩ on
             held-out text (input-centric; needs no unembedding, works at any hook).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saekit.dictionaries.base import Dictionary
from saekit.errors import SaekitError
from saekit.models.hooks import HookedModel
from saekit.steering.interventions import check_feature

Kind = str
"""A dictionary feature's method (topk, relu, snmf, ...), or diffmean, random, vector."""
_TL_MLP = re.compile(r"blocks\.(\d+)\.mlp\.hook_post")
_TL_RESID = re.compile(r"blocks\.\d+\.hook_(resid_pre|resid_mid|resid_post|mlp_out|attn_out)")
_HF_MLP = re.compile(r"model\.layers\.(\d+)\.mlp\.down_proj:in")
_HF_RESID = re.compile(r"model\.layers\.\d+(:in)?")


@dataclass
class Direction:
    """A unit steering vector at one hook, with its target token ids."""

    name: str
    kind: Kind
    hook: str
    vector_D: Tensor
    targets: list[int]


def unit(v_D: Tensor) -> Tensor:
    norm = float(v_D.norm())
    if not norm > 0:
        raise SaekitError("A steering direction must be non-zero; this one has norm 0.")
    return (v_D / norm).float()


def dictionary_direction(sae: Dictionary, index: int) -> Tensor:
    """Feature `index`'s decoder row (SAE) or atom (SNMF), unit norm."""
    check_feature(index, sae.d_sae)
    return unit(sae.W_dec[index].detach().float().cpu())


def load_vector(path: str | Path) -> Tensor:
    """A steering vector from .pt (a saved 1-D tensor), .npy or .safetensors (one tensor)."""
    p = Path(path)
    if not p.is_file():
        raise SaekitError(f"Vector file {p} does not exist.")
    if p.suffix == ".npy":
        import numpy as np

        v = torch.from_numpy(np.load(p, allow_pickle=False))
    elif p.suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = list(load_file(str(p)).values())
        if len(tensors) != 1:
            raise SaekitError(f"{p} holds {len(tensors)} tensors; save exactly one vector.")
        v = tensors[0]
    elif p.suffix == ".pt":
        v = torch.load(p, weights_only=True, map_location="cpu")
    else:
        raise SaekitError(f"Unknown vector format {p.suffix!r}; use .npy, .pt or .safetensors.")
    if not isinstance(v, Tensor) or v.ndim != 1:
        raise SaekitError(f"{p} must hold one 1-D vector, got {getattr(v, 'shape', type(v))}.")
    return v.float()


def random_directions(d: int, n: int, seed: int = 0) -> Tensor:
    """n Gaussian directions in R^d at unit norm (seeded), [n, d]."""
    gen = torch.Generator().manual_seed(seed)
    v_ND = torch.randn(n, d, generator=gen)
    return v_ND / v_ND.norm(dim=1, keepdim=True)


def diffmean_direction(
    model: HookedModel, hook: str, concept: Sequence[str], neutral: Sequence[str], max_len: int = 64
) -> Tensor:
    """Mean hook activation over the tokens of `concept` texts minus that over `neutral` texts."""
    return next(diffmean_directions(model, hook, {"concept": concept}, neutral, max_len))[1]


@torch.no_grad()
def diffmean_directions(
    model: HookedModel,
    hook: str,
    concepts: Mapping[str, Sequence[str]],
    neutral: Sequence[str],
    max_len: int = 64,
) -> Iterator[tuple[str, Tensor]]:
    """(concept, DiffMean direction) for each concept, the neutral mean computed once."""
    if not neutral or not all(concepts.values()):
        raise SaekitError("DiffMean needs at least one concept text and one neutral text.")
    neutral_D = _mean_act(model, hook, neutral, max_len)
    for name, texts in concepts.items():
        yield name, unit(_mean_act(model, hook, texts, max_len) - neutral_D)


def _mean_act(model: HookedModel, hook: str, texts: Sequence[str], max_len: int) -> Tensor:
    tok = model.tokenizer
    total, count = None, 0
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"][:max_len]
        if not ids:
            continue
        acts_TD = model.capture(torch.tensor([ids], device=model.device), [hook])[hook][0]
        s = acts_TD.float().sum(dim=0).cpu()
        total = s if total is None else total + s
        count += len(ids)
    if total is None:
        raise SaekitError("The labelled texts tokenize to nothing; give non-empty texts.")
    return total / count


@torch.no_grad()
def output_logits(model: HookedModel, hook: str, v_D: Tensor) -> Tensor:
    """ln_final(r) W_U for the direction's residual write r (vocabulary projection), [V]."""
    m: Any = model.model
    if model.is_transformer_lens:
        match = _TL_MLP.fullmatch(hook)
        if match:
            from saekit.eval.feature_views import residual_directions

            r_M = residual_directions(model, int(match.group(1)), v_D[None].to(model.device))[0]
        elif _TL_RESID.fullmatch(hook):
            r_M = v_D.to(model.device)
        else:
            raise _no_vocab(hook)
        return (m.ln_final(r_M[None, None]) @ m.W_U)[0, 0].float().cpu()
    match = _HF_MLP.fullmatch(hook)
    if match:
        down = m.model.layers[int(match.group(1))].mlp.down_proj
        r_M = down.weight.float() @ v_D.to(down.weight.device).float()
    elif _HF_RESID.fullmatch(hook):
        r_M = v_D.to(model.device).float()
    else:
        raise _no_vocab(hook)
    return m.lm_head(m.model.norm(r_M[None, None]).to(m.lm_head.weight.dtype))[0, 0].float().cpu()


def _no_vocab(hook: str) -> SaekitError:
    return SaekitError(
        f"Vocabulary targets are defined at residual hooks and MLP hidden activations, not "
        f"{hook!r}; use target tokens from activations instead (targets: maxact)."
    )


def vocab_targets(model: HookedModel, hook: str, v_D: Tensor, k: int) -> list[int]:
    """The k tokens the direction promotes most through the unembedding (special tokens out)."""
    logits_V = output_logits(model, hook, v_D)
    for tid in getattr(model.tokenizer, "all_special_ids", []) or []:
        if tid is not None and 0 <= int(tid) < logits_V.shape[0]:
            logits_V[int(tid)] = -float("inf")
    return [int(t) for t in logits_V.topk(k).indices]


@torch.no_grad()
def maxact_targets(
    model: HookedModel, hook: str, v_KD: Tensor, tokens_BT: Tensor, k: int, min_count: int = 3
) -> list[list[int]]:
    """Per direction, the k token ids with the largest mean projection on `tokens_BT`."""
    acts_BTD = model.capture(tokens_BT.to(model.device), [hook])[hook].float().cpu()
    proj_NK = acts_BTD.reshape(-1, acts_BTD.shape[-1]) @ v_KD.T.float()
    ids_N = tokens_BT.reshape(-1).cpu()
    V = int(ids_N.max()) + 1
    sums_VK = torch.zeros(V, v_KD.shape[0]).index_add_(0, ids_N, proj_NK)
    counts_V = torch.bincount(ids_N, minlength=V).float()
    means_VK = sums_VK / counts_V.clamp_min(1)[:, None]
    means_VK[counts_V < min_count] = -float("inf")
    for tid in getattr(model.tokenizer, "all_special_ids", []) or []:
        if tid is not None and 0 <= int(tid) < V:
            means_VK[int(tid)] = -float("inf")
    top = min(k, int((counts_V >= min_count).sum()))
    if top < 1:
        raise SaekitError(
            f"No token occurs {min_count}+ times in the reference text; give more text."
        )
    return [[int(t) for t in col] for col in means_VK.topk(top, dim=0).indices.T]

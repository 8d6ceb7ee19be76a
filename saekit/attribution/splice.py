"""A dictionary spliced into the forward pass, and the nodes its write decomposes into.

A dictionary reads one hook and writes one hook: an SAE writes where it reads; a transcoder
reads an MLP's input and writes its output. From one clean forward, at every ordinary
position t (BOS and other special tokens are never spliced, as in evaluation):

    z_t      = encode(x_t)                        codes, from the activation at the read hook
    y_t      = b + Σ_i z_t,i W_dec[i] + s_t + e_t  the activation at the write hook, exactly
    b        = decode(0)                           the baseline: no code, no skip, no error
    s_t      = x_t W_skipᵀ                         a skip transcoder's linear path (else none)
    e_t      = y_t − decode(z_t) − s_t             the error node (what the dictionary misses)

so y_t − b is the sum of one vector per active feature, the skip vector and one error vector,
the nodes that attribution scores. Codes come from the clean read-hook activation and stay
fixed: the splice only ever replaces the write hook's activation, so a read hook upstream of
the write hook (a transcoder's) sees the clean forward in every spliced run as well.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saekit.data.text import TokenWindows, special_ids
from saekit.dictionaries import Dictionary, load_dictionary
from saekit.errors import SaekitError
from saekit.models.hooks import HookedModel, Intervention
from saekit.recipe import Recipe, load_run


@dataclass(frozen=True)
class Splice:
    """One dictionary of a run, where it reads and where it writes."""

    name: str
    dictionary: Dictionary
    read_hook: str
    write_hook: str


@dataclass(frozen=True)
class Nodes:
    """The clean forward at a splice, decomposed (one prompt; T positions)."""

    mask_T: Tensor
    """Ordinary positions (spliced); special ones keep their activation and hold no node."""
    y_TD: Tensor
    """Clean activation at the write hook."""
    base_D: Tensor
    """Baseline activation decode(0) written at ordinary positions by the empty dictionary."""
    z_TS: Tensor
    """Codes (zero at special positions)."""
    err_TD: Tensor
    """Error node y − decode(z) − skip (zero at special positions)."""
    skip_TD: Tensor | None = None
    """Skip-path node x W_skipᵀ of a skip transcoder (zero at special positions); None when the
    dictionary has no skip path."""


def write_hook(dictionary: Dictionary, read_hook: str) -> str:
    """Where `dictionary` writes: its output hook when it is a transcoder, else where it reads."""
    return dictionary.cfg.output_hook or read_hook


def load_splices(
    run_dir: str | Path, layer_set: Sequence[str] = (), hook: str | None = None
) -> tuple[Recipe, list[Splice]]:
    """The run's recipe and its dictionaries (those `layer_set` names, by name or hook)."""
    recipe, targets = load_run(run_dir, hook)
    chosen = list(targets)
    if layer_set:
        valid = [t.name for t in targets] + [t.hook for t in targets]
        unknown = [s for s in layer_set if s not in valid]
        if unknown:
            raise SaekitError(
                f"--layer-set {unknown[0]!r} names no dictionary of {run_dir}; give names or "
                f"hooks from: {', '.join(dict.fromkeys(valid))}."
            )
        chosen = [t for t in targets if t.name in layer_set or t.hook in layer_set]
    splices = []
    for t in chosen:
        sae = load_dictionary(t.path).eval()
        splices.append(Splice(t.name, sae, t.hook, write_hook(sae, t.hook)))
    return recipe, splices


def check_splice(model: HookedModel, s: Splice) -> None:
    """Fail before any forward when a hook is unknown or has the wrong width."""
    d_out = int(s.dictionary.W_dec.shape[1])
    for hook, need, side in (
        (s.read_hook, s.dictionary.d_in, "reads"),
        (s.write_hook, d_out, "writes"),
    ):
        width = model.width(hook)
        if width != need:
            raise SaekitError(
                f"{s.name} {side} width {need} but {hook!r} has width {width}; attribute with "
                "the model the dictionary was trained on (--model)."
            )


def ordinary_mask(model: HookedModel, tokens_BT: Tensor) -> Tensor:
    """True at ordinary tokens (not BOS/EOS/pad), as the training stream and evaluation."""
    return TokenWindows(tokens_BT, special_ids(model.tokenizer)).token_mask(tokens_BT)


@torch.no_grad()
def decompose(model: HookedModel, s: Splice, tokens_1T: Tensor) -> Nodes:
    """The nodes of splice `s` on one prompt, from one clean forward (stopped at the hooks)."""
    sae = s.dictionary
    acts = model.capture(tokens_1T, [s.read_hook, s.write_hook])
    dtype = sae.W_dec.dtype
    x_TD = acts[s.read_hook][0].to(dtype)
    y_TD = acts[s.write_hook][0].to(dtype)
    mask_T = ordinary_mask(model, tokens_1T)[0].to(y_TD.device)
    z_TS = sae.encode(x_TD) * mask_T[:, None]
    base_D = sae.decode(torch.zeros_like(z_TS[:1]))[0]
    decoded_TD = sae.decode(z_TS)
    skip_TD = None
    if sae.W_skip is not None:
        skip_TD = (sae.reconstruct(x_TD, z_TS) - decoded_TD) * mask_T[:, None]
        decoded_TD = decoded_TD + skip_TD
    err_TD = (y_TD - decoded_TD) * mask_T[:, None]
    return Nodes(mask_T, y_TD, base_D, z_TS, err_TD, skip_TD)


def replace_at(mask_T: Tensor, h_NTD: Tensor) -> Intervention:
    """An intervention writing h at ordinary positions; special positions keep their value."""

    def edit(act_NTD: Tensor) -> Tensor:
        keep = mask_T.to(act_NTD.device)[None, :, None]
        return torch.where(keep, h_NTD.to(act_NTD.dtype), act_NTD)

    return edit


@contextlib.contextmanager
def frozen_weights(model: HookedModel) -> Iterator[None]:
    """No gradient for the model's parameters (only activations are differentiated)."""
    params = [p for p in model.model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def run_spliced(
    model: HookedModel, s: Splice, tokens_1T: Tensor, mask_T: Tensor, h_NTD: Tensor
) -> Tensor:
    """Last-position logits [N, vocab] with row n's write-hook activation set to h[n]."""
    tokens_NT = tokens_1T.expand(h_NTD.shape[0], -1)
    with model.intervene({s.write_hook: replace_at(mask_T, h_NTD)}):
        return model.run(tokens_NT)[:, -1].float()


def describe(s: Splice) -> dict[str, Any]:
    """JSON facts of a splice."""
    sae = s.dictionary
    return {
        "method": sae.method,
        "d_sae": sae.d_sae,
        "read_hook": s.read_hook,
        "write_hook": s.write_hook,
    }

"""Prompts, log-probabilities and KV-cached generation under interventions, many rows at once.

Sequences of one token length are batched together with no padding, so no attention mask or
position shift is ever needed; batches are cut at `max_rows` rows to bound memory. An edit with
one vector per row (`RowDirections`) is told which rows each batch holds, so one forward steers
many directions on many prompts. Generation uses the backend's KV cache: each step feeds one
position, and `PositionalEdit.offset` keeps "from position p" absolute.

Logits are computed only where they are read (the last prompt position, the continuation),
since the unembedding is ~20% of SmolLM2-135M's per-token FLOPs and [rows, T, 49152] floats
would not fit many rows. With a `Prefix`, a TransformerLens forward whose edits all sit in
block L or later starts at block L from the cached unsteered residual (layers before the hook
see no steering): a layer-12 site skips 12 of 30 blocks.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from saekit.errors import SaekitError
from saekit.models.hooks import HookedModel
from saekit.steering.interventions import PositionalEdit

Edits = Mapping[str, PositionalEdit]
MAX_ROWS = 64
"""Rows per forward: 64 × 40 positions × d_model floats per layer, well under 100 MB."""
_TL_BLOCK = re.compile(r"blocks\.(\d+)\.")


def encode_prompts(model: HookedModel, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt, BOS first when the tokenizer has one (as training windows)."""
    tok = model.tokenizer
    bos = getattr(tok, "bos_token_id", None)
    out = []
    for text in prompts:
        ids = [int(i) for i in tok(text, add_special_tokens=False)["input_ids"]]
        ids = ([int(bos)] if bos is not None else []) + ids
        if not ids:
            raise SaekitError(f"Prompt {text!r} has no tokens; give a non-empty prompt.")
        out.append(ids)
    return out


def _groups(
    seqs: Sequence[Sequence[int]], max_rows: int = MAX_ROWS
) -> Iterator[tuple[list[int], Tensor]]:
    """(row indices, tokens [n, T]) for sets of ≤ max_rows equal-length sequences."""
    by_len: dict[int, list[int]] = {}
    for i, s in enumerate(seqs):
        by_len.setdefault(len(s), []).append(i)
    for rows in by_len.values():
        for start in range(0, len(rows), max_rows):
            part = rows[start : start + max_rows]
            yield part, torch.tensor([list(seqs[i]) for i in part], dtype=torch.long)


def _prepare(edits: Edits | None, rows: list[int], offset: int) -> None:
    for edit in (edits or {}).values():
        edit.offset = offset
        edit.select_rows(rows)


class Prefix:
    """Unsteered residual streams at the first steered block, cached per token sequence."""

    def __init__(self, model: HookedModel, edits_at: Sequence[str]) -> None:
        blocks = [_TL_BLOCK.match(h) for h in edits_at]
        self.layer = 0
        if model.is_transformer_lens and blocks and all(blocks):
            self.layer = min(int(m.group(1)) for m in blocks if m)
        self.model = model
        self._cache: dict[tuple[int, ...], Tensor] = {}

    def residual(self, tokens_BT: Tensor) -> Tensor:
        """resid_pre of block `layer` for each row, from the cache or one early-stopped forward."""
        keys = [tuple(r) for r in tokens_BT.tolist()]
        missing = [i for i, k in enumerate(keys) if k not in self._cache]
        if missing:
            hook = f"blocks.{self.layer}.hook_resid_pre"
            acts = self.model.capture(tokens_BT[missing].to(self.model.device), [hook])[hook]
            for i, a in zip(missing, acts):
                self._cache[keys[i]] = a
        return torch.stack([self._cache[k] for k in keys])


def _hidden(model: HookedModel, tokens_BT: Tensor, prefix: Prefix | None) -> Tensor:
    """Final-norm hidden states [B, T, d_model] (edits in place apply)."""
    m: Any = model.model
    tokens_BT = tokens_BT.to(model.device)
    if model.is_transformer_lens:
        if prefix is not None and prefix.layer > 0:
            resid = m(
                prefix.residual(tokens_BT),
                start_at_layer=prefix.layer,
                stop_at_layer=m.cfg.n_layers,
            )
        else:
            resid = m(tokens_BT, stop_at_layer=m.cfg.n_layers)
        return m.ln_final(resid)
    return m.base_model(input_ids=tokens_BT).last_hidden_state


def _unembed(model: HookedModel, h_BTD: Tensor) -> Tensor:
    m: Any = model.model
    if model.is_transformer_lens:
        from transformer_lens.utilities import apply_softcap  # type: ignore[attr-defined]

        return apply_softcap(m.unembed(h_BTD), m.cfg.output_logits_soft_cap).float()
    cap = getattr(m.config, "final_logit_softcapping", None)
    logits = m.get_output_embeddings()(h_BTD).float()
    return torch.tanh(logits / cap) * cap if cap else logits


@torch.no_grad()
def last_logprobs(
    model: HookedModel,
    seqs: Sequence[Sequence[int]],
    edits: Edits | None = None,
    prefix: Prefix | None = None,
) -> Tensor:
    """log p(next token | sequence) at each sequence's last position, [P, V] float32."""
    out: Tensor | None = None
    with model.intervene(dict(edits or {})):
        for rows, tokens_BT in _groups(seqs):
            _prepare(edits, rows, 0)
            logits_BV = _unembed(model, _hidden(model, tokens_BT, prefix)[:, -1])
            logp_BV = torch.log_softmax(logits_BV, dim=-1).cpu()
            if out is None:
                out = torch.empty(len(seqs), logp_BV.shape[-1])
            out[rows] = logp_BV
    assert out is not None
    return out


def _step(model: HookedModel, tokens_BT: Tensor, cache: Any) -> tuple[Tensor, Any]:
    """Logits of the last position and the updated KV cache (TransformerLens or HF)."""
    if model.is_transformer_lens:
        if cache is None:
            from transformer_lens import TransformerLensKeyValueCache

            cfg: Any = model.model.cfg
            cache = TransformerLensKeyValueCache.init_cache(cfg, model.device, tokens_BT.shape[0])
        logits = model.model(tokens_BT, return_type="logits", past_kv_cache=cache)
        return logits[:, -1].float(), cache
    # transformers 5.x renamed `past_key_values` to `cache` (the old name goes in 5.40).
    name = _cache_kwarg(model.model)
    out = model.model(input_ids=tokens_BT, use_cache=True, **{name: cache})
    return out.logits[:, -1].float(), getattr(out, name)


_CACHE_KWARG: dict[type, str] = {}


def _cache_kwarg(module: Any) -> str:
    cls = type(module)
    if cls not in _CACHE_KWARG:
        params = inspect.signature(cls.forward).parameters
        _CACHE_KWARG[cls] = "cache" if "cache" in params else "past_key_values"
    return _CACHE_KWARG[cls]


@torch.no_grad()
def generate(
    model: HookedModel,
    seqs: Sequence[Sequence[int]],
    n_new: int,
    edits: Edits | None = None,
    temperature: float = 0.0,
    seed: int = 0,
) -> list[list[int]]:
    """`n_new` continuation tokens per prompt (greedy at temperature 0), stopping at EOS."""
    if n_new < 1:
        raise SaekitError(f"Generate at least one token, got n_new={n_new}.")
    eos = getattr(model.tokenizer, "eos_token_id", None)
    gen = torch.Generator().manual_seed(seed)
    result: list[list[int]] = [[] for _ in seqs]
    with model.intervene(dict(edits or {})):
        for rows, tokens_BT in _groups(seqs):
            _prepare(edits, rows, 0)
            logits_BV, cache = _step(model, tokens_BT.to(model.device), None)
            done_B = torch.zeros(len(rows), dtype=torch.bool)
            position = tokens_BT.shape[1]
            for _ in range(n_new):
                if temperature > 0:
                    probs_BV = torch.softmax(logits_BV.cpu() / temperature, dim=-1)
                    next_B = torch.multinomial(probs_BV, 1, generator=gen)[:, 0]
                else:
                    next_B = logits_BV.argmax(dim=-1).cpu()
                for j, r in enumerate(rows):
                    if not done_B[j]:
                        result[r].append(int(next_B[j]))
                if eos is not None:
                    done_B |= next_B == eos
                if bool(done_B.all()):
                    break
                _prepare(edits, rows, position)
                logits_BV, cache = _step(model, next_B[:, None].to(model.device), cache)
                position += 1
    return result


@torch.no_grad()
def continuation_nll(
    model: HookedModel, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]]
) -> Tensor:
    """Mean per-token NLL of each continuation given its prompt, under `model` as it is (P,).

    Identical (prompt, continuation) pairs are scored once: weak steering often leaves the
    unsteered continuation unchanged.
    """
    seqs = [tuple(p) + tuple(c) for p, c in zip(prompts, continuations)]
    unique = list(dict.fromkeys(s for s, c in zip(seqs, continuations) if c))
    n_cont = {s: len(c) for s, c in zip(seqs, continuations)}
    nll: dict[tuple[int, ...], float] = {}
    for rows, tokens_BT in _groups(unique):
        h_BTD = _hidden(model, tokens_BT, None)
        for j, r in enumerate(rows):
            n = n_cont[unique[r]]
            logp_NV = torch.log_softmax(_unembed(model, h_BTD[j, -n - 1 : -1]), dim=-1).cpu()
            nll[unique[r]] = float(-logp_NV.gather(-1, tokens_BT[j, -n:, None]).mean())
    return torch.tensor([nll.get(s, 0.0) for s in seqs])


@torch.no_grad()
def window_ce(
    model: HookedModel,
    tokens_RT: Tensor,
    edits: Edits | None = None,
    prefix: Prefix | None = None,
) -> Tensor:
    """Mean next-token cross-entropy of each row of text windows, with the edits active [R]."""
    out = torch.empty(tokens_RT.shape[0])
    seqs = tokens_RT.tolist()
    with model.intervene(dict(edits or {})):
        for rows, tokens_BT in _groups(seqs, max_rows=8):  # 8 × 64 positions × 49k logits
            _prepare(edits, rows, 0)
            logits_BTV = _unembed(model, _hidden(model, tokens_BT, prefix)[:, :-1])
            logp_BTV = torch.log_softmax(logits_BTV, dim=-1).cpu()
            nll_BT = -logp_BTV.gather(-1, tokens_BT[:, 1:, None])[..., 0]
            out[rows] = nll_BT.mean(dim=1)
    return out

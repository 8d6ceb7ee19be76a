"""Prompts, last-position log-probabilities and KV-cached generation under interventions.

Prompts of one token length are batched together with no padding, so no attention mask or
position shift is ever needed; a neutral prompt set of 16 stems falls into 3-5 length groups.
Generation uses the backend's KV cache: each step feeds one position, which costs ~1/20 of
re-running a 40-token sequence, and `PositionalEdit.offset` keeps "from position p" absolute.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from saekit.errors import SaekitError
from saekit.models.hooks import HookedModel
from saekit.steering.interventions import PositionalEdit

Edits = Mapping[str, PositionalEdit]


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


def _groups(seqs: Sequence[Sequence[int]]) -> Iterator[tuple[list[int], Tensor]]:
    """(row indices, tokens [n, T]) for each set of equal-length sequences."""
    by_len: dict[int, list[int]] = {}
    for i, s in enumerate(seqs):
        by_len.setdefault(len(s), []).append(i)
    for rows in by_len.values():
        yield rows, torch.tensor([list(seqs[i]) for i in rows], dtype=torch.long)


@contextmanager
def _edits_at(model: HookedModel, edits: Edits | None) -> Iterator[None]:
    with model.intervene(dict(edits or {})):
        yield


def _set_offset(edits: Edits | None, offset: int) -> None:
    for edit in (edits or {}).values():
        edit.offset = offset


@torch.no_grad()
def last_logprobs(
    model: HookedModel, seqs: Sequence[Sequence[int]], edits: Edits | None = None
) -> Tensor:
    """log p(next token | sequence) at each sequence's last position, [P, V] float32."""
    out: Tensor | None = None
    _set_offset(edits, 0)
    with _edits_at(model, edits):
        for rows, tokens_BT in _groups(seqs):
            logits_BV = model.run(tokens_BT.to(model.device))[:, -1].float()
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
    out = model.model(input_ids=tokens_BT, past_key_values=cache, use_cache=True)
    return out.logits[:, -1].float(), out.past_key_values


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
    with _edits_at(model, edits):
        for rows, tokens_BT in _groups(seqs):
            _set_offset(edits, 0)
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
                _set_offset(edits, position)
                logits_BV, cache = _step(model, next_B[:, None].to(model.device), cache)
                position += 1
    return result


@torch.no_grad()
def continuation_nll(
    model: HookedModel, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]]
) -> Tensor:
    """Mean per-token NLL of each continuation given its prompt, under `model` as it is (P,)."""
    seqs = [list(p) + list(c) for p, c in zip(prompts, continuations)]
    out = torch.zeros(len(seqs))
    for rows, tokens_BT in _groups(seqs):
        logp_BTV = torch.log_softmax(model.run(tokens_BT.to(model.device)).float(), dim=-1).cpu()
        nll_BT = -logp_BTV[:, :-1].gather(-1, tokens_BT[:, 1:, None])[..., 0]
        for j, r in enumerate(rows):
            n_c = len(continuations[r])
            out[r] = nll_BT[j, -n_c:].mean() if n_c else 0.0
    return out


@torch.no_grad()
def reference_ce(model: HookedModel, tokens_BT: Tensor, edits: Edits | None = None) -> float:
    """Mean next-token cross-entropy on reference windows, with the edits active."""
    _set_offset(edits, 0)
    with _edits_at(model, edits):
        logits_BTV = model.run(tokens_BT.to(model.device)).float()
    logp_BTV = torch.log_softmax(logits_BTV[:, :-1], dim=-1)
    targets_BT = tokens_BT[:, 1:].to(logp_BTV.device)
    return float(-logp_BTV.gather(-1, targets_BT[..., None]).mean())

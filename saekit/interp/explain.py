"""The LLM-free explainer (docs/interpretability.md): a feature's explanation is a set of at
most 5 unigrams or bigrams, chosen greedily on the train split to maximize the balanced
accuracy (default) or the F1 of the rule "the example contains one of them" against "the
feature fires in the example" (max activation > 0). F1 favours the trivial rule for dense
features: a feature firing in half the examples gets F1 0.67 from "contains a comma", while its
balanced accuracy is 0.5, the chance level of the detection test; balanced accuracy only
rewards n-grams that separate.

N-grams are integer keys: a unigram is its token id v < V; a bigram (u, v) is V + u·V + v. A
key "ends" at the position of its last token, which is where fuzzing predicts activation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

CANDIDATES = 20
"""N-grams with the best single-n-gram score that the greedy search considers per feature."""
MIN_SUPPORT = 2
"""An n-gram must occur in at least this many activating train examples to be chosen."""


def ngram_keys(tokens_CL: Tensor, mask_CL: Tensor, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """Unigram and bigram keys ending at every position ([C, L] int64, −1 where undefined)."""
    tok = tokens_CL.long().numpy()
    mask = mask_CL.numpy()
    uni = np.where(mask, tok, -1)
    bi = np.full_like(uni, -1)
    both = mask[:, 1:] & mask[:, :-1]
    bi[:, 1:] = np.where(both, vocab + tok[:, :-1] * vocab + tok[:, 1:], -1)
    return uni, bi


def decode_key(key: int, vocab: int) -> tuple[int, ...]:
    """Token ids of an n-gram key."""
    if key < vocab:
        return (key,)
    return divmod(key - vocab, vocab)


@dataclass
class Incidence:
    """Which train examples contain which n-gram (each key's example rows, sorted by key)."""

    keys_U: np.ndarray
    starts_U1: np.ndarray
    rows: np.ndarray

    @classmethod
    def build(cls, uni_CL: np.ndarray, bi_CL: np.ndarray) -> Incidence:
        C = uni_CL.shape[0]
        keys = np.concatenate([uni_CL, bi_CL], axis=1)
        rows = np.repeat(np.arange(C), keys.shape[1])
        flat = keys.reshape(-1)
        ok = flat >= 0
        pairs = np.unique(np.stack([flat[ok], rows[ok]], axis=1), axis=0)  # (key, row), dedup
        keys_U, starts = np.unique(pairs[:, 0], return_index=True)
        return cls(keys_U, np.append(starts, len(pairs)), pairs[:, 1])

    def column(self, u: int) -> np.ndarray:
        return self.rows[self.starts_U1[u] : self.starts_U1[u + 1]]

    @property
    def doc_freq_U(self) -> np.ndarray:
        return np.diff(self.starts_U1)

    def active_counts(self, active_CS: Tensor) -> Tensor:
        """[U, S]: activating examples containing each n-gram (one sparse-dense product)."""
        U = len(self.keys_U)
        cols = np.repeat(np.arange(U), self.doc_freq_U)
        inc_UC = torch.sparse_coo_tensor(
            torch.from_numpy(np.stack([cols, self.rows])),
            torch.ones(len(cols)),
            (U, active_CS.shape[0]),
            check_invariants=False,
        )
        return torch.sparse.mm(inc_UC, active_CS.float())


@dataclass
class Explanation:
    keys: list[int]
    """Chosen n-gram keys, in the order the greedy search added them."""
    train_accuracy: float
    """Train-split balanced accuracy of the rule."""
    train_f1: float
    """Train-split F1 of the rule."""


def _rule_scores(tp: np.ndarray, covered: np.ndarray, n_act: int, n_neg: int) -> dict[str, Any]:
    """Balanced accuracy and F1 of "contains any" from hits on active examples and coverage."""
    fp = covered - tp
    return {
        "balanced_accuracy": 0.5 * (tp / max(n_act, 1) + 1 - fp / max(n_neg, 1)),
        "f1": 2 * tp / np.maximum(n_act + covered, 1),
    }


def explain_feature(
    inc: Incidence, active_C: np.ndarray, tp_U: np.ndarray, max_ngrams: int, objective: str
) -> Explanation:
    """Greedy n-gram set maximizing the train `objective` of "contains any" vs "active"."""
    n_act = int(active_C.sum())
    n_neg = len(active_C) - n_act
    single = _rule_scores(tp_U, inc.doc_freq_U.astype(np.float64), n_act, n_neg)[objective]
    single = np.where(tp_U >= MIN_SUPPORT, single, 0.0)
    floor = 0.5 if objective == "balanced_accuracy" else 0.0  # the empty rule's score
    order = np.argsort(-single, kind="stable")[:CANDIDATES]
    cands = [int(u) for u in order if single[u] > floor]
    covered = np.zeros(len(active_C), dtype=bool)
    chosen: list[int] = []
    best = floor
    for _ in range(max_ngrams):
        step_best, step_u = best, -1
        for u in cands:
            if u in chosen:
                continue
            cov = covered.copy()
            cov[inc.column(u)] = True
            score = _rule_scores((cov & active_C).sum(), cov.sum(), n_act, n_neg)[objective]
            if score > step_best + 1e-12:
                step_best, step_u = float(score), u
        if step_u < 0:
            break
        chosen.append(step_u)
        covered[inc.column(step_u)] = True
        best = step_best
    final = _rule_scores((covered & active_C).sum(), covered.sum(), n_act, n_neg)
    return Explanation(
        [int(inc.keys_U[u]) for u in chosen],
        float(final["balanced_accuracy"]),
        float(final["f1"]),
    )

"""The first-letter task of SAEBench's absorption eval: alphabetic tokens of the vocabulary,
in-context prompts asking for a token's first letter, the activation at the token, and the
logistic probes trained on them.

A prompt holds 10 solved examples drawn from the same split, then the token:

    \\n grape has the first letter: G\\n ... \\n cat has the first letter:

and the activation is read at the token (position −6 from the end with this template). Only
the tokenizer's vocabulary is needed, so the task runs offline.

Random draws follow SAEBench's order with one `random.Random(seed)`: the 80/20 shuffle of the
vocabulary, each train prompt's examples, each test prompt's examples; the absorption prompts
(eval/absorption.py) continue the same generator. Probe weights start as `nn.Linear`'s
(U(±1/√d_in)) from a `torch.Generator(seed)`; minibatches come from the same generator.
"""

from __future__ import annotations

import random
import string
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from math import exp, log, sqrt
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from saekit.errors import SaekitError
from saekit.models.hooks import HookedModel

LETTERS = string.ascii_lowercase


def first_letter(word: str) -> int:
    """Index in LETTERS of the word's first alphabetic character."""
    return LETTERS.index(next(c for c in word.strip() if c.isalpha()).lower())


def alpha_tokens(tokenizer: Any) -> list[str]:
    """Vocabulary tokens made of ASCII letters (one leading space allowed), as strings, sorted.

    SAEBench's `get_alpha_tokens` filter; sorted and deduplicated here, because the order of a
    fast tokenizer's vocabulary dict changes between processes and the sampling depends on it.
    """
    words = set()
    for token in tokenizer.get_vocab():
        word = tokenizer.convert_tokens_to_string([token])
        if token.startswith("▁") and not word.startswith(" "):
            word = " " + word  # sentencepiece tokenizers drop the leading space when decoding
        core = word[1:] if word.startswith(" ") else word
        if core and all(c in string.ascii_letters for c in core):
            words.add(word)
    return sorted(words)


def stratified_sample(words: list[str], per_letter: int, seed: int) -> list[str]:
    """At most `per_letter` words of each first letter (all of them when per_letter ≤ 0)."""
    by_letter: dict[int, list[str]] = defaultdict(list)
    for word in sorted(words):
        by_letter[first_letter(word)].append(word)
    rng = random.Random(seed)
    out: list[str] = []
    for i in range(len(LETTERS)):
        group = by_letter[i]
        out += (
            group
            if per_letter <= 0 or len(group) <= per_letter
            else sorted(rng.sample(group, per_letter))
        )
    return out


@dataclass(frozen=True)
class Prompt:
    """One first-letter prompt."""

    word: str
    """The token whose first letter is asked."""
    text: str
    """Examples and the question (no answer)."""
    label: int
    """Index of the answer in LETTERS."""


def icl_prompt(word: str, examples: list[str], rng: random.Random, template: str, n: int) -> Prompt:
    """`n` solved examples (never the word itself) and the question, SAEBench's layout."""
    for _ in range(1000):
        chosen = rng.sample(examples, n)
        if word not in chosen:
            break
    else:
        raise SaekitError(f"Could not draw {n} examples without {word!r}; sample more tokens.")
    solved = [template.format(word=ex) + " " + LETTERS[first_letter(ex)].upper() for ex in chosen]
    text = "\n" + "\n".join(solved) + "\n" + template.format(word=word)
    return Prompt(word, text, first_letter(word))


def split_prompts(
    vocab: list[str], rng: random.Random, template: str, n: int, train_fraction: float = 0.8
) -> tuple[list[Prompt], list[Prompt]]:
    """Shuffle, split the words 80/20 and prompt each word with examples from its own split."""
    shuffled = rng.sample(vocab, len(vocab))
    cut = int(len(shuffled) * train_fraction)
    train, test = shuffled[:cut], shuffled[cut:]
    if min(len(train), len(test)) <= n:
        raise SaekitError(
            f"{len(vocab)} tokens are too few for {n}-example prompts; raise absorption.per_letter."
        )
    return (
        [icl_prompt(w, train, rng, template, n) for w in train],
        [icl_prompt(w, test, rng, template, n) for w in test],
    )


@torch.no_grad()
def token_activations(
    model: HookedModel, hook: str, prompts: list[Prompt], pos: int, batch_size: int,
    desc: str = "first-letter prompts", progress: bool = True,
) -> Tensor:  # fmt: skip
    """The hook's activation [N, d_in] at position `pos` (from each prompt's end), BOS first."""
    from saekit.data.tasks import tokenize_texts

    ids = tokenize_texts(model.tokenizer, [p.text for p in prompts], context_size=10**6)
    rows = []
    for start in tqdm(range(0, len(ids), batch_size), desc=desc, disable=not progress):
        batch = ids[start : start + batch_size]
        width = max(len(t) for t in batch)
        tokens_BT = torch.zeros(len(batch), width, dtype=torch.long)
        for i, t in enumerate(batch):
            tokens_BT[i, : len(t)] = torch.tensor(t)
        acts_BTD = model.capture(tokens_BT.to(model.device), [hook])[hook]
        at_B = torch.tensor([len(t) + pos for t in batch], device=acts_BTD.device)
        rows.append(acts_BTD[torch.arange(len(batch), device=acts_BTD.device), at_B].float().cpu())
    return torch.cat(rows)


@dataclass(frozen=True)
class ProbeTraining:
    """SAEBench's one-vs-rest logistic probe training (Adam, lr decayed exponentially)."""

    epochs: int = 50
    """Passes over the training set."""
    lr: float = 1e-2
    """Initial learning rate."""
    end_lr: float = 1e-5
    """Learning rate after the last epoch."""
    weight_decay: float = 1e-4
    """Adam's L2 weight decay."""
    l1: float = 0.0
    """L1 penalty: l1 · mean over probes of Σ|w| (the k-sparse probes' selection uses 0.01)."""
    batch_size: int = 4096
    """Rows per step."""


def train_probe(
    x_ND: Tensor, y_NC: Tensor, cfg: ProbeTraining, seed: int,
    encode: Callable[[Tensor], Tensor] | None = None, d: int | None = None,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Weights [C, d] and biases [C] of C logistic probes (BCE with positives weighted by
    negatives/positives per probe) on `encode(x)` (x itself by default)."""
    gen = torch.Generator().manual_seed(seed)
    d = d or x_ND.shape[1]
    n_classes = y_NC.shape[1]
    bound = 1 / sqrt(d)
    W_CD = torch.empty(n_classes, d).uniform_(-bound, bound, generator=gen).requires_grad_()
    b_C = torch.empty(n_classes).uniform_(-bound, bound, generator=gen).requires_grad_()
    positives_C = y_NC.sum(dim=0).clamp_min(1)  # a letter absent from the split: no weight
    pos_weight_C = (len(y_NC) - positives_C) / positives_C
    opt = torch.optim.Adam([W_CD, b_C], lr=cfg.lr, weight_decay=cfg.weight_decay)
    gamma = exp(log(cfg.end_lr / cfg.lr) / cfg.epochs)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=gamma)
    with torch.enable_grad():
        for _ in range(cfg.epochs):
            order = torch.randperm(len(x_ND), generator=gen)
            for start in range(0, len(x_ND), cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                with torch.no_grad():
                    x_BD = encode(x_ND[idx]) if encode is not None else x_ND[idx]
                logits = x_BD @ W_CD.T + b_C
                loss = F.binary_cross_entropy_with_logits(
                    logits, y_NC[idx], pos_weight=pos_weight_C
                )
                if cfg.l1:
                    loss = loss + cfg.l1 * W_CD.abs().sum(dim=-1).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            sched.step()
    return W_CD.detach(), b_C.detach()

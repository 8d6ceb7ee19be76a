"""Feature absorption on the first-letter task, as SAEBench defines it (Chanin et al. 2024).

1. A 26-way logistic probe learns each token's first letter from the hook's activation
   (eval/first_letter.py: 80/20 split of the sampled vocabulary, in-context prompts).
2. k-sparse probes: an L1-penalized probe on the dictionary's codes ranks latents per letter;
   for k = 1..max_k, a balanced logistic regression on that letter's top-k latents. The
   letter's "split features" are the top-k latents of the last k whose test F1 rose by more
   than `f1_jump` over every smaller k.
3. For each test token of a letter that the probe gets right, with a fresh prompt: the
   projection of the activation on the probe direction, and each latent's share of it
   (code × cos(decoder row, probe)). Absorption fraction: the part of the projection carried by
   at most 3 probe-aligned latents (cos ≥ 0.1) outside the split features, when they carry at
   least 40% of it. Full absorption: no split feature fires and the top projecting latent
   (cos ≥ 0.025) carries ≥ 40% of the projection.
4. Per letter: mean absorption fraction, full-absorption rate (both over the probe's true
   positives) and the number of split features; averaged over the letters whose probe F1
   exceeds `min_probe_f1`. SAEBench reports nothing with fewer than 20 such letters; saekit
   reports the numbers with `enough_letters: false`.

SmolLM2 has 47,078 alphabetic tokens, all prompted by SAEBench's full run. The default samples
`per_letter` tokens per first letter (a stratified subsample); per_letter 0 runs all.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saekit.dictionaries import Dictionary
from saekit.errors import SaekitError
from saekit.eval.first_letter import (
    LETTERS,
    ProbeTraining,
    Prompt,
    alpha_tokens,
    icl_prompt,
    split_prompts,
    stratified_sample,
    token_activations,
    train_probe,
)
from saekit.models.hooks import HookedModel

FRACTION_COS, FULL_COS, PROJECTION_SHARE, MAX_ABSORBERS = 0.1, 0.025, 0.4, 3
"""SAEBench's thresholds: probe cosine of a partial / full absorber, share of the probe
projection absorbers must carry, latents that may share it."""


@dataclass(frozen=True)
class AbsorptionConfig:
    """First-letter absorption (SAEBench's definition and defaults)."""

    per_letter: int = 64
    """Tokens sampled per first letter (0: every alphabetic token of the vocabulary)."""
    seed: int = 42
    """Seed of the sample, the prompts and the probes."""
    prompt_template: str = "{word} has the first letter:"
    """Question asked about each token."""
    token_pos: int = -6
    """Position of the token in the prompt, from the end (−6 for the template above)."""
    n_examples: int = 10
    """Solved examples before each question."""
    max_k: int = 10
    """Largest k of the k-sparse probes."""
    f1_jump: float = 0.03
    """F1 gain of k over k − 1 that counts as feature splitting."""
    min_probe_f1: float = 0.6
    """Letters whose probe F1 is at most this are left out of the means."""
    batch_size: int = 16
    """Prompts per model forward."""
    probe_epochs: int = 50
    """Epochs of both probes' training (Adam, lr 1e-2 decayed to 1e-5, as SAEBench)."""
    probe_batch_size: int = 64
    """Minibatch of the letter probe (SAEBench's; weight decay 1e-4)."""
    sparse_probe_batch_size: int = 256
    """Minibatch of the L1 probe on codes that ranks latents for the k-sparse probes. SAEBench
    uses 4,096: ~9 Adam steps per epoch on a full vocabulary, but one on a sample of 1-2k
    tokens, whose 50 steps (summed learning rate ~0.08) cannot move a weight past its
    initialization (±1/√d_sae), so the ranking would be noise. 256 restores ~5 steps per
    epoch; 4096 with per_letter 0 is SAEBench's exact setting."""
    sparse_probe_l1: float = 0.01
    """L1 penalty of that probe (weight decay 1e-6)."""
    controls: bool = True
    """Also score the null controls (random directions, the initialization) on the same
    prompts: no further model forwards, one sparse probe per control."""

    def letter_training(self) -> ProbeTraining:
        return ProbeTraining(self.probe_epochs, weight_decay=1e-4, batch_size=self.probe_batch_size)

    def sparse_training(self) -> ProbeTraining:
        return ProbeTraining(self.probe_epochs, weight_decay=1e-6, l1=self.sparse_probe_l1,
                             batch_size=self.sparse_probe_batch_size)  # fmt: skip


def f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Binary F1 (0 when nothing is predicted or present, as scikit-learn reports it)."""
    tp = float((y_true & y_pred).sum())
    denom = float(y_true.sum() + y_pred.sum())
    return 2 * tp / denom if denom else 0.0


def k_sparse_f1(
    codes_tr: Tensor, y_tr: np.ndarray, codes_te: Tensor, y_te: np.ndarray,
    W_sparse_CS: Tensor, letter: int, max_k: int,
) -> tuple[list[float], list[list[int]]]:  # fmt: skip
    """Test F1 and latents of the letter's k-sparse probes, k = 1..max_k."""
    from sklearn.linear_model import LogisticRegression

    scores, feats = [], []
    for k in range(1, max_k + 1):
        ids = W_sparse_CS[letter].topk(k).indices  # largest weights: latents that predict it
        probe = LogisticRegression(max_iter=500, class_weight="balanced").fit(
            codes_tr[:, ids].numpy(), (y_tr == letter).astype(np.int64)
        )
        w, b = torch.tensor(probe.coef_[0]).float(), float(probe.intercept_[0])
        pred = (codes_te[:, ids] @ w + b).numpy() > 0
        scores.append(f1(y_te == letter, pred))
        feats.append(ids.tolist())
    return scores, feats


def split_features(scores: list[float], feats: list[list[int]], jump: float) -> list[int]:
    """Latents of the last k whose F1 beat every smaller k's by more than `jump`."""
    best, chosen = -100.0, feats[0]
    for score, ids in zip(scores, feats):
        if score <= best + jump:
            break
        best, chosen = score, ids
    return chosen


def word_absorption(
    act_D: Tensor, codes_S: Tensor, probe_D: Tensor, cos_S: Tensor, main: list[int]
) -> tuple[float, bool]:
    """(absorption fraction, full absorption) of one token; probe_D has unit norm."""
    proj = float(act_D @ probe_D)
    share_S = codes_S * cos_S
    main_proj = float(share_S[main].sum())
    others = torch.ones_like(share_S, dtype=torch.bool)
    others[main] = False
    others &= (cos_S >= FRACTION_COS) & (share_S > 0)
    absorbers = share_S[others].topk(min(MAX_ABSORBERS, int(others.sum()))).values
    absorbed = float(absorbers.sum())
    if main_proj >= proj or absorbed / proj < PROJECTION_SHARE:
        fraction = 0.0
    elif main_proj <= 0:
        fraction = 1.0
    else:
        taken = min(absorbed, proj - main_proj)
        fraction = float(np.clip(taken / (taken + main_proj), 0.0, 1.0))
    top = int(share_S.topk(1).indices)
    full = (
        bool((codes_S[main] < 1e-8).all())
        and float(cos_S[top]) >= FULL_COS
        and proj >= 0
        and float(share_S[top]) / proj >= PROJECTION_SHARE
    )
    return fraction, full


@dataclass
class LetterHits:
    """One letter's probe true positives on the test split, re-prompted: dictionary-free."""

    letter: int
    """Index into LETTERS."""
    probe_f1: float
    """Test F1 of the letter probe."""
    x_hit: Tensor
    """Activations of the fresh prompts of the probe's true positives (one row each)."""


@dataclass
class AbsorptionData:
    """Everything of the absorption eval that does not depend on the dictionary: the prompts'
    activations, the letter probe and its true positives. Built once per hook, it scores any
    number of dictionaries (a dictionary and its null controls) without another model forward."""

    x_tr: Tensor
    x_te: Tensor
    y_tr: np.ndarray
    y_te: np.ndarray
    W_probe: Tensor
    """Letter probe weights (26 × d_in)."""
    letters: list[LetterHits]
    n_tokens: int
    """Alphabetic tokens sampled."""


def absorption_data(
    model: HookedModel,
    hook: str,
    cfg: AbsorptionConfig = AbsorptionConfig(),
    vocab: list[str] | None = None,
    progress: bool = True,
) -> AbsorptionData:
    """The model forwards and the letter probe of the absorption eval at `hook`."""
    if vocab is None:
        vocab = stratified_sample(alpha_tokens(model.tokenizer), cfg.per_letter, cfg.seed)
    rng = random.Random(cfg.seed)
    train, test = split_prompts(vocab, rng, cfg.prompt_template, cfg.n_examples)

    def acts(prompts: list[Prompt], desc: str) -> Tensor:
        return token_activations(
            model, hook, prompts, cfg.token_pos, cfg.batch_size, desc, progress
        )

    x_tr, x_te = acts(train, "absorption: train prompts"), acts(test, "absorption: test prompts")
    y_tr = np.array([p.label for p in train])
    y_te = np.array([p.label for p in test])
    onehot = torch.nn.functional.one_hot(torch.from_numpy(y_tr), len(LETTERS)).float()
    W_probe, b_probe = train_probe(x_tr, onehot, cfg.letter_training(), cfg.seed)
    probe_te = (x_te @ W_probe.T + b_probe).numpy()
    letters = []
    for letter in range(len(LETTERS)):
        if not ((y_tr == letter).any() and (y_te == letter).any()):
            continue  # a letter absent from a split has no probe to score (SAEBench fails)
        hits = [p.word for p, s in zip(test, probe_te[:, letter]) if p.label == letter and s > 0]
        if not hits:
            continue
        prompts = [icl_prompt(w, vocab, rng, cfg.prompt_template, cfg.n_examples) for w in hits]
        with torch.no_grad():
            x_hit = acts(prompts, f"absorption: letter {LETTERS[letter]}")
        probe_f1 = f1(y_te == letter, probe_te[:, letter] > 0)
        letters.append(LetterHits(letter, probe_f1, x_hit))
    return AbsorptionData(x_tr, x_te, y_tr, y_te, W_probe, letters, len(vocab))


def check_width(sae: Dictionary, width: int, hook: str = "", name: str = "The dictionary") -> None:
    """One line naming the fix when `sae` does not read activations of this width."""
    if sae.d_in != width:
        where = f"hook {hook!r}" if hook else "the hook"
        raise SaekitError(
            f"{name} reads d_in={sae.d_in} but {where} has width {width}; evaluate it at the "
            "hook it was trained on."
        )


def score_absorption(
    data: AbsorptionData, sae: Dictionary, cfg: AbsorptionConfig = AbsorptionConfig()
) -> dict[str, Any]:
    """First-letter absorption of `sae` on activations gathered by `absorption_data`."""
    check_width(sae, data.x_tr.shape[1])
    sae = sae.eval()

    def encode(x: Tensor) -> Tensor:
        return sae.encode(x.to(sae.W_dec)).float().cpu()

    y_tr, y_te = data.y_tr, data.y_te
    with torch.no_grad():
        codes_tr, codes_te = encode(data.x_tr), encode(data.x_te)
    sparse_onehot = torch.nn.functional.one_hot(torch.from_numpy(y_tr)).float()
    W_sparse, _ = train_probe(
        data.x_tr, sparse_onehot, cfg.sparse_training(), cfg.seed, encode, sae.d_sae
    )
    W_dec = sae.W_dec.detach().float().cpu()
    letters: list[dict[str, Any]] = []
    for hit in data.letters:
        letter = hit.letter
        scores, feats = k_sparse_f1(codes_tr, y_tr, codes_te, y_te, W_sparse, letter, cfg.max_k)
        main = split_features(scores, feats, cfg.f1_jump)
        with torch.no_grad():
            direction = data.W_probe[letter] / data.W_probe[letter].norm()
            cos_S = torch.nn.functional.cosine_similarity(direction[None], W_dec, dim=-1)
            pairs = [word_absorption(x, z, direction, cos_S, main)
                     for x, z in zip(hit.x_hit, encode(hit.x_hit))]  # fmt: skip
        letters.append({
            "letter": LETTERS[letter], "probe_f1": hit.probe_f1, "k_sparse_f1": scores,
            "split_features": main, "num_probe_true_positives": len(hit.x_hit),
            "mean_absorption_fraction": float(np.mean([p[0] for p in pairs])),
            "full_absorption_rate": float(np.mean([p[1] for p in pairs])),
        })  # fmt: skip
    return summarize_absorption(letters, data.n_tokens, cfg)


def evaluate_absorption(
    model: HookedModel,
    sae: Dictionary,
    hook: str,
    cfg: AbsorptionConfig = AbsorptionConfig(),
    vocab: list[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """First-letter absorption of `sae` at `hook` (its residual stream, as in SAEBench)."""
    check_width(sae, model.width(hook), hook)  # before the model forwards
    return score_absorption(absorption_data(model, hook, cfg, vocab, progress), sae, cfg)


def summarize_absorption(
    letters: list[dict[str, Any]], n_tokens: int, cfg: AbsorptionConfig
) -> dict[str, Any]:
    """Means over the letters whose probe F1 exceeds cfg.min_probe_f1, and the per-letter rows."""
    kept = [row for row in letters if row["probe_f1"] > cfg.min_probe_f1]

    def mean(key: str) -> float | None:
        return float(np.mean([row[key] for row in kept])) if kept else None

    return {
        "definition": "SAEBench first-letter absorption (probe, k-sparse probes, projections)",
        "config": asdict(cfg),
        "n_tokens": n_tokens,
        "letters_evaluated": len(kept),
        "enough_letters": len(kept) >= 20,
        "mean_absorption_fraction": mean("mean_absorption_fraction"),
        "mean_full_absorption": mean("full_absorption_rate"),
        "mean_num_split_features": float(np.mean([len(r["split_features"]) for r in kept]))
        if kept
        else None,
        "per_letter": letters,
    }

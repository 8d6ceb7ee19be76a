"""LLM-free interpretability scores per feature (docs/interpretability.md), from one `FeatureData`.

- detection: balanced accuracy of "the example contains an n-gram of the explanation" on held-out
  examples: up to 50 activating ones spread evenly over the feature's activation quantiles (from
  the uniform reservoir) + 50 random non-activating ones, as delphi samples its test set;
- fuzzing: token-level balanced accuracy of "an explanation n-gram ends here" vs "activation
  >= 0.3 x the example's max" on the same examples;
- simulation: Pearson correlation between a lookup simulator (mean train activation of the token,
  0 for unseen tokens) and the true activations over the 5 top + 5 random held-out examples
  (Bills et al.'s "top-and-random");
- embedding detection / fuzzing (with token embeddings, interp/embed.py): the explanation is
  the activation-weighted mean embedding of the train tokens the feature fires on; a held-out
  token's prediction is its cosine to it. Detection: ROC-AUC of each example's best token on
  the detection examples; fuzzing: ROC-AUC over their tokens, active as in fuzzing.
Balanced accuracy = (TP/P + TN/N) / 2 and ROC-AUC: 0.5 is chance, 1 is perfect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from saekit.eval.scorecard import Score, Units, score
from saekit.interp.collect import FeatureData
from saekit.interp.config import InterpConfig
from saekit.interp.explain import Incidence, explain_feature, ngram_keys

SCORE_NAMES = (
    "detection",
    "fuzzing",
    "simulation",
    "embedding_detection",
    "embedding_fuzzing",
)
FEATURE_BLOCK = 512
"""Features per sparse-dense product when counting n-gram hits ([U, 512] fp32 at a time)."""


def balanced_accuracy(pred: np.ndarray, truth: np.ndarray) -> float:
    pos, neg = truth.sum(), (~truth).sum()
    if not pos or not neg:
        raise ValueError("balanced accuracy needs both classes")
    return 0.5 * float((pred & truth).sum() / pos + (~pred & ~truth).sum() / neg)


def roc_auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted 1/2 (Mann-Whitney U)."""
    pos, neg = int(truth.sum()), int((~truth).sum())
    if not pos or not neg:
        raise ValueError("ROC-AUC needs both classes")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # average 1-based ranks
    return float((ranks[truth].sum() - pos * (pos + 1) / 2) / (pos * neg))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation; 0 when either side is constant (a constant simulation explains nothing)."""
    a, b = a - a.mean(), b - b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else 0.0


@dataclass
class TestSet:
    """Held-out examples of one feature: positives across quantiles, random negatives."""

    pos_ids: np.ndarray
    pos_acts: np.ndarray
    """[P, L] the feature's activations on the positive examples."""
    neg_ids: np.ndarray
    reservoir: list[tuple[int, int]]
    """(example id, reservoir slot) of every activating test example kept, by activation."""
    res_acts: np.ndarray
    rng: np.random.Generator

    def active_tokens(self, threshold: float) -> np.ndarray:
        """[P, L] tokens at or above threshold x their example's max (delphi's fuzzing rule)."""
        peak = self.pos_acts.max(axis=1, keepdims=True)
        return (self.pos_acts >= threshold * peak) & (self.pos_acts > 0)


class Scorer:
    """Shared precomputation for scoring many features of one `FeatureData`."""

    def __init__(self, data: FeatureData, cfg: InterpConfig, vocab: int) -> None:
        self.data, self.cfg, self.vocab = data, cfg, vocab
        self.uni_CL, self.bi_CL = ngram_keys(data.ex_tokens_CL, data.ex_mask_CL, vocab)
        test = data.ex_test_C.numpy()
        self.train_idx, self.test_idx = np.flatnonzero(~test), np.flatnonzero(test)
        self.inc = Incidence.build(self.uni_CL[self.train_idx], self.bi_CL[self.train_idx])
        self.max_CS = data.ex_max_CS.float()
        self.mask_CL = data.ex_mask_CL.numpy()
        look = data.lookup_sum_VS.coalesce()
        tok, feat = look.indices().numpy()
        order = np.argsort(feat, kind="stable")
        self.look_tok, self.look_val = tok[order], look.values().numpy()[order]
        self.look_starts = np.searchsorted(feat[order], np.arange(data.counts_S.shape[0] + 1))
        self.tok_counts = data.token_counts_V.numpy().astype(np.float64)
        self.ex_pos = {int(c): i for i, c in enumerate(self.test_idx)}

    def score(self, features: list[int], progress: bool = True) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        train_active = self.max_CS[self.train_idx] > 0
        bar = tqdm(total=len(features), desc="interp scores", disable=not progress)
        for start in range(0, len(features), FEATURE_BLOCK):
            block = features[start : start + FEATURE_BLOCK]
            tp_UB = self.inc.active_counts(train_active[:, block]).numpy()
            for j, s in enumerate(block):
                out[s] = self.score_one(s, train_active[:, s].numpy(), tp_UB[:, j])
                bar.update(1)
        bar.close()
        return out

    def _lookup_mean(self, s: int) -> np.ndarray:
        a, b = self.look_starts[s], self.look_starts[s + 1]
        mean_V = np.zeros(len(self.tok_counts))
        toks = self.look_tok[a:b]
        mean_V[toks] = self.look_val[a:b] / np.maximum(self.tok_counts[toks], 1)
        return mean_V

    def test_set(self, s: int) -> TestSet | None:
        """Held-out examples of feature `s`, or None when it has too few to be scored."""
        cfg, d = self.cfg, self.data
        res = [(int(c), i) for i, c in enumerate(d.res_ex_SR[s].tolist()) if c >= 0]
        test_max = self.max_CS[self.test_idx, s].numpy()
        negatives = self.test_idx[test_max <= 0]
        if len(res) < cfg.min_examples or len(negatives) < cfg.min_examples:
            return None
        rng = np.random.default_rng(cfg.seed * 1_000_003 + s)
        # positives evenly spread over the reservoir's activation quantiles
        res_acts = d.res_acts_SRL[s].numpy()
        res.sort(key=lambda ci: float(res_acts[ci[1]].max()))
        n_pos = min(cfg.n_test, len(res))
        pick = np.unique(np.linspace(0, len(res) - 1, n_pos).round().astype(int))
        return TestSet(
            pos_ids=np.array([res[i][0] for i in pick]),
            pos_acts=res_acts[[res[i][1] for i in pick]],
            neg_ids=rng.choice(negatives, size=min(cfg.n_test, len(negatives)), replace=False),
            reservoir=res,
            res_acts=res_acts,
            rng=rng,
        )

    def score_one(self, s: int, active_C: np.ndarray, tp_U: np.ndarray) -> dict[str, Any]:
        cfg = self.cfg
        n_train = int(active_C.sum())
        info: dict[str, Any] = {
            "n_train_active": n_train,
            "n_test_active": int((self.max_CS[self.test_idx, s] > 0).sum()),
        }
        ts = self.test_set(s)
        if ts is None or n_train < cfg.min_examples:
            empty: dict[str, Any] = {
                "explanation": [],
                "explanation_train_accuracy": None,
                "explanation_f1": None,
            }
            return info | dict.fromkeys(SCORE_NAMES) | empty
        expl = explain_feature(self.inc, active_C, tp_U, cfg.max_ngrams, cfg.explainer_objective)
        info |= {
            "explanation": expl.keys,
            "explanation_train_accuracy": expl.train_accuracy,
            "explanation_f1": expl.train_f1,
        }
        pos_ids, neg_ids = ts.pos_ids, ts.neg_ids
        uni_set = np.array([k for k in expl.keys if k < self.vocab], dtype=np.int64)
        bi_set = np.array([k for k in expl.keys if k >= self.vocab], dtype=np.int64)

        def hits(ids: np.ndarray) -> np.ndarray:
            return np.isin(self.uni_CL[ids], uni_set) | np.isin(self.bi_CL[ids], bi_set)

        pos_hits, neg_hits = hits(pos_ids), hits(neg_ids)
        pred = np.concatenate([pos_hits.any(1), neg_hits.any(1)])
        truth = np.concatenate([np.ones(len(pos_ids), bool), np.zeros(len(neg_ids), bool)])
        info["detection"] = balanced_accuracy(pred, truth)
        tok_truth = np.concatenate([ts.active_tokens(cfg.fuzz_threshold), np.zeros_like(neg_hits)])
        tok_mask = np.concatenate([self.mask_CL[pos_ids], self.mask_CL[neg_ids]])
        tok_pred = np.concatenate([pos_hits, neg_hits])
        info["fuzzing"] = balanced_accuracy(tok_pred[tok_mask], tok_truth[tok_mask])
        info["simulation"] = self._simulation(s, ts.rng, ts.reservoir, ts.res_acts)
        info |= self._embedding_scores(s, ts, tok_truth, tok_mask)
        return info

    def _embedding_scores(
        self, s: int, ts: TestSet, tok_truth: np.ndarray, tok_mask: np.ndarray
    ) -> dict[str, float | None]:
        d = self.data
        if d.emb_sum_SE is None or d.ex_emb_CLE is None:
            return {"embedding_detection": None, "embedding_fuzzing": None}
        mu_E = torch.nn.functional.normalize(d.emb_sum_SE[s].float(), dim=0)
        ids = np.concatenate([ts.pos_ids, ts.neg_ids])
        cos_CL = (d.ex_emb_CLE[torch.from_numpy(ids)].float() @ mu_E).numpy()
        best_C = np.where(tok_mask, cos_CL, -np.inf).max(axis=1)
        truth = np.arange(len(ids)) < len(ts.pos_ids)
        return {
            "embedding_detection": roc_auc(best_C, truth),
            "embedding_fuzzing": roc_auc(cos_CL[tok_mask], tok_truth[tok_mask]),
        }

    def _simulation(
        self, s: int, rng: np.random.Generator, res: list, res_acts: np.ndarray
    ) -> float:
        d = self.data
        tops = [
            (int(c), d.top_acts_SKL[s, i].numpy())
            for i, c in enumerate(d.top_ex_SK[s].tolist())
            if float(d.top_max_SK[s, i]) > 0 and c in self.ex_pos
        ][:5]
        seqs = list(tops)
        zeros = np.zeros(self.uni_CL.shape[1], dtype=np.float32)
        for c in rng.choice(self.test_idx, size=min(5, len(self.test_idx)), replace=False):
            if float(self.max_CS[c, s]) > 0:  # a random example given it fires = a reservoir draw
                c_res, i = res[int(rng.integers(len(res)))]
                seqs.append((c_res, res_acts[i]))
            else:
                seqs.append((int(c), zeros))
        mean_V = self._lookup_mean(s)
        ids = np.array([c for c, _ in seqs])
        mask = self.mask_CL[ids]
        true = np.stack([a for _, a in seqs])[mask]
        toks = self.uni_CL[ids][mask]
        return pearson(mean_V[np.minimum(toks, len(mean_V) - 1)], true)


def summarize(scores: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Mean and median of each score over the scored features."""
    out: dict[str, Any] = {"scored": sum(v.get("detection") is not None for v in scores.values())}
    for name in SCORE_NAMES:
        vals = np.array([v[name] for v in scores.values() if v.get(name) is not None])
        out[f"{name}_mean"] = float(vals.mean()) if len(vals) else None
        out[f"{name}_median"] = float(np.median(vals)) if len(vals) else None
    return out


def feature_scores(
    scores: dict[int, dict[str, Any]],
    controls: dict[str, dict[int, dict[str, Any]]],
    seed: int = 0,
) -> dict[str, Score]:
    """Each score's mean over the scored features, its 95% interval (features resampled) and
    its margin over the strongest control (the controls' features resampled independently).

    The `shuffled` control is left out of the margin: it breaks the tie between codes and
    text, so it bounds chance, not what an untrained or random dictionary reaches; its
    value is in the summary's `controls`.
    """
    out: dict[str, Score] = {}
    for name in SCORE_NAMES:
        units = Units.mean_of((v.get(name) for v in scores.values()), "features")
        if not len(units):
            continue
        ctrl = {
            c: Units.mean_of((v.get(name) for v in sc.values()), "features")
            for c, sc in controls.items()
            if c != "shuffled"
        }
        out[name] = score(units, ctrl, higher_is_better=True, seed=seed)
    return out


def score_features(
    data: FeatureData,
    cfg: InterpConfig,
    vocab: int,
    features: list[int] | None = None,
    progress: bool = True,
) -> dict[int, dict[str, Any]]:
    """Explanation and scores of `features` (default: every feature)."""
    feats = list(range(data.counts_S.shape[0])) if features is None else features
    with torch.no_grad():
        return Scorer(data, cfg, vocab).score(feats, progress)

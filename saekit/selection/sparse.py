"""Sparse per-sample vectors and the generalized Jaccard scores MoNA ranks by.

A pool of N samples is stored as two [N, K] tensors (feature index int32, value float32), K the
top-K kept per sample; unused slots hold value 0, which adds nothing to either Jaccard sum. At
K = 128 a 100k-sample pool takes 100k · 128 · 8 B = 102 MB (dense over 16k latents: 6.5 GB).

Generalized Jaccard of nonnegative v, p with feature weights w ≥ 0:
    GJ(v, p) = Σ_f w_f min(v_f, p_f) / Σ_f w_f max(v_f, p_f)     (0/0 := 0)
For a dense prototype p only v's nonzeros matter:
    Σ w max = Σ_f w_f p_f + Σ_{v_f>0} w_f (v_f − p_f)⁺.
For two sparse vectors, max = v + e − min, so GJ = m / (|v|_w + |e|_w − m) with m = Σ w min.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from saekit.errors import SaekitError


@dataclass
class SparseVectors:
    """N nonnegative vectors of dimension `dim`, top-K (index, value) pairs per row."""

    indices_NK: Tensor
    """int32 feature ids; slots with value 0 are unused."""
    values_NK: Tensor
    """float32 values ≥ 0."""
    dim: int

    @property
    def n(self) -> int:
        return int(self.values_NK.shape[0])

    @staticmethod
    def from_dense(x_ND: Tensor, top_k: int | None) -> SparseVectors:
        """Keep each row's `top_k` largest entries (all nonzeros if None); x must be ≥ 0."""
        if (x_ND < 0).any():
            raise SaekitError("Generalized Jaccard needs nonnegative vectors; got negative values.")
        k = int((x_ND > 0).sum(dim=1).max().item()) if top_k is None else top_k
        k = max(1, min(k, x_ND.shape[1]))
        values_NK, indices_NK = torch.topk(x_ND.float(), k, dim=1, sorted=False)
        return SparseVectors(indices_NK.to(torch.int32), values_NK.contiguous(), x_ND.shape[1])

    def select(self, rows: Tensor | list[int]) -> SparseVectors:
        rows_t = torch.as_tensor(rows, dtype=torch.long)
        return SparseVectors(self.indices_NK[rows_t], self.values_NK[rows_t], self.dim)

    def dense(self) -> Tensor:
        out_ND = torch.zeros(self.n, self.dim)
        return out_ND.scatter_add_(1, self.indices_NK.long(), self.values_NK)

    def scaled(self, scale_F: Tensor) -> SparseVectors:
        """Each feature f multiplied by scale_F[f]."""
        return SparseVectors(
            self.indices_NK, self.values_NK * scale_F[self.indices_NK.long()], self.dim
        )

    def feature_max(self) -> Tensor:
        out_F = torch.zeros(self.dim)
        return out_F.scatter_reduce_(
            0, self.indices_NK.long().flatten(), self.values_NK.flatten(), "amax"
        )

    def document_frequency(self) -> Tensor:
        """Rows in which each feature is nonzero, [dim]."""
        active = (self.values_NK > 0).float().flatten()
        return torch.zeros(self.dim).index_add_(0, self.indices_NK.long().flatten(), active)

    def nbytes(self) -> int:
        return self.indices_NK.nbytes + self.values_NK.nbytes


def max_scale(pool: SparseVectors) -> Tensor:
    """1 / (pool maximum) per feature (1 where a feature never fires in the pool)."""
    peak_F = pool.feature_max()
    return torch.where(peak_F > 0, 1.0 / peak_F.clamp_min(1e-12), torch.ones_like(peak_F))


def idf_weights(pool: SparseVectors) -> Tensor:
    """BM25-style w_f = log(1 + (N − df + 0.5)/(df + 0.5)).

    A feature on every sample gets log(1 + 0.5/(N + 0.5)) ≈ 0.5/N (template residue is muted);
    one on a single sample ≈ log(2N/3). Unlike log(N/df) it never goes negative.
    """
    n = float(pool.n)
    df_F = pool.document_frequency()
    return torch.log1p((n - df_F + 0.5) / (df_F + 0.5))


def jaccard_to_prototype(pool: SparseVectors, proto_F: Tensor, weight_F: Tensor) -> Tensor:
    """GJ(v_i, p) for every pool row, [N]."""
    idx_NK = pool.indices_NK.long()
    w_NK, p_NK, v_NK = weight_F[idx_NK], proto_F[idx_NK], pool.values_NK
    inter_N = (w_NK * torch.minimum(v_NK, p_NK)).sum(dim=1)
    union_N = float((weight_F * proto_F).sum()) + (w_NK * (v_NK - p_NK).clamp_min(0)).sum(dim=1)
    return torch.where(union_N > 0, inter_N / union_N.clamp_min(1e-30), torch.zeros_like(inter_N))


def jaccard_pairwise(
    pool: SparseVectors, exemplars: SparseVectors, weight_F: Tensor, chunk: int | None = None
) -> Tensor:
    """GJ between every pool row and every exemplar, [N, M] (computed in row chunks).

    A chunk gathers an [M, C, K] block; the default C keeps it at 4M floats (16 MB), e.g.
    C = 114 rows for LESS's 285 MMLU exemplars at K = 128.
    """
    E_MF = exemplars.dense() * weight_F  # weights fold into values: min/max commute with w ≥ 0
    if chunk is None:
        chunk = max(1, 2**22 // max(exemplars.n * pool.indices_NK.shape[1], 1))
    e_mass_M = E_MF.sum(dim=1)
    out = []
    for start in range(0, pool.n, chunk):
        idx_CK = pool.indices_NK[start : start + chunk].long()
        v_CK = pool.values_NK[start : start + chunk] * weight_F[idx_CK]
        inter_CM = torch.minimum(v_CK[None], E_MF[:, idx_CK]).sum(dim=2).T
        union_CM = v_CK.sum(dim=1, keepdim=True) + e_mass_M[None] - inter_CM
        out.append(torch.where(union_CM > 0, inter_CM / union_CM.clamp_min(1e-30), 0.0))
    return torch.cat(out) if out else torch.zeros(0, exemplars.n)


def subtask_max(sim_NM: Tensor, labels: list[str]) -> Tensor:
    """LESS aggregation: max over sub-tasks of the mean similarity to that sub-task's exemplars."""
    groups = sorted(set(labels))
    per_group = [
        sim_NM[:, [i for i, lab in enumerate(labels) if lab == g]].mean(dim=1) for g in groups
    ]
    return torch.stack(per_group, dim=1).max(dim=1).values


def rank(scores_N: Tensor, n_select: int) -> Tensor:
    """Indices of the `n_select` best scores; ties go to the lower index (deterministic)."""
    if not torch.isfinite(scores_N).all():
        raise SaekitError("Selection scores contain NaN/inf; check the pool representation.")
    neg_N = -scores_N.double().numpy()
    order = np.lexsort((np.arange(len(neg_N)), neg_N))  # last key is primary
    return torch.from_numpy(order[:n_select].astype(np.int64))


def n_selected(ratio: float, n_pool: int) -> int:
    """⌈ratio · N⌉, at least 1."""
    return max(1, min(n_pool, math.ceil(ratio * n_pool - 1e-9)))

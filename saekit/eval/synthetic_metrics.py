"""Ground-truth metrics for dictionaries trained on `saekit.activations.synthetic` data
(definitions: docs/evaluation.md, "Synthetic ground truth").

true_FD: F true unit features; dec_SD: S decoder rows (any norm; normalised here). Cosines are
signed (M1): our codes are nonnegative, so an atom pointing at −g does not recover g. SAELens'
`synthetic.evals.mean_correlation_coefficient` takes |cos|; it equals our `mean_cosine` whenever
the matched cosines are ≥ 0, which is the case for any trained SAE worth scoring.

    M1 mmcs / mmcs_precision    M3 match_features → Matching(.mean_cosine, .recovered(0.9))
    M6 absorption               M7 hierarchy_consistency      M8 gram_distortion
Reconstruction (M5: FVU, L0, dead) comes from `saekit.eval.metrics`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor


def cosine_matrix(true_FD: Tensor, dec_SD: Tensor) -> Tensor:
    """cos(g_i, d_j) for every true feature i and decoder row j (float64, shape F × S)."""
    g_FD = true_FD.double() / true_FD.double().norm(dim=1, keepdim=True).clamp_min(1e-12)
    d_SD = dec_SD.double() / dec_SD.double().norm(dim=1, keepdim=True).clamp_min(1e-12)
    return g_FD @ d_SD.T


def mmcs(true_FD: Tensor, dec_SD: Tensor) -> float:
    """M1 recall: mean over true features of the best cosine with any decoder row."""
    return cosine_matrix(true_FD, dec_SD).max(dim=1).values.mean().item()


def mmcs_precision(true_FD: Tensor, dec_SD: Tensor, alive_S: Tensor | None = None) -> float:
    """M2: mean over (alive) decoder rows of the best cosine with any true feature."""
    best_S = cosine_matrix(true_FD, dec_SD).max(dim=0).values
    return (best_S if alive_S is None else best_S[alive_S]).mean().item()


def _hungarian(cost_NM: np.ndarray) -> np.ndarray:
    """Exact min-cost assignment of every row (N ≤ M) to a distinct column; O(N²M).

    Potentials method (Kuhn-Munkres with Dijkstra-style updates), vectorised over columns.
    Fallback for when scipy is absent: scipy is installed only as a transitive dependency.
    """
    n, m = cost_NM.shape
    u, v = np.zeros(n + 1), np.zeros(m + 1)
    row_of = np.zeros(m + 1, dtype=np.int64)  # column j (1-based) → row (1-based), 0 = free
    way = np.zeros(m + 1, dtype=np.int64)
    for i in range(1, n + 1):
        row_of[0], j0 = i, 0
        min_to = np.full(m + 1, np.inf)
        used = np.zeros(m + 1, dtype=bool)
        while True:
            used[j0] = True
            i0 = row_of[j0]
            free = ~used
            free[0] = False
            cur = cost_NM[i0 - 1] - u[i0] - v[1:]
            better = free[1:] & (cur < min_to[1:])
            min_to[1:][better] = cur[better]
            way[1:][better] = j0
            j1 = int(np.argmin(np.where(free, min_to, np.inf)))
            delta = min_to[j1]
            u[row_of[used]] += delta
            v[used] -= delta
            min_to[free] -= delta
            j0 = j1
            if row_of[j0] == 0:
                break
        while j0:  # augment along the alternating path
            j1 = way[j0]
            row_of[j0] = row_of[j1]
            j0 = j1
    col_of_row = np.zeros(n, dtype=np.int64)
    for j in range(1, m + 1):
        if row_of[j]:
            col_of_row[row_of[j] - 1] = j - 1
    return col_of_row


def linear_assignment(cost_NM: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Min-cost one-to-one matching (rectangular allowed): scipy if importable, else ours."""
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError:
        if cost_NM.shape[0] <= cost_NM.shape[1]:
            return np.arange(cost_NM.shape[0]), _hungarian(cost_NM)
        cols = np.arange(cost_NM.shape[1])
        rows = _hungarian(cost_NM.T)
        order = np.argsort(rows)
        return rows[order], cols[order]
    rows, cols = linear_sum_assignment(cost_NM)
    return np.asarray(rows), np.asarray(cols)


class Matching(NamedTuple):
    """One-to-one assignment of true features to decoder rows (M3)."""

    atom_F: Tensor
    """Decoder row matched to each true feature; −1 when there are fewer rows than features."""
    cosine_F: Tensor
    """Cosine of each feature with its matched row; 0 for unmatched features."""

    @property
    def mean_cosine(self) -> float:
        return self.cosine_F.mean().item()

    def recovered(self, tau: float = 0.9) -> float:
        """Fraction of true features whose matched cosine is ≥ tau (recovered@tau)."""
        return (self.cosine_F >= tau).double().mean().item()


def match_features(true_FD: Tensor, dec_SD: Tensor) -> Matching:
    """Hungarian matching on cost 1 − cos(g_i, d_j), maximising the summed matched cosine."""
    cos_FS = cosine_matrix(true_FD, dec_SD)
    rows, cols = linear_assignment((1 - cos_FS).cpu().numpy())
    atom_F = torch.full((cos_FS.shape[0],), -1, dtype=torch.int64)
    cosine_F = torch.zeros(cos_FS.shape[0], dtype=torch.float64)
    rows_t, cols_t = torch.as_tensor(rows), torch.as_tensor(cols)
    atom_F[rows_t] = cols_t
    cosine_F[rows_t] = cos_FS[rows_t, cols_t]
    return Matching(atom_F, cosine_F)


def gram_distortion(true_FD: Tensor, dec_SD: Tensor, matching: Matching) -> float:
    """M8: ‖Gram(matched rows) − Gram(true)‖_F / ‖Gram(true)‖_F over matched features.

    0 = the dictionary keeps the true correlations (e.g. sibling cosine 0.4 at G2 level 4);
    a dictionary that orthogonalises F features with pairwise cosine c scores
    c·√(F(F−1)) / √(F + F(F−1)c²).
    """
    keep_M = matching.atom_F >= 0
    g_MD = true_FD[keep_M].double()
    d_MD = dec_SD[matching.atom_F[keep_M]].double()
    g_MD = g_MD / g_MD.norm(dim=1, keepdim=True)
    d_MD = d_MD / d_MD.norm(dim=1, keepdim=True).clamp_min(1e-12)
    gram_true = g_MD @ g_MD.T
    return ((d_MD @ d_MD.T - gram_true).norm() / gram_true.norm()).item()


class Absorption(NamedTuple):
    """How a parent's latent behaves when a child co-fires (M6), on parent-on tokens."""

    rate: float
    """P(latent off | child on) − P(latent off | no child): 1 = fully absorbed, 0 = none."""
    off_with_child: float
    """P(parent latent = 0 | parent on, some child on)."""
    off_without_child: float
    """P(parent latent = 0 | parent on, no child on)."""
    activation_ratio: float
    """E[latent | child on] / E[latent | no child]: partial absorption (1 = none, 0 = full)."""


def absorption(
    z_BS: Tensor, codes_BF: Tensor, parent: int, children: list[int], atom: int
) -> Absorption:
    """Absorption of true feature `parent` whose matched latent is `atom`."""
    parent_on_B = codes_BF[:, parent] > 0
    child_on_B = (codes_BF[:, children] > 0).any(dim=1)
    z_B = z_BS[:, atom].double()
    with_B, without_B = parent_on_B & child_on_B, parent_on_B & ~child_on_B
    off_with = (z_B[with_B] == 0).double().mean().item()
    off_without = (z_B[without_B] == 0).double().mean().item()
    ratio = (z_B[with_B].mean() / z_B[without_B].mean()).item()
    return Absorption(off_with - off_without, off_with, off_without, ratio)


class HierarchyConsistency(NamedTuple):
    """Does the dictionary's firing respect the true tree (M7)? Both 0 when it does."""

    sibling_violation: float
    """Fraction of tokens on which ≥ 2 latents of one sibling group fire."""
    implication_violation: float
    """P(parent latent = 0 | child latent fires), pooled over matched (child, parent) pairs."""


def hierarchy_consistency(
    z_BS: Tensor, parent_F: Tensor, matching: Matching
) -> HierarchyConsistency:
    """M7 over the matched latents of a tree whose parent of feature i is parent_F[i] (−1: none).

    The implication term is conditional on the child latent firing rather than the joint
    P(child on, parent off) (docs/evaluation.md): the joint scales with child frequency (0.04
    per child in the default tree), which makes it incomparable across trees.
    """
    fires_BS = z_BS != 0
    atom_F = matching.atom_F
    pairs = [
        (int(atom_F[c]), int(atom_F[p]))
        for c, p in enumerate(parent_F.tolist())
        if p >= 0 and atom_F[c] >= 0 and atom_F[p] >= 0
    ]
    n_sib_B = torch.zeros(z_BS.shape[0], dtype=torch.bool)
    for p in sorted({p for p in parent_F.tolist() if p >= 0}):
        atoms = [int(atom_F[c]) for c in (parent_F == p).nonzero().flatten() if atom_F[c] >= 0]
        n_sib_B |= fires_BS[:, atoms].sum(dim=1) >= 2
    child_fires, parent_off = 0, 0
    for c_atom, p_atom in pairs:
        on_B = fires_BS[:, c_atom]
        child_fires += int(on_B.sum())
        parent_off += int((on_B & ~fires_BS[:, p_atom]).sum())
    implication = parent_off / child_fires if child_fires else 0.0
    return HierarchyConsistency(n_sib_B.double().mean().item(), implication)


class TranscoderRecovery(NamedTuple):
    """How well a transcoder recovers a known sparse map (activations/synthetic_map.py)."""

    input_mmcs: float
    """M1 on the input side: mean over input features e_i of the best cosine with any encoder
    column (W_enc[:, s], the direction latent s reads)."""
    output_mmcs: float
    """M1 on the output side: mean over effects u_i of the best cosine with any decoder row."""
    paired_input: float
    """Mean cos(e_i, W_enc[:, s_i]) where s_i is the latent matched to u_i on the output side
    (Hungarian): the same latent must read e_i and write u_i."""
    paired_recovered: float
    """Fraction of features whose matched latent has both cosines ≥ 0.9."""


def transcoder_recovery(
    features_FD: Tensor, effects_FO: Tensor, W_enc_DS: Tensor, W_dec_SO: Tensor
) -> TranscoderRecovery:
    """Input-side and output-side recovery of a map whose input feature i (row of features_FD)
    writes effects_FO[i], by a transcoder with encoder W_enc_DS and decoder W_dec_SO."""
    W_enc_DS, W_dec_SO = W_enc_DS.detach(), W_dec_SO.detach()
    out = match_features(effects_FO, W_dec_SO)
    cos_in_FS = cosine_matrix(features_FD, W_enc_DS.T)
    matched = out.atom_F >= 0
    paired_F = torch.zeros_like(out.cosine_F)
    paired_F[matched] = cos_in_FS[matched.nonzero().flatten(), out.atom_F[matched]]
    both_F = (paired_F >= 0.9) & (out.cosine_F >= 0.9)
    return TranscoderRecovery(
        input_mmcs=cos_in_FS.max(dim=1).values.mean().item(),
        output_mmcs=mmcs(effects_FO, W_dec_SO),
        paired_input=paired_F.mean().item(),
        paired_recovered=both_F.double().mean().item(),
    )

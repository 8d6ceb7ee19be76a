"""Judge-free steering metrics, each defined once (protocol: docs/steering.md).

Shapes: P prompts, V vocabulary. Log-probabilities are natural logs.

    kl_P           KL(p_0 ‖ p_α) of the next-token distribution at the last prompt position
    concept mass   m = log Σ_{t∈T} p(t | prompt): log-probability of the target token set T
    concept gain   c = clip((m_α − m_0) / (0 − m_0), 0, 1): the fraction of the log-distance
                   to certainty that steering covers (0 = no gain, 1 = T is certain)
    hit@k          1 if any target token is among the k most likely next tokens
    rep3           1 − distinct 3-grams / 3-grams of a continuation (0 = no repeats)
    fluency        f = exp(−max(0, ΔNLL)) · (1 − rep3), ΔNLL = mean NLL of the steered
                   continuation under the unsteered model minus that of the unsteered one
    score          S = 2cf / (c + f), 0 if either is 0 (harmonic mean, as AxBench)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def kl_last(logp0_PV: Tensor, logp1_PV: Tensor) -> Tensor:
    """KL(p0 ‖ p1) per prompt from two log-probability rows."""
    return (logp0_PV.exp() * (logp0_PV - logp1_PV)).sum(dim=-1).clamp_min(0.0)


def concept_mass(logp_PV: Tensor, targets_N: Tensor) -> Tensor:
    """m_P = log Σ_{t∈T} p(t): log-probability of the target set."""
    return torch.logsumexp(logp_PV[:, targets_N], dim=-1)


def concept_gain(m0_P: Tensor, m1_P: Tensor) -> Tensor:
    """c_P = clip((m1 − m0) / (0 − m0), 0, 1); m0 = 0 (already certain) gives 0."""
    distance_P = (-m0_P).clamp_min(1e-12)
    return ((m1_P - m0_P) / distance_P).clamp(0.0, 1.0)


def hit_at(logp_PV: Tensor, targets_N: Tensor, k: int = 10) -> Tensor:
    """1.0 where any target token is among the top-k next tokens, else 0.0."""
    top_PK = logp_PV.topk(min(k, logp_PV.shape[-1]), dim=-1).indices
    return torch.isin(top_PK, targets_N).any(dim=-1).float()


def target_rate(tokens: Sequence[int], targets: set[int]) -> float:
    """Fraction of generated tokens that are target tokens (0 for an empty continuation)."""
    return sum(t in targets for t in tokens) / len(tokens) if tokens else 0.0


def rep3(tokens: Sequence[int]) -> float:
    """1 − distinct/total 3-grams; 0 when the continuation has fewer than 3 tokens."""
    grams = [tuple(tokens[i : i + 3]) for i in range(len(tokens) - 2)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def fluency(delta_nll_P: Tensor, rep3_P: Tensor) -> Tensor:
    """f_P = exp(−max(0, ΔNLL)) · (1 − rep3)."""
    return torch.exp(-delta_nll_P.clamp_min(0.0)) * (1.0 - rep3_P)


def harmonic(c_P: Tensor, f_P: Tensor) -> Tensor:
    """S_P = 2cf/(c+f), 0 where either is 0."""
    denom_P = c_P + f_P
    return torch.where(denom_P > 0, 2 * c_P * f_P / denom_P.clamp_min(1e-12), 0.0)

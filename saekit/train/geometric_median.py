"""Geometric median of activation rows (Weiszfeld), used to initialize b_dec.

The median is robust to the 10-100x norm outliers of attention-sink tokens, where the mean is
pulled towards them; OpenAI and dictionary_learning initialize b_dec this way.
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def geometric_median(x_ND: Tensor, iterations: int = 100, tol: float = 1e-6) -> Tensor:
    """argmin_m Σ_i ‖x_i − m‖ by Weiszfeld's fixed point, starting from the mean."""
    x = x_ND.double()
    m_D = x.mean(dim=0)
    for _ in range(iterations):
        dist_N = (x - m_D).norm(dim=1).clamp_min(1e-12)
        w_N = 1.0 / dist_N
        new_D = (w_N[:, None] * x).sum(dim=0) / w_N.sum()
        shift = (new_D - m_D).norm() / m_D.norm().clamp_min(1e-12)
        m_D = new_D
        if shift < tol:
            break
    return m_D.to(x_ND.dtype)

"""Shared test helpers: small configs, synthetic sparse data, parameter randomization.

A plain module (not conftest) so test files import it by a name no other test folder uses.
"""

from __future__ import annotations

import torch

from saekit.config import from_dict
from saekit.dictionaries import SAEConfig

D_IN = 16
D_SAE = 64
K = 4
METHODS = ("relu", "topk", "batchtopk", "jumprelu", "matryoshka")


def small_cfg(method: str, **overrides) -> SAEConfig:
    """A small config; method options as a section mapping, e.g. relu={"l1_coefficient": 2}."""
    return from_dict(SAEConfig, {"method": method, "d_sae": D_SAE, "k": K, **overrides})


def sparse_data(
    n: int = 4096, d_in: int = D_IN, n_features: int = 32, p_active: float = 3 / 32, seed: int = 0
) -> torch.Tensor:
    """x = offset + Σ_i a_i f_i over ~3 active ground-truth unit directions f_i per row."""
    gen = torch.Generator().manual_seed(seed)
    F_FD = torch.randn(n_features, d_in, generator=gen)
    F_FD /= F_FD.norm(dim=1, keepdim=True)
    active_NF = torch.rand(n, n_features, generator=gen) < p_active
    a_NF = active_NF * (0.5 + torch.rand(n, n_features, generator=gen))
    offset_D = 0.5 * torch.randn(d_in, generator=gen)
    return a_NF @ F_FD + offset_D


@torch.no_grad()
def randomize(d, seed: int = 0) -> None:
    """Move every parameter off its init so bias/threshold mistakes cannot hide."""
    gen = torch.Generator().manual_seed(seed)
    d.W_enc.add_(0.3 * torch.randn(d.W_enc.shape, generator=gen))
    d.b_enc.copy_(0.2 * torch.randn(d.b_enc.shape, generator=gen))
    d.b_dec.copy_(torch.randn(d.b_dec.shape, generator=gen))
    if d.method == "jumprelu":
        d.threshold.copy_(0.5 * torch.rand(d.threshold.shape, generator=gen))
    if d.method in ("batchtopk", "matryoshka"):
        d.threshold.fill_(0.3)

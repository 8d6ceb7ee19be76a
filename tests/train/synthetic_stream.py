"""Synthetic activations for trainer tests, served by the library's `TensorStream`.

Each hook has its own `FlatSuperposition` (its own features, width and scale), so a dictionary
reading the wrong hook sees different data, and with `scales` far apart a mix-up is obvious.
Rows are drawn with a generator seeded by `draw_seed`: the training pool and held-out rows
come from the same distribution with different seeds. Imported by name (unique across tests/).
"""

from __future__ import annotations

import torch
from torch import Tensor

from saekit.activations import TensorStream
from saekit.activations.synthetic import FlatSuperposition

POOL_TOKENS = 2**15
"""Training rows per hook; longer runs read them again, reshuffled each epoch."""


def synthetic_rows(
    hooks: dict[str, int],
    n: int,
    draw_seed: int,
    scales: dict[str, float] | None = None,
    n_features: int = 64,
    expected_l0: float = 4.0,
) -> dict[str, Tensor]:
    """n raw rows per hook (before any normalization)."""
    out = {}
    for j, (hook, d) in enumerate(hooks.items()):
        data = FlatSuperposition(
            n_features=n_features, d_in=d, expected_l0=expected_l0, noise_std=0.01, seed=j
        )
        gen = torch.Generator().manual_seed(draw_seed * 1_000_003 + j)
        # An offset keeps the mean away from 0, so b_dec's init has something to find.
        out[hook] = (data.sample(n, generator=gen).x_BD + 0.5) * (scales or {}).get(hook, 1.0)
    return out


def synthetic_stream(
    hooks: dict[str, int] | None = None,
    batch_size: int = 256,
    seed: int = 0,
    normalize: bool = False,
    scales: dict[str, float] | None = None,
    n_tokens: int = POOL_TOKENS,
) -> TensorStream:
    """A TensorStream over `n_tokens` synthetic rows per hook (default one hook h0 of width 16)."""
    rows = synthetic_rows(hooks or {"h0": 16}, n_tokens, seed, scales)
    return TensorStream(rows, batch_size, seed=seed, normalize=normalize)


def held_out(stream: TensorStream, hooks: dict[str, int], scales=None, n: int = 4096) -> dict:
    """Rows no training step read, scaled as `stream` serves them."""
    rows = synthetic_rows(hooks, n, draw_seed=10_000, scales=scales)
    return {h: x * stream.norm_factors.get(h, 1.0) for h, x in rows.items()}

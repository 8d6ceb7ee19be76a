"""An in-memory activation stream over `FlatSuperposition` data, for trainer tests.

Batch i of hook h is drawn with a generator seeded by (seed, h's index, i), so the stream's
whole position is one integer and `load_state_dict` continues on exactly the next batch.
Each hook has its own generator (its own features, width and scale), so a dictionary reading
the wrong hook sees different data, and with `scales` far apart a mix-up is obvious.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from saekit.activations.stream import BaseStream, StreamConfig
from saekit.eval.synthetic import FlatSuperposition


class SyntheticStream(BaseStream):
    """Seeded batches {hook: [batch_size, d_in]} from one FlatSuperposition per hook."""

    def __init__(
        self,
        hooks: dict[str, int] | None = None,
        batch_size: int = 256,
        seed: int = 0,
        normalize: bool = False,
        scales: dict[str, float] | None = None,
        n_features: int = 64,
        expected_l0: float = 4.0,
    ) -> None:
        hooks = hooks or {"h0": 16}
        self.cfg = StreamConfig(hooks=tuple(hooks), batch_size=batch_size, normalize=normalize)
        self.d_in = dict(hooks)
        self.norm_factors = {}
        self.seed = seed
        self.scales = {h: (scales or {}).get(h, 1.0) for h in hooks}
        self.data = {
            h: FlatSuperposition(
                n_features=n_features, d_in=d, expected_l0=expected_l0, noise_std=0.01, seed=i
            )
            for i, (h, d) in enumerate(hooks.items())
        }
        self.batch_index = 0
        self.n_tokens_served = 0

    def raw_batch(self, index: int) -> dict[str, Tensor]:
        """Batch `index` before normalization (a pure function of the seeds)."""
        out = {}
        for j, (hook, data) in enumerate(self.data.items()):
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + j * 100_003 + index)
            # An offset keeps the mean away from 0, so b_dec's init has something to find.
            x_BD = data.sample(self.cfg.batch_size, generator=gen).x_BD + 0.5
            out[hook] = x_BD * self.scales[hook]
        return out

    def next_batch(self) -> dict[str, Tensor]:
        batch = self.raw_batch(self.batch_index)
        self._estimate_norm_factors(batch)
        self.batch_index += 1
        self.n_tokens_served += self.cfg.batch_size
        return self._scaled(batch)

    def state_dict(self) -> dict[str, Any]:
        return {
            "batch_index": self.batch_index,
            "norm_factors": dict(self.norm_factors),
            "n_tokens_served": self.n_tokens_served,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batch_index = int(state["batch_index"])
        self.norm_factors = {k: float(v) for k, v in state["norm_factors"].items()}
        self.n_tokens_served = int(state["n_tokens_served"])

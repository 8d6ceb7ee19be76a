"""A stream of synthetic activations with known features, behind the live stream's interface.

Batch n is drawn from a generator seeded with (seed, n), so the position is one integer and a
restored stream continues exactly. Used by `saekit bench synthetic` and the trainer's tests.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from saekit.activations.stream import BaseStream, StreamConfig
from saekit.eval.synthetic import SyntheticData


class SyntheticStream(BaseStream):
    """Serves `cfg.batch_size` rows of `data` per hook (every hook gets the same rows)."""

    def __init__(self, data: SyntheticData, cfg: StreamConfig) -> None:
        self.data = data
        self.cfg = cfg
        self.d_in = {h: data.d_in for h in cfg.hooks}
        self.norm_factors = {}
        self.n_tokens_served = 0
        self._batch_index = 0

    def next_batch(self) -> dict[str, Tensor]:
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self._batch_index)
        x_BD = self.data.sample(self.cfg.batch_size, generator=gen).x_BD
        self._batch_index += 1
        self.n_tokens_served += self.cfg.batch_size
        return {h: x_BD for h in self.cfg.hooks}

    def state_dict(self) -> dict[str, Any]:
        return {
            "batch_index": self._batch_index,
            "n_tokens_served": self.n_tokens_served,
            "norm_factors": {},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._batch_index = int(state["batch_index"])
        self.n_tokens_served = int(state["n_tokens_served"])

"""TensorStream: batches of activations a user already holds in memory, no model involved.

    stream = TensorStream(acts_ND, batch_size=4096, hook="blocks.6.hook_resid_post")
    stream = TensorStream({"layer6": a_ND, "layer9": b_ND})      # several hooks, same tokens

It serves the trainer exactly as the live and cached streams do (`next_batch()` →
{hook: [batch_size, d_in]}), so anything that trains on a recipe's stream trains on tensors.
Rows are served in epochs: epoch e is a permutation of all N rows drawn from a generator
seeded with (seed, e) (`shuffle=False`: in order), and a batch that runs past the end
continues into the next epoch. The position is two integers, so a restored stream continues
on exactly the next rows. Row i is the same token in every hook.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from saekit.activations.stream import BaseStream, StreamConfig
from saekit.errors import SaekitError

NORM_SAMPLE_ROWS = 65536
"""Rows (of the first epoch's order) whose mean norm sets the normalization factor: about
one shuffle buffer of the live stream."""


class TensorStream(BaseStream):
    """Serves `batch_size` rows of in-memory activations per hook, epoch after epoch."""

    def __init__(
        self,
        acts: Tensor | Mapping[str, Tensor],
        batch_size: int = 4096,
        *,
        hook: str = "x",
        shuffle: bool = True,
        seed: int = 0,
        normalize: bool = False,
        check_finite: bool = True,
    ) -> None:
        """acts: [tokens, d_in], or {hook: [tokens, d_in]} with the same tokens per hook.
        check_finite=False serves NaN/inf rows as they are (e.g. to write them to a cache)."""
        rows = {hook: acts} if isinstance(acts, Tensor) else dict(acts)
        if not rows:
            raise SaekitError("TensorStream needs at least one tensor of activations.")
        self.rows = {name: _checked(name, x, check_finite) for name, x in rows.items()}
        counts = {name: x.shape[0] for name, x in self.rows.items()}
        if len(set(counts.values())) != 1:
            raise SaekitError(
                f"Every hook needs the same number of rows (one per token), got {counts}."
            )
        self.n_rows = next(iter(counts.values()))
        self.cfg = StreamConfig(
            hooks=tuple(self.rows), batch_size=batch_size, normalize=normalize, seed=seed
        )
        self.shuffle = shuffle
        self.d_in = {name: x.shape[1] for name, x in self.rows.items()}
        self.norm_factors = {}
        self.n_tokens_served = 0
        self._epoch = 0
        self._offset = 0
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> Tensor | None:
        """Row order of `epoch` (None: in order, served as views without a copy)."""
        if not self.shuffle:
            return None
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
        return torch.randperm(self.n_rows, generator=gen)

    def _take(self, start: int, n: int, order: Tensor | None = None) -> dict[str, Tensor]:
        if order is None:
            return {name: x[start : start + n] for name, x in self.rows.items()}
        idx = order[start : start + n]
        return {name: x[idx.to(x.device)] for name, x in self.rows.items()}

    def _sample(self, n: int) -> dict[str, Tensor]:
        """The first n rows of the first epoch (the normalization sample)."""
        return self._take(0, n, self._epoch_order(0))

    def next_batch(self) -> dict[str, Tensor]:
        if self.cfg.normalize and not self.norm_factors:  # once; then kept in the state
            self._estimate_norm_factors(self._sample(min(self.n_rows, NORM_SAMPLE_ROWS)))
        need = self.cfg.batch_size
        pieces: dict[str, list[Tensor]] = {name: [] for name in self.rows}
        while need > 0:
            take = min(need, self.n_rows - self._offset)
            for name, x in self._take(self._offset, take, self._order).items():
                pieces[name].append(x)
            self._offset += take
            need -= take
            if self._offset == self.n_rows:
                self._epoch += 1
                self._offset = 0
                self._order = self._epoch_order(self._epoch)
        self.n_tokens_served += self.cfg.batch_size
        batch = {name: p[0] if len(p) == 1 else torch.cat(p) for name, p in pieces.items()}
        return self._scaled(batch)

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self._epoch,
            "offset": self._offset,
            "norm_factors": dict(self.norm_factors),
            "n_tokens_served": self.n_tokens_served,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._epoch = int(state["epoch"])
        self._offset = int(state["offset"])
        self.norm_factors = {k: float(v) for k, v in state["norm_factors"].items()}
        self.n_tokens_served = int(state["n_tokens_served"])
        self._order = self._epoch_order(self._epoch)


def _checked(name: str, x: Tensor, check_finite: bool) -> Tensor:
    if not isinstance(x, Tensor) or x.ndim != 2 or min(x.shape) < 1:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise SaekitError(
            f"Activations of {name!r} must be a 2-D tensor [tokens, d_in], got {shape}; "
            "flatten batch and position first (acts.flatten(0, -2))."
        )
    if not check_finite:
        return x
    bad = int((~torch.isfinite(x).all(dim=1)).sum())
    if bad:
        raise SaekitError(
            f"Activations of {name!r} hold NaN/inf in {bad} of {x.shape[0]} rows; drop those "
            "rows first (acts[torch.isfinite(acts).all(dim=1)])."
        )
    return x

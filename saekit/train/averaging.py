"""An exponential moving average of a dictionary's weights: what the trainer exports.

Adam's last iterate carries the noise of its last few batches; on real activations a batch
with a few very-high-norm rows knocks it off for tens of steps, and a run stopped there (or a
checkpoint written there) exports that. The average after step t is

    θ̄ ← β_t θ̄ + (1 − β_t) θ_t,    β_t = min(β, (1 + t) / (10 + t)),

whose ramp lets the average forget the random initialization within the first tens of steps
instead of after ~1/(1 − β). Training itself (gradients, dead-latent clocks, logged FVU) uses
the live weights; checkpoints keep both. Unit-norm-decoder methods get their averaged decoder
rows renormalized, as the trainer does to the live ones after every step (matching pursuit
needs unit atoms).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from saekit.dictionaries import TrainableDictionary


def average_decay(beta: float, t: int) -> float:
    """β_t: the weight of the previous average at update `t` (counted from 0)."""
    return min(beta, (1 + t) / (10 + t))


class WeightAverage:
    """The moving average of `sae`'s parameters, updated after every optimizer step."""

    def __init__(self, sae: TrainableDictionary, beta: float) -> None:
        if not 0 < beta < 1:
            raise ValueError(f"beta must be in (0, 1), got {beta}")
        self.beta = beta
        self.params = [p.detach().clone() for p in sae.parameters()]
        self.updates = 0
        """Updates so far (t of β_t)."""

    @torch.no_grad()
    def update(self, sae: TrainableDictionary) -> None:
        weight = 1 - average_decay(self.beta, self.updates)
        torch._foreach_lerp_(self.params, [p.detach() for p in sae.parameters()], weight)
        self.updates += 1

    @torch.no_grad()
    def reset(self, sae: TrainableDictionary) -> None:
        """Start over from `sae`'s weights (a resume from a checkpoint that holds none)."""
        for avg, p in zip(self.params, sae.parameters(), strict=True):
            avg.copy_(p)
        self.updates = 0

    @torch.no_grad()
    def averaged(self, sae: TrainableDictionary) -> TrainableDictionary:
        """A copy of `sae` (buffers and settings as they are now) holding the averaged weights."""
        out = copy.deepcopy(sae)
        for q, avg in zip(out.parameters(), self.params, strict=True):
            q.copy_(avg)
        if out.unit_norm_decoder:
            out.normalize_decoder()
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"params": self.params, "updates": self.updates, "beta": self.beta}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        for avg, saved in zip(self.params, state["params"], strict=True):
            avg.copy_(saved)
        self.updates = int(state["updates"])

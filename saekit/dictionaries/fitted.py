"""Dictionaries fitted in closed form (SNMF): the fitting runner's side of the interface.

A fitted dictionary is never trained by gradient steps. Its class method `fit(cfg, data)`
reads the tokens it needs from `FitData` (one hook's first N rows, as a matrix or replayed in
batches) and returns the fitted dictionary with the loss of every iteration, which the runner
logs in the trainer's history format.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from torch import Tensor

from saekit.dictionaries.base import Dictionary

if TYPE_CHECKING:
    from saekit.dictionaries.config import SAEConfig


class FitData:
    """One hook's first `n_tokens` activation rows: whole (`matrix`) or in batches (`passes`)."""

    def __init__(
        self,
        d_in: int,
        n_tokens: int,
        matrix: Callable[[], Tensor],
        passes: Callable[[], Iterator[Tensor]],
    ) -> None:
        self.d_in, self.n_tokens = d_in, n_tokens
        self._matrix, self._passes = matrix, passes

    def matrix(self) -> Tensor:
        """The rows as one D × N float32 matrix (a column per token)."""
        return self._matrix()

    def passes(self) -> Iterator[Tensor]:
        """The rows again, batch by batch [B, D]: the same batches on every call."""
        return self._passes()


class Fit(NamedTuple):
    """What `FittedDictionary.fit` returns."""

    dictionary: FittedDictionary
    """The fitted dictionary (on the CPU, taking the activations it was fitted on)."""
    losses: list[float]
    """Loss of every iteration (or pass), in order."""
    fvu_scale: float
    """Divides a loss into a fraction of variance unexplained (Σ‖x − mean‖²)."""
    facts: dict[str, Any]
    """JSON-able facts about the fit, saved in the dictionary's provenance and run summary."""


class FittedDictionary(Dictionary):
    """A dictionary fitted in closed form to activations, not trained by gradient steps."""

    @classmethod
    def check(cls, cfg: SAEConfig, n_tokens: int) -> None:
        """Refuse settings the fit cannot honour, before any token is read."""

    @classmethod
    def fit(cls, cfg: SAEConfig, data: FitData, progress: bool = True) -> Fit:
        raise NotImplementedError

"""Steering interventions: add a direction, or clamp a dictionary feature.

Both are `HookedModel.intervene` functions with an `offset`, the absolute position of the first
row of the activation they receive. A full forward has offset 0; a KV-cached generation step
feeds one new position at a time and sets the offset (see generate.py), so "from position p"
means the same absolute tokens with or without a cache.

    AddDirection   h_t ← h_t + α v                    for t ≥ from_pos
    RowDirections  h_bt ← h_bt + α_b v_b              one direction and strength per row b
    ClampFeature   h_t ← h_t + (value − z_i(h_t)) d_i  for t ≥ from_pos

Clamping goes through the dictionary but keeps its error term: with x̂ = decode(z),
h' = decode(z') + (h − x̂) = h + (z'_i − z_i) d_i when only latent i changes, so nothing the
dictionary fails to reconstruct is lost.

A transcoder's feature reads one hook (an MLP's input) and writes another (its output): its
direction d_i is added at the output hook, and its clamp reads z_i from the input recorded by
`RecordInput` earlier in the same forward, then adds (value − z_i) d_i to the MLP's own output.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from saekit.dictionaries.base import Dictionary
from saekit.errors import SaekitError


class PositionalEdit:
    """An intervention that acts on absolute positions ≥ `from_pos`."""

    def __init__(self, from_pos: int = 0) -> None:
        if from_pos < 0:
            raise SaekitError(f"from_pos must be ≥ 0, got {from_pos}.")
        self.from_pos = from_pos
        self.offset = 0
        """Absolute position of row 0 of the next activation (set by the generator)."""

    def select_rows(self, rows: list[int]) -> None:
        """The sequences (by index) the next activations hold; per-row edits follow them."""

    def _mask_T(self, h_BTD: Tensor) -> Tensor:
        pos_T = torch.arange(h_BTD.shape[1], device=h_BTD.device) + self.offset
        return (pos_T >= self.from_pos).to(h_BTD.dtype)

    def __call__(self, h_BTD: Tensor) -> Tensor:
        raise NotImplementedError


class AddDirection(PositionalEdit):
    """h ← h + α·v at positions ≥ from_pos (v as given: pass a unit vector for unit steps)."""

    def __init__(self, vector_D: Tensor, alpha: float, from_pos: int = 0) -> None:
        super().__init__(from_pos)
        if not math.isfinite(alpha):
            raise SaekitError(f"Steering strength must be a finite number, got {alpha}.")
        if vector_D.ndim != 1:
            raise SaekitError(f"A steering vector must be 1-D, got shape {tuple(vector_D.shape)}.")
        self.vector_D = vector_D
        self.alpha = float(alpha)

    def __call__(self, h_BTD: Tensor) -> Tensor:
        if h_BTD.shape[-1] != self.vector_D.shape[0]:
            raise SaekitError(
                f"Steering vector has width {self.vector_D.shape[0]} but the hook's activation "
                f"has width {h_BTD.shape[-1]}; steer at the hook the direction was learned at."
            )
        v_D = self.vector_D.to(h_BTD)
        return h_BTD + self.alpha * self._mask_T(h_BTD)[None, :, None] * v_D


class RowDirections(PositionalEdit):
    """h_b ← h_b + α_b·v_b: sequence s of a batch run gets its own direction and strength.

    Steering many directions on many prompts in one forward: sequence s = (direction, prompt)
    pairs flattened, and `select_rows` (called by the generator per batch) picks the rows.
    """

    def __init__(self, vectors_SD: Tensor, alphas_S: Tensor, from_pos: int = 0) -> None:
        super().__init__(from_pos)
        if vectors_SD.ndim != 2 or alphas_S.shape != vectors_SD.shape[:1]:
            raise SaekitError("RowDirections needs vectors [S, D] and one strength per row [S].")
        if not bool(torch.isfinite(alphas_S).all()):
            raise SaekitError("Steering strengths must be finite numbers.")
        self.vectors_SD, self.alphas_S = vectors_SD.float(), alphas_S.float()
        self._rows = list(range(vectors_SD.shape[0]))

    def select_rows(self, rows: list[int]) -> None:
        self._rows = list(rows)

    def __call__(self, h_BTD: Tensor) -> Tensor:
        if h_BTD.shape[0] != len(self._rows) or h_BTD.shape[-1] != self.vectors_SD.shape[1]:
            raise SaekitError(
                f"Per-row steering holds {len(self._rows)} rows of width "
                f"{self.vectors_SD.shape[1]}, got an activation of shape {tuple(h_BTD.shape)}."
            )
        step_BD = (self.alphas_S[self._rows, None] * self.vectors_SD[self._rows]).to(h_BTD)
        return h_BTD + self._mask_T(h_BTD)[None, :, None] * step_BD[:, None, :]


class RecordInput(PositionalEdit):
    """Passes a transcoder's input hook on unchanged, keeping it for `ClampFeature`."""

    def __init__(self) -> None:
        super().__init__(0)
        self.last: Tensor | None = None

    def __call__(self, h_BTD: Tensor) -> Tensor:
        self.last = h_BTD
        return h_BTD


class ClampFeature(PositionalEdit):
    """Set latent `index` of `sae` to `value` at positions ≥ from_pos, keeping the error term
    (a transcoder: z from the input `source` recorded, the edit at its output hook)."""

    def __init__(
        self,
        sae: Dictionary,
        index: int,
        value: float,
        from_pos: int = 0,
        source: RecordInput | None = None,
    ) -> None:
        super().__init__(from_pos)
        check_feature(index, sae.d_sae)
        if not math.isfinite(value):
            raise SaekitError(f"Clamp value must be a finite number, got {value}.")
        if sae.is_transcoder and source is None:
            raise SaekitError("A transcoder's clamp reads its input hook: pass a RecordInput.")
        self.sae, self.index, self.value, self.source = sae, index, float(value), source

    @torch.no_grad()
    def __call__(self, h_BTD: Tensor) -> Tensor:
        x_BTD = h_BTD if self.source is None else self.source.last
        if x_BTD is None:
            raise SaekitError("The transcoder's input hook did not run before its output hook.")
        B, T, D = x_BTD.shape
        if self.sae.d_in != D:
            raise SaekitError(
                f"The dictionary reads width {self.sae.d_in} but the hook has width {D}; "
                "clamp at the hook the dictionary was trained on."
            )
        z_N = self.sae.encode(x_BTD.reshape(B * T, D).float())[:, self.index]
        delta_BT = (self.value - z_N).reshape(B, T) * self._mask_T(h_BTD)[None, :]
        d_D = self.sae.W_dec[self.index].to(h_BTD)
        return h_BTD + delta_BT[..., None].to(h_BTD) * d_D


def check_feature(index: int, d_sae: int) -> None:
    """A clear error for a feature index outside [0, d_sae)."""
    if not 0 <= index < d_sae:
        raise SaekitError(
            f"Feature index {index} is out of range: this dictionary has {d_sae} features "
            f"(valid: 0..{d_sae - 1})."
        )

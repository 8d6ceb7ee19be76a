"""ActivationStream: shuffled batches of B tokens per hook, streamed out of the hooked model.

The buffer is deterministic: buffer r holds windows [r·S, (r+1)·S) of the split (S =
`buffer_sequences`), captured in one pass of forwards, filtered, then permuted with a generator
seeded by (seed, r). So the stream's position is two integers (r, offset): restoring it costs
one buffer recompute and continues on exactly the next rows. With S = 512 windows of 128 tokens,
each 4096-token batch draws ~8 tokens from each of 512 sequences.

Filters (one mask shared by all hooks, so row i is the same token in every hook): special
tokens (BOS/EOS/pad), non-finite rows (counted; abort past `max_nonfinite_fraction`), and
optionally tokens whose norm exceeds `max_norm_multiple` × the buffer median (attention sinks,
whose norms here run 10-100x the median).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from saekit.errors import SaekitError
from saekit.models.hooks import HookedModel

ActDtype = Literal["float32", "float16", "bfloat16"]


@dataclass(frozen=True)
class StreamConfig:
    """How activations are read out of the model and served."""

    hooks: tuple[str, ...] = ("blocks.12.hook_resid_post",)
    """Hook points to capture from each forward (`saekit hooks MODEL` lists them)."""
    batch_size: int = 4096
    """Tokens per served batch."""
    buffer_sequences: int = 512
    """Context windows per shuffle buffer (512 × 127 tokens ≈ 65k rows per hook)."""
    model_batch_size: int = 16
    """Context windows per model forward."""
    exclude_special_tokens: bool = True
    """Drop BOS/EOS/pad and other special-token positions."""
    max_norm_multiple: float | None = None
    """Drop tokens whose norm exceeds this multiple of the buffer median (e.g. 10), or None."""
    normalize: bool = False
    """Scale activations so their mean norm is √d_in (factor recorded, folded into saved SAEs)."""
    dtype: ActDtype = "float32"
    """Dtype of served activations."""
    seed: int = 0
    """Seed of the per-buffer shuffle."""
    max_nonfinite_fraction: float = 0.001
    """Abort when more than this fraction of tokens held NaN/inf (they are always skipped)."""
    cache_dir: str | None = None
    """Serve activations from a `saekit cache` directory instead of running the model."""

    def __post_init__(self) -> None:
        if not self.hooks:
            raise SaekitError("stream.hooks is empty: name at least one hook point.")
        for name in ("batch_size", "buffer_sequences", "model_batch_size"):
            if getattr(self, name) < 1:
                raise SaekitError(f"stream.{name} must be ≥ 1, got {getattr(self, name)}.")


class BaseStream:
    """What trainers and evaluators see: `next_batch()` → {hook: [batch_size, d_in]}."""

    cfg: StreamConfig
    d_in: dict[str, int]
    norm_factors: dict[str, float]
    n_tokens_served: int = 0
    n_nonfinite: int = 0
    """Tokens skipped because an activation of theirs was NaN/inf."""
    n_tokens_seen: int = 0
    """Tokens read before that filter (the denominator of max_nonfinite_fraction)."""
    on_capture: Callable[[int], None] | None = None
    """Called with the rows each model forward adds to the buffer being filled (progress
    bars use it: a buffer fill takes minutes on a CPU); streams that run no model never call
    it."""

    def next_batch(self) -> dict[str, Tensor]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def _estimate_norm_factors(self, rows: dict[str, Tensor]) -> None:
        """factor = √d_in / mean‖x‖ on the first buffer (SAELens' expected_average_only_in)."""
        if self.cfg.normalize and not self.norm_factors:
            for name, acts in rows.items():
                mean_norm = float(acts.float().norm(dim=1).mean())
                self.norm_factors[name] = math.sqrt(acts.shape[1]) / max(mean_norm, 1e-12)

    def _scaled(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        if not self.norm_factors:
            return batch
        return {n: x * self.norm_factors[n] for n, x in batch.items()}


def check_nonfinite(stream: BaseStream, fix: str) -> None:
    """Abort once more than `max_nonfinite_fraction` of the tokens seen held NaN/inf (counted
    over at least 1,000 tokens, so a few bad rows early on do not stop a run)."""
    bad, seen = stream.n_nonfinite, stream.n_tokens_seen
    if bad > stream.cfg.max_nonfinite_fraction * max(seen, 1000):
        raise SaekitError(
            f"{bad} of {seen} tokens had NaN/inf activations "
            f"(limit {stream.cfg.max_nonfinite_fraction:.2%}): {fix}"
        )


def finite_rows(x_ND: Tensor) -> Tensor:
    """Which rows hold no NaN/inf. A row's fp32 sum is finite iff the row is, except when the
    sum overflows, which the exact check of the suspect rows clears: one pass over the rows
    instead of an N×D boolean mask."""
    finite_N = torch.isfinite(x_ND.sum(dim=1, dtype=torch.float32))
    if not bool(finite_N.all()):
        suspect = (~finite_N).nonzero().squeeze(1)
        finite_N[suspect] = torch.isfinite(x_ND[suspect]).all(dim=1)
    return finite_N


class ActivationStream(BaseStream):
    """Live stream: runs the model over context windows and serves shuffled token rows."""

    def __init__(self, model: HookedModel, windows: Any, cfg: StreamConfig) -> None:
        self.model = model
        self.windows = windows
        self.cfg = cfg
        self.d_in = {name: model.width(name) for name in cfg.hooks}
        self.norm_factors = {}
        self.n_nonfinite = 0
        self.n_tokens_seen = 0
        self.n_tokens_served = 0
        self._buffer_index = 0
        self._offset = 0
        self._rows: dict[str, Tensor] | None = None

    # ---- buffer ------------------------------------------------------------------------------
    def _fill(self, r: int) -> dict[str, Tensor]:
        cfg = self.cfg
        tokens_NT = self.windows.get(r * cfg.buffer_sequences, cfg.buffer_sequences)
        parts: dict[str, list[Tensor]] = {n: [] for n in cfg.hooks}
        masks = []
        dtype = getattr(torch, cfg.dtype)
        for start in range(0, tokens_NT.shape[0], cfg.model_batch_size):
            chunk_BT = tokens_NT[start : start + cfg.model_batch_size].to(self.model.device)
            acts = self.model.capture(chunk_BT, cfg.hooks)
            keep_BT = (
                self.windows.token_mask(chunk_BT)
                if cfg.exclude_special_tokens
                else torch.ones_like(chunk_BT, dtype=torch.bool)
            )
            for name in cfg.hooks:
                act_BTD = acts[name]
                if act_BTD.shape[-1] != self.d_in[name]:
                    raise SaekitError(
                        f"Hook {name!r} produced width {act_BTD.shape[-1]}, "
                        f"expected {self.d_in[name]}."
                    )
                parts[name].append(act_BTD.reshape(-1, act_BTD.shape[-1]).to("cpu", dtype))
            masks.append(keep_BT.reshape(-1).cpu())
            if self.on_capture is not None:
                self.on_capture(int(masks[-1].sum()))
        keep_N = torch.cat(masks)
        rows = {n: torch.cat(p) for n, p in parts.items()}
        finite_N = torch.ones_like(keep_N)
        for acts_ND in rows.values():
            finite_N &= finite_rows(acts_ND)
        self._count_nonfinite(int((keep_N & ~finite_N).sum()), int(keep_N.sum()))
        keep_N &= finite_N
        if cfg.max_norm_multiple is not None:
            for acts_ND in rows.values():
                norms_N = acts_ND.float().norm(dim=1)
                median = norms_N[keep_N].median() if keep_N.any() else norms_N.median()
                keep_N &= norms_N <= cfg.max_norm_multiple * median
        if not keep_N.any():
            raise SaekitError(
                "A whole activation buffer was filtered out (special tokens, "
                "NaN/inf or norm filter); check stream.max_norm_multiple."
            )
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + r)
        perm = torch.randperm(int(keep_N.sum()), generator=gen)
        out = {n: acts_ND[keep_N][perm] for n, acts_ND in rows.items()}
        self._estimate_norm_factors(out)
        return out

    def _count_nonfinite(self, bad: int, total: int) -> None:
        self.n_nonfinite += bad
        self.n_tokens_seen += total
        check_nonfinite(
            self,
            "the model is producing non-finite values. Check the model dtype "
            "(model.dtype=float32) and weights.",
        )

    # ---- serving -----------------------------------------------------------------------------
    def next_batch(self) -> dict[str, Tensor]:
        need = self.cfg.batch_size
        pieces: dict[str, list[Tensor]] = {n: [] for n in self.cfg.hooks}
        while need > 0:
            if self._rows is None:
                self._rows = self._fill(self._buffer_index)
            n_rows = next(iter(self._rows.values())).shape[0]
            take = min(need, n_rows - self._offset)
            for name, acts in self._rows.items():
                pieces[name].append(acts[self._offset : self._offset + take])
            self._offset += take
            need -= take
            if self._offset >= n_rows:
                self._buffer_index += 1
                self._offset = 0
                self._rows = None
        self.n_tokens_served += self.cfg.batch_size
        batch = {n: p[0] if len(p) == 1 else torch.cat(p) for n, p in pieces.items()}
        return self._scaled(batch)

    def rows_left_in_buffer(self) -> int:
        """Rows that can be served before the next buffer fill (0 when none is loaded)."""
        if self._rows is None:
            return 0
        return next(iter(self._rows.values())).shape[0] - self._offset

    def state_dict(self) -> dict[str, Any]:
        return {
            "buffer_index": self._buffer_index,
            "offset": self._offset,
            "norm_factors": dict(self.norm_factors),
            "n_tokens_served": self.n_tokens_served,
            "n_nonfinite": self.n_nonfinite,
            "n_tokens_seen": self.n_tokens_seen,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._buffer_index = int(state["buffer_index"])
        self._offset = int(state["offset"])
        self.norm_factors = {k: float(v) for k, v in state["norm_factors"].items()}
        self.n_tokens_served = int(state["n_tokens_served"])
        self.n_nonfinite = int(state.get("n_nonfinite", 0))
        self.n_tokens_seen = int(state.get("n_tokens_seen", 0))
        self._rows = None
        if self._offset:
            # The saved counters already include this buffer: refilling must not count it twice.
            saved = dict(self.norm_factors), self.n_nonfinite, self.n_tokens_seen
            self._rows = self._fill(self._buffer_index)
            self.norm_factors, self.n_nonfinite, self.n_tokens_seen = saved

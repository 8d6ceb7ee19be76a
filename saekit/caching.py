"""`saekit cache`: a recipe's activations written once to checksummed disk shards.

The cache holds raw activations (normalization is applied when a stream reads it) of the
recipe's `cache.split`: `train`, or `eval` for a held-out set from the held-out documents. A
cache of the same recipe is verified and reused; a request for more tokens than the split
holds is refused, since the stream would wrap around and repeat rows.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from saekit.activations import ActivationStream, open_stream, write_cache
from saekit.activations.cache import reuse_cache
from saekit.activations.stream import StreamConfig
from saekit.config import to_dict
from saekit.errors import SaekitError
from saekit.models.hooks import HookedModel, build_hooked_model
from saekit.recipe import Recipe


@dataclass(frozen=True)
class CacheResult:
    """What `cache_recipe` did."""

    path: Path
    """The cache directory."""
    reused: bool
    """True when an existing cache of this recipe was verified and kept."""
    seconds: float
    """Wall-clock of writing it (0 when reused)."""


def cache_stream_config(recipe: Recipe) -> StreamConfig:
    """The stream a cache is written with: raw activations (normalization is applied when the
    cache is read), and shuffle buffers no larger than the cache needs, since a buffer is
    filled whole before its first row is served (8k tokens in a 65k-row buffer would cost 8x
    the forwards, with the progress bar at 100% for most of it)."""
    # 5% and one window to spare: document separators inside windows are not cached rows.
    windows = math.ceil(1.05 * recipe.cache.n_tokens / max(recipe.data.context_size - 1, 1)) + 1
    buffer = min(recipe.stream.buffer_sequences, windows)
    return replace(recipe.stream, normalize=False, cache_dir=None, buffer_sequences=buffer)


def cache_provenance(recipe: Recipe) -> dict[str, Any]:
    """What a cache records of its recipe; a cache is reused only when this matches."""
    stream_cfg = cache_stream_config(recipe)
    out = {
        "model": to_dict(recipe.model),
        "data": to_dict(recipe.data),
        "stream": to_dict(stream_cfg),
    }
    # Only a held-out cache records its split, so train caches written before the field
    # existed are still recognized.
    return out | ({"split": recipe.cache.split} if recipe.cache.split != "train" else {})


def cache_recipe(recipe: Recipe, model: HookedModel | None = None) -> CacheResult:
    """Write (or verify and reuse) the activation cache of `recipe` at cache.output_dir."""
    provenance = cache_provenance(recipe)
    # Checked before the model loads: a damaged or different cache is refused in a second.
    if reuse_cache(recipe.cache, provenance):
        return CacheResult(Path(recipe.cache.output_dir), True, 0.0)
    model = model or build_hooked_model(recipe.model)
    stream = open_stream(model, recipe.data, cache_stream_config(recipe), recipe.cache.split)
    if isinstance(stream, ActivationStream):
        windows = stream.windows
        available = int(windows.token_mask(windows.windows_NT).sum())
        if recipe.cache.n_tokens > available:
            raise SaekitError(
                f"The {recipe.cache.split} split of {recipe.data.source!r} holds "
                f"{available:,} ordinary tokens, fewer than cache.n_tokens="
                f"{recipe.cache.n_tokens:,} (the stream would repeat rows); set "
                f"--cache.n_tokens {available - available // 100} or less."
            )
    t0 = time.perf_counter()
    path = write_cache(stream, recipe.cache, provenance)
    return CacheResult(path, False, time.perf_counter() - t0)

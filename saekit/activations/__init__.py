"""Activation streams (live from the model, or from a disk cache) behind one interface."""

from __future__ import annotations

from saekit.activations.cache import ActivationCache, CacheConfig, write_cache
from saekit.activations.cached_stream import CachedActivationStream
from saekit.activations.stream import ActivationStream, BaseStream, StreamConfig
from saekit.data.text import DataConfig, Split, build_windows
from saekit.models.hooks import HookedModel

__all__ = [
    "ActivationCache",
    "ActivationStream",
    "BaseStream",
    "CacheConfig",
    "CachedActivationStream",
    "StreamConfig",
    "open_stream",
    "write_cache",
]


def open_stream(
    model: HookedModel | None,
    data: DataConfig,
    cfg: StreamConfig,
    split: Split = "train",
    max_tokens: int | None = None,
    verify: bool = True,
) -> BaseStream:
    """A cached stream when `cfg.cache_dir` is set (its shards' sha256 checked if `verify`),
    else a live one over `split`'s windows."""
    if cfg.cache_dir is not None:
        return CachedActivationStream(cfg, verify=verify)
    if model is None:
        raise ValueError("a live stream needs a model")
    windows = build_windows(data, model.tokenizer, split, max_tokens=max_tokens)
    return ActivationStream(model, windows, cfg)

"""Activation streams behind one interface: live from the model, from a disk cache, or from
tensors already in memory; and synthetic activations with known features."""

from __future__ import annotations

from saekit.activations.cache import (
    ActivationCache,
    CacheConfig,
    CachedActivationStream,
    write_cache,
)
from saekit.activations.stream import ActivationStream, BaseStream, StreamConfig
from saekit.activations.tensors import TensorStream
from saekit.data.text import DataConfig, Split, build_windows
from saekit.models.hooks import HookedModel

__all__ = [
    "ActivationCache",
    "ActivationStream",
    "BaseStream",
    "CacheConfig",
    "CachedActivationStream",
    "StreamConfig",
    "TensorStream",
    "open_stream",
    "write_cache",
]


def open_stream(
    model: HookedModel | None,
    data: DataConfig,
    cfg: StreamConfig,
    split: Split = "train",
    max_tokens: int | None = None,
) -> BaseStream:
    """A cached stream when `cfg.cache_dir` is set, else a live one over `split`'s windows."""
    if cfg.cache_dir is not None:
        return CachedActivationStream(cfg)
    if model is None:
        raise ValueError("a live stream needs a model")
    windows = build_windows(data, model.tokenizer, split, max_tokens=max_tokens)
    return ActivationStream(model, windows, cfg)

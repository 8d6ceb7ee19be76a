"""Activation streams behind one interface: live from the model, from a disk cache, or from
tensors already in memory; and synthetic activations with known features."""

from __future__ import annotations

from torch import Tensor

from saekit.activations.cache import ActivationCache, CacheConfig, write_cache
from saekit.activations.cached_stream import CachedActivationStream
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
    "collect_activations",
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


def collect_activations(
    model: HookedModel,
    hook: str,
    n_tokens: int,
    data: DataConfig | None = None,
    split: Split = "train",
) -> Tensor:
    """`saekit.collect_activations`: `n_tokens` rows [n_tokens, d_in] of `hook`, read from the
    text of `data` (default: the offline corpus; split "eval" = its held-out documents) as
    the training stream reads them (special tokens dropped, shuffled). Into memory: for more
    tokens than fit, train from a recipe, whose stream never holds them all."""
    data = data or DataConfig()
    # Just enough windows per buffer (each holds context_size − 1 ordinary tokens at most).
    windows = min(StreamConfig.buffer_sequences, -(-n_tokens // (data.context_size - 1)) + 1)
    cfg = StreamConfig(hooks=(hook,), batch_size=n_tokens, buffer_sequences=windows)
    return open_stream(model, data, cfg, split).next_batch()[hook]

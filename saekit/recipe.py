"""A recipe: the YAML file every command reads, one section per config dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from saekit.activations.cache import CacheConfig
from saekit.activations.stream import StreamConfig
from saekit.config import to_dict
from saekit.data.text import DataConfig
from saekit.dictionaries.base import SAEConfig
from saekit.models.loading import ModelConfig
from saekit.train.config import TrainConfig


@dataclass(frozen=True)
class Recipe:
    """Sections of a recipe; each command reads the ones it needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The language model and hook backend."""
    data: DataConfig = field(default_factory=DataConfig)
    """The text source and context windows."""
    stream: StreamConfig = field(default_factory=StreamConfig)
    """Hook points, batch size, shuffle buffer, filters, normalization."""
    saes: tuple[SAEConfig, ...] = (SAEConfig(),)
    """Dictionaries to train from the same stream (several hooks and/or a sweep)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimization, schedules, logging, checkpoints, output directory."""
    cache: CacheConfig = field(default_factory=CacheConfig)
    """`saekit cache`: where and how many activations to write."""

    def identity(self) -> dict[str, Any]:
        """What must match for a checkpoint to be resumed: everything but `train` and `cache`."""
        return {k: to_dict(self)[k] for k in IDENTITY}


IDENTITY = ("model", "data", "stream", "saes")
"""Recipe sections a resumed run must share with the run that wrote the checkpoint."""

"""A recipe: the YAML file every command reads, one section per config dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field

from saekit.activations.cache import CacheConfig
from saekit.activations.stream import StreamConfig
from saekit.data.text import DataConfig
from saekit.models.loading import ModelConfig


@dataclass(frozen=True)
class Recipe:
    """Sections of a recipe; each command reads the ones it needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The language model and hook backend."""
    data: DataConfig = field(default_factory=DataConfig)
    """The text source and context windows."""
    stream: StreamConfig = field(default_factory=StreamConfig)
    """Hook points, batch size, shuffle buffer, filters, normalization."""
    cache: CacheConfig = field(default_factory=CacheConfig)
    """`saekit cache`: where and how many activations to write."""

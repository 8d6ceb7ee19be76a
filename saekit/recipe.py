"""A recipe: the YAML file every command reads, one section per config dataclass.

model   ModelConfig   (models/loading.py)    saes   tuple[SAEConfig, ...] (dictionaries/)
data    DataConfig    (data/text.py)         train  TrainConfig  (train/config.py)
stream  StreamConfig  (activations/stream.py) cache CacheConfig  (activations/cache.py)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from saekit.activations.cache import CacheConfig
from saekit.activations.stream import StreamConfig
from saekit.config import from_dict, load_recipe, to_dict
from saekit.data.text import DataConfig
from saekit.dictionaries.config import SAEConfig
from saekit.models.loading import ModelConfig
from saekit.rundir import RunDir, Target
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

    @classmethod
    def load(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> Recipe:
        """Read a YAML recipe, then apply dotted-path overrides (`{"stream.batch_size": 8}`)."""
        return load_recipe(cls, path, overrides)

    def identity(self) -> dict[str, Any]:
        """What must match for a checkpoint to be resumed: everything but `train` and `cache`
        (each dictionary written with its method's options filled in)."""
        out = {k: to_dict(self)[k] for k in IDENTITY}
        out["saes"] = [to_dict(s.canonical()) for s in self.saes]
        return out


IDENTITY = ("model", "data", "stream", "saes")
"""Recipe sections a resumed run must share with the run that wrote the checkpoint."""


def run_recipe(run: RunDir) -> Recipe:
    """The recipe a run was trained with (recipe.yaml)."""
    return from_dict(Recipe, yaml.safe_load(run.recipe.read_text()) or {})


def load_run(path: str | Path, hook: str | None = None) -> tuple[Recipe, list[Target]]:
    """The recipe and the dictionaries (name, save dir, hook) of a run directory, or of one
    saved dictionary (whose recipe is the default one: the offline model and text)."""
    run = RunDir(path)
    recipe = run_recipe(run) if run.is_run() else Recipe()
    return recipe, run.targets(hook, recipe.stream.hooks[0])

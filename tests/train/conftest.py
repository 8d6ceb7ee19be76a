"""Fixtures for tests/train: small trainers on in-memory synthetic activations (CPU, seconds).

`synthetic_stream.py` draws them (imported by name: unique across tests/).
`synthetic_run` replaces the model and the live stream inside `train_recipe` so recipes and the
CLI run end to end on synthetic activations without loading a language model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from synthetic_stream import synthetic_stream

from saekit.activations import BaseStream, StreamConfig, TensorStream
from saekit.dictionaries import SAEConfig
from saekit.recipe import Recipe
from saekit.rundir import RunDir
from saekit.train.trainer import TrainConfig, Trainer

D_IN = 16
"""Width of every synthetic hook unless a test says otherwise."""


@pytest.fixture
def train_cfg(tmp_path: Path) -> Callable[..., TrainConfig]:
    """TrainConfig for a short synthetic run in tmp_path/run (wandb off: not the point here)."""

    def make(**kw: Any) -> TrainConfig:
        base: dict[str, Any] = {
            "total_tokens": 256 * 40,
            "lr_warmup_steps": 5,
            "sparsity_warmup_steps": 10,
            "log_every": 10,
            "output_dir": str(tmp_path / "run"),
            "wandb_mode": "disabled",
        }
        return TrainConfig(**{**base, **kw})

    return make


@pytest.fixture
def make_trainer() -> Callable[..., Trainer]:
    """Trainer(saes, cfg, stream or a fresh one-hook synthetic stream of width D_IN), writing
    its run directory into cfg.output_dir."""

    def make(
        saes: tuple[SAEConfig, ...], cfg: TrainConfig, stream: BaseStream | None = None
    ) -> Trainer:
        stream = stream or synthetic_stream({"h0": D_IN})
        return Trainer(saes, cfg, stream, run_dir=RunDir(cfg.output_dir))

    return make


@pytest.fixture
def synthetic_run(monkeypatch: pytest.MonkeyPatch) -> list[TensorStream]:
    """Make `train_recipe` serve synthetic streams (width D_IN per hook); returns those opened."""
    import saekit.fitting as run

    opened: list[TensorStream] = []

    def open_stream(
        model: Any, data: Any, cfg: StreamConfig, split: str, verify: bool = True
    ) -> TensorStream:
        stream = synthetic_stream(
            dict.fromkeys(cfg.hooks, D_IN), batch_size=cfg.batch_size, normalize=cfg.normalize
        )
        opened.append(stream)
        return stream

    def no_model(cfg: Any) -> str:
        return "no model: the stream is synthetic"

    monkeypatch.setattr(run, "open_stream", open_stream)
    monkeypatch.setattr(run, "build_hooked_model", no_model)
    return opened


@pytest.fixture
def synthetic_recipe(tmp_path: Path) -> Callable[..., Recipe]:
    """A recipe for `synthetic_run`: hook h0, TopK d_sae 64, 20 steps of 256 tokens."""

    def make(**train: Any) -> Recipe:
        stream = StreamConfig(hooks=("h0",), batch_size=256)
        cfg = TrainConfig(
            total_tokens=256 * 20,
            log_every=5,
            output_dir=str(tmp_path / "run"),
            wandb_mode="disabled",
        )
        return Recipe(stream=stream, saes=(SAEConfig(d_sae=64, k=4),), train=replace(cfg, **train))

    return make

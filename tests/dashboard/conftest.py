"""A tiny scored run: the tiny HF Llama (root conftest) named in a recipe, one random TopK SAE on
its layer-0 residual stream, and the synthetic corpus. Fixture names carry a `dash_` prefix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saekit.activations.stream import StreamConfig
from saekit.config import save_yaml
from saekit.data.text import DataConfig
from saekit.dictionaries import SAEConfig, build_dictionary
from saekit.interp import InterpConfig
from saekit.models.loading import ModelConfig
from saekit.recipe import Recipe

HOOK = "model.layers.0"
SAE_NAME = "00-topk-model.layers.0"
D_SAE = 32


@pytest.fixture
def dash_cfg() -> InterpConfig:
    return InterpConfig(
        n_windows=24, example_len=8, reservoir=16, control_features=8, min_examples=2
    )


@pytest.fixture
def dash_run(tmp_path: Path, saekit_home: Path, corpus_jsonl: Path, tiny_model_dir: Path) -> Path:
    """An unscored run directory (recipe.yaml + saes/NAME) and a steering.json for feature 0."""
    run = tmp_path / "run"
    recipe = Recipe(
        model=ModelConfig(name=str(tiny_model_dir), backend="hf"),
        data=DataConfig(source=str(corpus_jsonl), context_size=16, eval_fraction=0.5),
        stream=StreamConfig(hooks=(HOOK,)),
        saes=(SAEConfig(method="topk", d_sae=D_SAE, k=4, hook=HOOK),),
    )
    run.mkdir()
    save_yaml(recipe, run / "recipe.yaml")
    sae = build_dictionary(SAEConfig(method="topk", d_sae=D_SAE, k=4, hook=HOOK), 16)
    sae.provenance = {"hook_name": HOOK}
    sae.save(run / "saes" / SAE_NAME)
    steering = {
        SAE_NAME: {
            "features": {"0": {"kl": [0.05, 0.1, 0.25, 0.5], "score": [0.1, 0.3, 0.45, 0.2]}}
        }
    }
    (run / "steering.json").write_text(json.dumps(steering))
    return run

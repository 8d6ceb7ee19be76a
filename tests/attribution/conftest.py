"""A tiny run to attribute through: the tiny HF Llama (root conftest) in a recipe, one TopK SAE
on its layer-0 residual stream with b_dec at the mean activation (as training leaves it), and
the synthetic corpus. Fixture names carry an `attr_` prefix."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from saekit.activations.stream import StreamConfig
from saekit.config import save_yaml
from saekit.data.text import DataConfig
from saekit.dictionaries import SAEConfig, TopKSAE, build_dictionary
from saekit.models.hooks import HookedModel
from saekit.models.loading import ModelConfig
from saekit.recipe import Recipe

HOOK = "model.layers.0"
SAE_NAME = "00-topk-model.layers.0"


def mean_centred_sae(model: HookedModel, hook: str, d_sae: int = 32, k: int = 4) -> TopKSAE:
    """A seeded TopK SAE whose b_dec is the mean activation of a few corpus words at `hook`."""
    sae = build_dictionary(SAEConfig(method="topk", d_sae=d_sae, k=k, hook=hook), model.width(hook))
    ids = model.tokenizer("birds sang over quiet hills", return_tensors="pt")
    acts = model.capture(ids["input_ids"].to(model.device), [hook])[hook][0]
    with torch.no_grad():
        sae.b_dec.copy_(acts.float().mean(0))
    sae.provenance = {"hook_name": hook}
    return sae.eval()  # type: ignore[return-value]


@pytest.fixture
def attr_sae():
    """`attr_sae(model, hook)`: mean_centred_sae as a fixture (conftest is never imported)."""
    return mean_centred_sae


@pytest.fixture
def attr_run(
    tmp_path: Path, saekit_home: Path, corpus_jsonl: Path, tiny_model_dir: Path, hf_model, tokenizer
) -> Path:
    """A run directory (recipe.yaml + saes/NAME) over the tiny HF Llama."""
    run = tmp_path / "run"
    recipe = Recipe(
        model=ModelConfig(name=str(tiny_model_dir), backend="hf"),
        data=DataConfig(source=str(corpus_jsonl), context_size=16, eval_fraction=0.5),
        stream=StreamConfig(hooks=(HOOK,)),
        saes=(SAEConfig(method="topk", d_sae=32, k=4, hook=HOOK),),
    )
    run.mkdir()
    save_yaml(recipe, run / "recipe.yaml")
    mean_centred_sae(HookedModel(hf_model, tokenizer), HOOK).save(run / "saes" / SAE_NAME)
    return run

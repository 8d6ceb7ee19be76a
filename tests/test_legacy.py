"""Recipes and saves written before each method's options moved into their own section still
load, to the same configs, with one deprecation line (recipes) or silently (saves).

tests/recipes_v0/ holds the shipped recipes as saekit 0.1 wrote them (flat keys such as
`target_l0`, `snmf_sparsity`); tests/dictionaries/saves_v1/ holds dictionaries saved by saekit
0.1 (cfg.json format 1) with the codes that version computed for fixed inputs.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saekit.dictionaries import load_dictionary
from saekit.errors import SaekitDeprecation
from saekit.recipe import Recipe

HERE = Path(__file__).parent
OLD = sorted((HERE / "recipes_v0").glob("*.yaml"))


@pytest.mark.parametrize("old", OLD, ids=[p.stem for p in OLD])
def test_old_recipe_loads_as_the_rewritten_one_with_one_warning(old: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        legacy = Recipe.load(old)
    deprecations = [w for w in caught if issubclass(w.category, SaekitDeprecation)]
    assert len(deprecations) == 1
    message = str(deprecations[0].message)
    assert "\n" not in message and f"under `{legacy.saes[0].method}:`" in message
    # The same recipe rewritten by hand in the new layout (recipes/) is the same config.
    assert legacy == Recipe.load(HERE.parent / "recipes" / old.name)


def test_keys_of_another_method_are_dropped_as_they_were_ignored() -> None:
    data = {"saes": [{"method": "topk", "k": 8, "l1_coefficient": 3.0, "snmf_tol": 0.1}]}
    with pytest.warns(SaekitDeprecation, match="read as nothing"):
        recipe = Recipe.load(None, {f"saes.{k}": v for k, v in data["saes"][0].items()})
    assert recipe.saes[0].method == "topk" and recipe.saes[0].k == 8
    assert recipe.saes[0].relu is None and recipe.saes[0].snmf is None


@pytest.mark.parametrize("method", ["jumprelu", "matryoshka"])
def test_saves_of_saekit_0_1_load_with_the_same_codes(method: str) -> None:
    root = HERE / "dictionaries" / "saves_v1"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a save cannot be rewritten by hand: no warning
        sae = load_dictionary(root / method)
    expected = load_file(str(root / f"{method}-codes.safetensors"))
    with torch.no_grad():
        z = sae.encode(expected["x"])
    # W_enc is now stored row-major (the fused Adam step copied the transposed layout the tied
    # init used to give it), so the encoder product may round differently: the same latents
    # fire and the values agree to fp32 rounding (a few ulp).
    assert torch.equal(z != 0, expected["z"] != 0)
    torch.testing.assert_close(z, expected["z"], rtol=1e-6, atol=1e-6)
    if method == "jumprelu":
        options = sae.cfg.options()
        assert (options.target_l0, options.l0_coefficient, options.bandwidth) == (3.0, 0.5, 0.1)
        assert options.init_threshold == 0.02 and sae.target_l0 == 3.0
    else:
        assert sae.cfg.options().widths == (2, 8)

"""Every shipped recipe parses into the Recipe dataclasses (catches typos in recipes/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from saekit.config import load_recipe
from saekit.dictionaries import DICTIONARIES
from saekit.recipe import Recipe

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_loads(path: Path) -> None:
    recipe = load_recipe(Recipe, path)
    for sae in recipe.saes:
        assert sae.method in DICTIONARIES
        assert not sae.hook or sae.hook in recipe.stream.hooks


def test_every_architecture_has_a_recipe() -> None:
    methods = {s.method for p in RECIPES for s in load_recipe(Recipe, p).saes}
    assert {"relu", "topk", "batchtopk", "jumprelu", "matryoshka"} <= methods

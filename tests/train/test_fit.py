"""`saekit.fit` on a recipe: the same run directory and guarantees as `saekit train`."""

from __future__ import annotations

import torch
from cached_runs import make_cache, write_recipe

import saekit


def test_fit_a_recipe_writes_its_run_and_returns_the_dictionaries(tmp_path) -> None:
    cache = make_cache(tmp_path / "cache", {"h0": 16})
    saes = [{"method": "topk", "d_sae": 32, "k": 3}, {"method": "relu", "d_sae": 32}]
    recipe = write_recipe(tmp_path / "r.yaml", cache, tmp_path / "run", saes)
    result = saekit.fit(recipe)
    assert result.run_dir == tmp_path / "run" and (tmp_path / "run/recipe.yaml").is_file()
    assert result.summary["steps"] == 30 and len(result.history) == 6
    for name, sae in result.dictionaries.items():
        saved = saekit.load_dictionary(tmp_path / "run/saes" / name)
        assert torch.equal(saved.W_enc, sae.W_enc) and saved.provenance == sae.provenance
    resumed = saekit.fit(recipe, resume=True)  # finished: nothing left to train
    assert resumed.summary["steps"] == 30

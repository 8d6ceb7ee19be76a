"""Attributions against interventions on the tiny model: ablating the top-attributed feature
activations moves the target more than ablating as many random active ones, with a bootstrap
interval over prompts above zero; and the interval itself is checked against a normal one."""

from __future__ import annotations

import math

import pytest
import torch

from saekit.attribution import AttributeConfig, ValidateConfig, load_splices, validate_attribution
from saekit.attribution.validate import bootstrap_interval
from saekit.errors import SaekitError
from saekit.models.hooks import build_hooked_model

SMALL = ValidateConfig(n_prompts=16, prompt_tokens=12, n_ablate=3, random_draws=6, bootstrap=2000)


def test_top_attributed_features_move_the_target_more_than_random_ones(attr_run):
    recipe, splices = load_splices(attr_run)
    model = build_hooked_model(recipe.model)
    report = validate_attribution(model, recipe, splices, AttributeConfig(), SMALL, progress=False)
    (d,) = report["dictionaries"].values()
    assert d["prompts"] == 16 and len(d["per_prompt"]) == 16
    lo, hi = d["interval"]
    assert d["validated"] and 0 < lo <= d["difference"] <= hi
    assert d["drop_top"] > 3 * abs(d["drop_random"])
    assert d["top_wins"] >= 0.75
    assert d["max_relative_residual"] <= AttributeConfig().tolerance


def test_bootstrap_interval_matches_the_normal_one():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(400, generator=gen, dtype=torch.float64) + 0.3
    lo, hi = bootstrap_interval(x, ValidateConfig(n_prompts=400, bootstrap=20_000))
    half = 1.959964 * float(x.std()) / math.sqrt(len(x))
    assert lo == pytest.approx(float(x.mean()) - half, abs=0.1 * half)
    assert hi == pytest.approx(float(x.mean()) + half, abs=0.1 * half)


def test_too_few_held_out_windows_names_the_fix(attr_run):
    recipe, splices = load_splices(attr_run)
    model = build_hooked_model(recipe.model)
    cfg = ValidateConfig(n_prompts=100_000, prompt_tokens=12)
    with pytest.raises(SaekitError, match=r"pass --n-prompts \d+"):
        validate_attribution(model, recipe, splices, AttributeConfig(), cfg, progress=False)

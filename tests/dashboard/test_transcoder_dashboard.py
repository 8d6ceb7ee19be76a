"""Interpretability scores and the dashboard on a transcoder's latents (tiny HF Llama): the
latents are read from the MLP input, named with both hooks, projected to the vocabulary from
the output side."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

from saekit.config import save_yaml
from saekit.dashboard import build_dashboard
from saekit.dictionaries import SAEConfig, build_dictionary
from saekit.interp import run_interp_eval
from saekit.recipe import Recipe

IN, OUT = "model.layers.0.mlp:in", "model.layers.0.mlp"
NAME = "00-topk-transcoder-model.layers.0.mlp_in"


def test_transcoder_latents_are_scored_and_shown(dash_run, dash_cfg):
    recipe = Recipe.load(dash_run / "recipe.yaml")
    cfg = SAEConfig(method="topk", d_sae=32, k=4, hook=IN, output_hook=OUT)
    recipe = replace(recipe, stream=replace(recipe.stream, hooks=(IN, OUT)), saes=(cfg,))
    save_yaml(recipe, dash_run / "recipe.yaml")
    shutil.rmtree(dash_run / "saes")  # the fixture's SAE: this run holds one transcoder
    (dash_run / "steering.json").unlink()
    d = build_dictionary(cfg, 16, 16)
    d.save(dash_run / "saes" / NAME)

    report = run_interp_eval(dash_run, cfg=dash_cfg, progress=False)
    s = report["saes"][NAME]
    assert s["hook"] == IN and s["output_hook"] == OUT and s["scored"] > 0
    pages = sorted((dash_run / s["features_dir"] / "features").glob("*.json"))
    page = json.loads(pages[0].read_text())
    assert len(page["logits"]["top"]) == dash_cfg.n_logits  # W_dec rows live in d_model
    ex = page["top_examples"][0]
    assert max(ex["acts"]) == page["max_act"] > 0
    build_dashboard(dash_run, dash_run / "site")
    index = (dash_run / "site" / "index.html").read_text()
    assert f"{IN} → {OUT}" in index

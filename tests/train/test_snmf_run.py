"""`saekit train` / `saekit eval` for SNMF recipes: tiny TransformerLens model, then SmolLM2."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from saekit.activations.stream import StreamConfig
from saekit.cli import main
from saekit.data.text import DataConfig
from saekit.dictionaries import SAEConfig, SNMFConfig, SNMFDictionary, load_dictionary
from saekit.fitting import train_recipe
from saekit.models.hooks import HookedModel
from saekit.recipe import Recipe
from saekit.report import evaluate_run
from saekit.train.trainer import TrainConfig

HOOK = "blocks.1.mlp.hook_post"  # d_mlp = 32 in the root conftest's tiny model


def snmf_recipe(out: Path, corpus: Path) -> Recipe:
    options = SNMFConfig(sparsity=0.25, max_iter=80)
    return Recipe(
        data=DataConfig(source=str(corpus), context_size=16),
        stream=StreamConfig(hooks=(HOOK,), batch_size=256, buffer_sequences=24),
        saes=(
            SAEConfig(method="snmf", d_sae=6, snmf=replace(options, hierarchy=(2,))),
            SAEConfig(method="snmf", d_sae=6, snmf=replace(options, stream_passes=3)),
        ),
        train=TrainConfig(total_tokens=1000, output_dir=str(out), wandb_mode="disabled"),
    )


def test_train_and_eval_an_snmf_run(tmp_path, saekit_home, corpus_jsonl, tl_model, tokenizer):
    model = HookedModel(tl_model, tokenizer)
    run = tmp_path / "run"
    summary = train_recipe(snmf_recipe(run, corpus_jsonl), model=model)
    assert summary["tokens"] == 1000 and set(summary["saes"]) == {
        f"00-snmf-{HOOK}",
        f"01-snmf-{HOOK}",
    }
    assert json.loads((run / "run.json").read_text())["status"] == "done"
    assert (run / "recipe.yaml").is_file()
    full, streamed = (load_dictionary(run / "saes" / n) for n in sorted(summary["saes"]))
    assert isinstance(full, SNMFDictionary) and isinstance(streamed, SNMFDictionary)
    assert full.n_levels == 2 and streamed.n_levels == 1
    assert full.provenance["snmf_solver"] == "full"
    assert streamed.provenance["snmf_solver"] == "stream"
    assert streamed.provenance["snmf_iterations"] <= 3
    assert 0 < full.provenance["snmf_fvu"] < 1
    # ⌈0.25 · 32⌉ = 8 neurons per feature
    assert (full.W_dec != 0).sum(dim=1).tolist() == [8] * 6
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert any(f"00-snmf-{HOOK}/fvu" in row for row in history)

    report = evaluate_run(run, n_windows=4, model=model)
    metrics = report["saes"][f"00-snmf-{HOOK}"]
    assert metrics["method"] == "snmf"
    # Held-out FVU with NNLS codes against the fit's own FVU on its tokens: 0.439 vs 0.419.
    assert metrics["fvu"] == pytest.approx(full.provenance["snmf_fvu"], rel=0.15)
    features = metrics["feature_views"]["features"]
    assert metrics["feature_views"]["layer"] == 1 and len(features) == 6
    assert all(len(f["output_top_tokens"]) == 10 for f in features)
    assert all(f["parent"] in (0, 1) for f in features)
    fired = [f["input_top_tokens"] for f in features if f["input_top_tokens"]]
    assert fired and all(e["activation"] > 0 for entries in fired for e in entries)
    assert json.loads((run / "report.json").read_text())["saes"].keys() == report["saes"].keys()


def test_replayed_passes_see_the_same_tokens(
    tmp_path, saekit_home, corpus_jsonl, tl_model, tokenizer
):
    from saekit.activations import open_stream
    from saekit.train.fit_run import FitRun

    recipe = snmf_recipe(tmp_path / "run", corpus_jsonl)
    stream = open_stream(HookedModel(tl_model, tokenizer), recipe.data, recipe.stream)
    data = FitRun(recipe.saes, recipe.train, stream).data(HOOK)
    first = torch.cat(list(data.passes()))
    second = torch.cat(list(data.passes()))
    assert first.shape == (1000, 32) and torch.equal(first, second)
    assert torch.equal(data.matrix(), first.T)


@pytest.mark.e2e
def test_cli_trains_and_evaluates_snmf_on_smollm2(tmp_path, smollm2_tl, monkeypatch):
    """The shipped recipe at a small budget: layer 2 (the forward stops there), 2k tokens."""
    import saekit.fitting as run_mod
    import saekit.report.run as report_mod

    monkeypatch.setattr(run_mod, "build_hooked_model", lambda cfg: smollm2_tl)
    monkeypatch.setattr(report_mod, "build_hooked_model", lambda cfg: smollm2_tl)
    run = tmp_path / "snmf"
    recipe = str(Path(__file__).parents[2] / "recipes" / "smollm2-snmf.yaml")
    flags = ["--stream.hooks", "[blocks.2.mlp.hook_post]", "--stream.buffer_sequences", "16"]
    flags += ["--saes.d_sae", "8", "--saes.snmf.max_iter", "30", "--train.total_tokens", "2048"]
    assert main(["train", recipe, *flags, "--train.output_dir", str(run)]) == 0
    assert main(["eval", str(run), "--windows", "2"]) == 0
    report = json.loads((run / "report.json").read_text())
    (metrics,) = report["saes"].values()
    assert metrics["d_in"] == 1536 and metrics["method"] == "snmf"
    views = metrics["feature_views"]
    assert views["layer"] == 2 and len(views["features"]) == 8
    assert all(f["output_top_tokens"] for f in views["features"])

"""`saekit steer` and `run_steering_eval` on a tiny run directory (tiny HF Llama)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from saekit.cli import main
from saekit.config import save_yaml
from saekit.data.text import DataConfig
from saekit.dictionaries import SAEConfig, build_dictionary
from saekit.models.loading import ModelConfig
from saekit.recipe import Recipe
from saekit.steering.evaluate import run_steering_eval, steering_table
from saekit.steering.judge import JudgeConfig
from saekit.steering.protocol import SteeringConfig

HOOK = "model.layers.0"


@pytest.fixture
def steer_run(tmp_path: Path, tiny_model_dir: Path, corpus_jsonl: Path, saekit_home: Path) -> Path:
    """A run dir: recipe.yaml (tiny HF Llama, synthetic corpus) and one TopK SAE at HOOK."""
    from saekit.activations.stream import StreamConfig

    run = tmp_path / "run"
    run.mkdir()
    recipe = Recipe(
        model=ModelConfig(name=str(tiny_model_dir), backend="hf"),
        data=DataConfig(source=str(corpus_jsonl), context_size=16),
        stream=StreamConfig(hooks=(HOOK,)),
    )
    save_yaml(recipe, run / "recipe.yaml")
    sae = build_dictionary(SAEConfig(method="topk", hook=HOOK, d_sae=32, k=4), 16)
    sae.save(run / "saes" / "topk")
    return run


def test_steer_generates_with_feature_clamp_and_vector(steer_run, tmp_path, capsys):
    args = ["steer", str(steer_run), "--prompt", "the cat", "--tokens", "4"]
    assert main([*args, "--feature", "3", "--strength", "4"]) == 0
    out = capsys.readouterr().out
    assert "unsteered:" in out and "steered:" in out and "feature 3" in out
    assert main([*args, "--feature", "3", "--clamp", "5", "--from-pos", "2"]) == 0
    vec = tmp_path / "v.npy"
    np.save(vec, np.ones(16, dtype=np.float32))
    assert main([*args, "--vector", str(vec), "--strength", "2"]) == 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--feature", "99", "--strength", "1"], "out of range"),
        (["--feature", "1", "--strength", "nan"], "finite"),
        (["--feature", "1"], "exactly one"),
        (["--feature", "1", "--strength", "1", "--hook", "model.layers.9"], "Unknown hook"),
        (["--strength", "1"], "exactly one of --feature"),
    ],
)
def test_steer_bad_input_is_one_clear_error(steer_run, capsys, extra, message):
    assert main(["steer", str(steer_run), "--tokens", "2", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_run_steering_eval_writes_report_and_plot(steer_run, tmp_path, steer_fake_endpoint):
    labelled = (
        {"animals": ["the cat sat on a mat", "dogs ran far away"]},
        ["rivers moved slowly past old stone walls", "quiet hills under bright skies"],
    )
    cfg = SteeringConfig(
        prompts=("the cat", "a dog", "birds", "home"),
        kl_targets=(0.002, 0.01),
        gen_tokens=4,
        n_random=2,
        target_tokens=3,
        reference_windows=2,
    )
    out = tmp_path / "out"
    judge = JudgeConfig(backend="openai", url=steer_fake_endpoint[0], model="fake")
    report = run_steering_eval(
        steer_run, config=cfg, features=[0, 5], labelled=labelled, out_dir=out, judge=judge
    )
    saved = json.loads((out / "steering.json").read_text())
    assert saved["table"] == json.loads(json.dumps(report["table"]))
    site = saved["sites"][HOOK]
    assert set(site["directions"]) == {
        "topk#0",
        "topk#5",
        "diffmean:animals",
        "random:0",
        "random:1",
    }
    assert Path(site["plot"]).is_file()
    methods = {(r["method"], r["kappa"]) for r in saved["table"]}
    assert ("topk", "selected") in methods and ("diffmean", 0.002) in methods
    for d in site["directions"].values():
        assert len(d["curve"]) == 2 and all("reached" in p for p in d["curve"])
    assert "topk" in steering_table(report)
    judged = [
        d["selected"]
        for d in site["directions"].values()
        if d["selected"] and d["kind"] != "random"
    ]
    assert judged
    for chosen in judged:
        # The fake judge rates concept 2 when the fragment says "cat" (else 0), fluency 1.
        cat = [("cat" in prompt + text) for prompt, text in chosen["samples"]]
        share = sum(cat) / len(cat)
        assert chosen["judge"]["concept"] == pytest.approx(2 * share)
        assert chosen["judge"]["fluency"] == 1.0
        assert chosen["judge"]["score"] == pytest.approx(4 / 3 * share)  # mean of 2·2·1/(2+1)
    assert site["directions"]["diffmean:animals"]["selected"] is None or (
        site["directions"]["diffmean:animals"]["selected"]["judge"]["concept_description"]
        == "animals"
    )

"""`saekit steer` and `run_steering_eval` on a tiny run directory (tiny HF Llama)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from saekit.cli import main
from saekit.steering.evaluate import run_steering_eval, steering_table
from saekit.steering.judge import JudgeConfig
from saekit.steering.protocol import SteeringConfig
from saekit.steering.study import study_table

HOOK = "model.layers.0"


@pytest.fixture
def steer_run(tmp_path: Path, tiny_topk_run) -> Path:
    """recipe.yaml (tiny HF Llama, synthetic corpus) and one TopK SAE at HOOK."""
    return tiny_topk_run(tmp_path / "run")


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


def test_run_steering_eval_writes_the_study(steer_run, tmp_path):
    cfg = SteeringConfig(
        prompts=("the cat", "a dog", "birds", "home", "a tree", "the sea"),
        kl_targets=(0.002, 0.01, 0.03),
        gen_tokens=3,
        n_random=3,
        target_tokens=3,
        reference_windows=2,
        n_boot=300,
    )
    out = tmp_path / "study"
    report = run_steering_eval(
        steer_run, config=cfg, features=[0, 5, 9], labelled=False, out_dir=out
    )
    saved = json.loads((out / "steering.json").read_text())
    assert Path(saved["study_plot"]).is_file() and saved["study_plot"].endswith(".png")
    site, dirs = saved["study"][HOOK], saved["sites"][HOOK]["directions"]
    assert set(site["methods"]) == {"topk", "random"}
    for kind, m in site["methods"].items():
        assert m["directions"] == 3 and [b["kappa"] for b in m["budgets"]] == [0.002, 0.01, 0.03]
        for b in m["budgets"]:
            # The method's mean is the mean over its reached directions × evaluation prompts.
            pts = [
                p
                for d in dirs.values()
                if d["kind"] == kind
                for p in d["curve"]
                if p["kappa"] == b["kappa"] and p["reached"]
            ]
            assert b["reached"] == len(pts)
            if pts:
                c = np.mean([p["per_prompt"]["concept_gain"] for p in pts])
                assert b["concept_gain"]["mean"] == pytest.approx(c, abs=1e-4)
                assert b["concept_gain"]["lo"] <= c + 1e-4 <= b["concept_gain"]["hi"] + 2e-4
    flips = 0
    for b in site["methods"]["topk"]["budgets"]:
        # The −α control at every budget where it reached κ (random directions have none).
        pts = [
            p
            for d in dirs.values()
            if d["kind"] == "topk"
            for p in d["curve"]
            if p["kappa"] == b["kappa"] and p["reached"] and p["sign_flip"]["reached"]
        ]
        assert b.get("sign_flip_reached", 0) == len(pts)
        flips += len(pts)
    assert flips > 0
    assert "sign_flip_concept" not in site["methods"]["random"]["budgets"][0]
    assert any(p["a"] == "random" and p["b"] == "topk" for p in saved["study"][HOOK]["pairs"])
    assert "paired differences" in study_table(report["study"])


def test_steer_compare_prints_the_study_and_rejects_bad_counts(steer_run, tmp_path, capsys):
    base = [
        "steer",
        "compare",
        str(steer_run),
        "--out",
        str(tmp_path / "o"),
        "--prompts",
        "4",
        "--kl",
        "0.002,0.01",
        "--gen-tokens",
        "2",
        "--random",
        "2",
        "--features",
        "2",
    ]
    assert main([*base, "--no-diffmean"]) == 0
    out = capsys.readouterr().out
    assert "Pareto area" in out and "steering-study.png" in out
    written = (tmp_path / "o" / "steering.json").read_text()
    for bad, message in (
        (["--concepts", "0"], "--concepts must be 1..32"),
        (["--features", "0"], "--features must be ≥ 1"),
        (["--no-select", "--judge", "local"], "drop --no-select"),
    ):
        assert main([*base, *bad]) == 2
        assert message in capsys.readouterr().err
    assert (tmp_path / "o" / "steering.json").read_text() == written  # bad input: untouched


def test_run_steering_eval_in_bfloat16(steer_run, tmp_path, monkeypatch):
    """`model_dtype` loads the runs' model in bfloat16 for every method; the report says so, and
    a model passed in is never silently recast."""
    import saekit.steering.evaluate as evaluate

    loaded, real = [], evaluate.build_hooked_model

    def build(cfg):
        loaded.append(real(cfg))
        return loaded[-1]

    monkeypatch.setattr(evaluate, "build_hooked_model", build)
    cfg = SteeringConfig(
        prompts=("the cat", "a dog", "birds", "home"),
        kl_targets=(0.01,),
        gen_tokens=2,
        n_random=1,
        target_tokens=3,
        reference_windows=1,
        n_boot=200,
        select_kappa=False,
    )
    report = run_steering_eval(
        steer_run,
        config=cfg,
        features=[0],
        labelled=False,
        out_dir=tmp_path / "bf16",
        model_dtype="bfloat16",
    )
    assert report["model_dtype"] == "bfloat16"
    assert {p.dtype for p in loaded[0].model.parameters()} == {torch.bfloat16}
    rows = [r for r in report["table"] if r["method"] == "topk"]
    assert rows and all(r["kappa"] != "selected" for r in rows)
    assert report["study"][HOOK]["methods"]["topk"]["budgets"][0]["directions"] == 1
    from saekit.errors import SaekitError

    with pytest.raises(SaekitError, match="cast the model you pass"):
        run_steering_eval(steer_run, model=object(), config=cfg, model_dtype="bfloat16")  # type: ignore[arg-type]

"""`evaluate_run`: report.json and PNGs for a run directory (tiny model, no real model loads),
and end to end for an SAE trained by the real sae-lens on the offline SmolLM2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from saekit.activations.stream import StreamConfig
from saekit.config import save_yaml
from saekit.data.text import DataConfig
from saekit.dictionaries import SAEConfig
from saekit.errors import SaekitError
from saekit.models.hooks import HookedModel
from saekit.recipe import Recipe
from saekit.report import evaluate_run, summary_table

HOOK = "blocks.0.hook_resid_post"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def is_png(path: str | Path) -> bool:
    data = Path(path).read_bytes()
    return data[:8] == PNG_MAGIC and len(data) > 2_000


def make_run(root: Path, corpus: Path, pm_identity) -> dict[str, str]:
    """recipe.yaml, two saved dictionaries and a 3-line history.jsonl; returns name → hook."""
    recipe = Recipe(
        data=DataConfig(source=str(corpus), context_size=16, eval_fraction=0.4),
        stream=StreamConfig(hooks=(HOOK,)),
        saes=(SAEConfig(method="topk", d_sae=32, k=4, hook=HOOK), SAEConfig(method="relu")),
    )
    root.mkdir()
    save_yaml(recipe, root / "recipe.yaml")
    names = {"00-topk-blocks.0.hook_resid_post": HOOK, "01-relu-identity": ""}
    pm_identity("topk", k=4).save(root / "saes" / "00-topk-blocks.0.hook_resid_post")
    pm_identity("relu", hook="").save(root / "saes" / "01-relu-identity")  # hook from recipe
    lines = []
    for step in (10, 20, 30):
        row: dict[str, float] = {"step": step, "tokens_per_s": 1e4}
        for i, name in enumerate(names):
            row |= {f"{name}/loss/total": 1 / step + i, f"{name}/fvu": 3 / step,
                    f"{name}/l0": 4.0 + i, f"{name}/dead_fraction": 0.1 / step}  # fmt: skip
        lines.append(json.dumps(row))
    lines.append('{"step": 40, "00-topk-blocks.0.hook_re')  # a live run's half-written line
    (root / "history.jsonl").write_text("\n".join(lines))
    return names


def test_run_dir_writes_report_and_plots(
    tmp_path, saekit_home, corpus_jsonl, tokenizer, eval_tl, pm_identity
):
    run = tmp_path / "run"
    names = make_run(run, corpus_jsonl, pm_identity)
    model = HookedModel(eval_tl, tokenizer)  # char tokenizer: 32 ids within the model's 64
    report = evaluate_run(run, n_windows=6, model=model)
    assert json.loads((run / "report.json").read_text()) == report
    assert not list(run.glob("*.partial"))
    assert set(report["saes"]) == set(names)
    assert report["eval_windows"] == 6
    for name, metrics in report["saes"].items():
        assert metrics["hook"] == HOOK  # the relu dictionary's hook came from recipe.stream
        assert math.isfinite(metrics["fvu"]) and math.isfinite(metrics["ce_loss_score"])
        assert metrics["plots"]["density"] == str(run / f"{name}-density.png")
        assert is_png(metrics["plots"]["density"])
    identity = report["saes"]["01-relu-identity"]
    assert identity["fvu"] == pytest.approx(0.0, abs=1e-12)
    assert identity["ce_loss_score"] == pytest.approx(1.0, abs=1e-5)
    assert 0.0 < report["saes"]["00-topk-blocks.0.hook_resid_post"]["ce_loss_score"] < 1.0
    assert report["plots"]["history"] == str(run / "training-curves.png")
    assert is_png(run / "training-curves.png")
    table = summary_table(report).splitlines()
    assert "ce_loss_score"[:12] in table[0] and table[3].startswith("scorecard of 00-topk")
    # the scorecard: the point metrics with window intervals and both controls' values
    for name, metrics in report["saes"].items():
        core = report["scorecard"][name]["core"]
        for key in ("explained_variance", "fvu", "ce_loss_score", "kl_sae", "l0_mean"):
            assert core[key]["value"] == pytest.approx(metrics[key], rel=1e-6), (name, key)
            assert core[key]["resampled"] == "6 held-out windows"
        assert set(core["fvu"]["controls"]) == {"random", "init"}
        assert metrics["controls"]["init"]["fvu"] == pytest.approx(core["fvu"]["controls"]["init"])
    topk = report["scorecard"]["00-topk-blocks.0.hook_resid_post"]["core"]["explained_variance"]
    assert topk["margin_ci"][0] > 0  # the identity-like topk beats random and untrained
    assert sum(line.startswith("scorecard of") for line in table) == 2


def test_out_dir_and_hook_override(tmp_path, saekit_home, corpus_jsonl, tokenizer, eval_tl,
                                   pm_identity):  # fmt: skip
    run = tmp_path / "run"
    make_run(run, corpus_jsonl, pm_identity)
    (run / "history.jsonl").unlink()  # no curves without history
    out = tmp_path / "elsewhere"
    report = evaluate_run(run, hook="blocks.1.hook_resid_pre", n_windows=3,
                          model=HookedModel(eval_tl, tokenizer), out_dir=out)  # fmt: skip
    assert (out / "report.json").is_file() and not (run / "report.json").exists()
    assert "plots" not in report and not (out / "training-curves.png").exists()
    assert {m["hook"] for m in report["saes"].values()} == {"blocks.1.hook_resid_pre"}


def test_bad_paths_are_clear_errors(tmp_path, eval_tl, pm_identity):
    model = HookedModel(eval_tl, None)
    with pytest.raises(SaekitError, match="neither a run directory"):
        evaluate_run(tmp_path, model=model)
    save_yaml(Recipe(), tmp_path / "recipe.yaml")
    with pytest.raises(SaekitError, match="no trained dictionaries"):
        evaluate_run(tmp_path, model=model)
    pm_identity("relu", hook="").save(tmp_path / "sae")
    with pytest.raises(SaekitError, match="names no hook"):
        evaluate_run(tmp_path / "sae", model=model)


# ---- end to end: the real sae-lens trains on the offline SmolLM2, saekit evaluates --------------
def write_training_text(path: Path, n_chars: int) -> None:
    """The first ~n_chars of the offline corpus as {"text"} jsonl (~4 characters per token)."""
    from saekit.assets import offline_corpus

    path.parent.mkdir(parents=True)
    with offline_corpus().open() as src, path.open("w") as out:
        written = 0
        for line in src:
            text = json.loads(line)["text"]
            out.write(json.dumps({"text": text}) + "\n")
            written += len(text)
            if written >= n_chars:
                break


@pytest.mark.e2e
def test_saelens_trained_sae_evaluates_end_to_end(tmp_path, smollm2_tl, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from sae_lens import (
        LanguageModelSAERunnerConfig,
        LanguageModelSAETrainingRunner,
        LoggingConfig,
        TopKTrainingSAEConfig,
    )

    hook = "blocks.6.hook_resid_post"
    write_training_text(tmp_path / "data" / "train.jsonl", n_chars=120_000)
    # ~20k LM tokens at ~2.6k tokens/s to layer 6 on 2 cores; served in order (no mixing
    # buffer), so SAELens reads exactly training_tokens. d_sae 512, k 32 reach FVU ~0.6.
    cfg = LanguageModelSAERunnerConfig(
        sae=TopKTrainingSAEConfig(d_in=576, d_sae=512, k=32, dtype="float32", device="cpu"),
        model_name="smollm2-135m", hook_name=hook,
        dataset_path=str(tmp_path / "data"), dataset_trust_remote_code=False,
        is_dataset_tokenized=False, streaming=True, context_size=128,
        store_batch_size_prompts=8, activations_mixing_fraction=0.0,
        n_batches_in_buffer=8,  # 8 · 128 tokens ≥ train_batch_size_tokens, as SAELens needs
        train_batch_size_tokens=1024, training_tokens=20_480, lr=4e-3,
        logger=LoggingConfig(log_to_wandb=False), output_path=str(tmp_path / "sae"),
        checkpoint_path=None, device="cpu", verbose=False, seed=0,
    )  # fmt: skip
    LanguageModelSAETrainingRunner(cfg, override_model=smollm2_tl.model).run()
    sae_dir = tmp_path / "sae"
    report = evaluate_run(sae_dir, hook=hook, n_windows=4, model=smollm2_tl)
    assert (sae_dir / "report.json").is_file()
    (metrics,) = report["saes"].values()
    assert metrics["method"] == "topk" and metrics["d_in"] == 576
    assert math.isfinite(metrics["fvu"]) and 0.0 < metrics["fvu"] < 1.0
    assert math.isfinite(metrics["ce_loss_score"]) and metrics["ce_sae"] > metrics["ce_clean"]
    assert metrics["l0_max"] <= 32
    assert is_png(metrics["plots"]["density"])


def test_eval_aggregates_interp_steering_and_selection(
    tmp_path, saekit_home, corpus_jsonl, tokenizer, eval_tl, pm_identity
):
    run = tmp_path / "run"
    names = make_run(run, corpus_jsonl, pm_identity)
    steering_row = {"hook": HOOK, "method": "sae", "kappa": "selected", "score": 0.25,
                    "concept_gain": 0.2, "fluency": 0.7}  # fmt: skip
    (run / "steering.json").write_text(json.dumps({"table": [steering_row]}))
    (run / "selection").mkdir()
    selection = {"retrieval": {"summary": {"mona": {"auc": {"mean": 0.9, "std": 0.1}}}},
                 "downstream": {"mean": {"mona": {"response_loss": 2.5}}}}  # fmt: skip
    (run / "selection" / "selection.json").write_text(json.dumps(selection))
    model = HookedModel(eval_tl, tokenizer)
    report = evaluate_run(run, n_windows=6, model=model, interp_windows=6)
    for name in names:
        interp = report["saes"][name]["interp"]
        assert {"detection_mean", "fuzzing_mean", "simulation_mean", "alive"} <= set(interp)
        assert report["saes"][name]["detection"] == interp["detection_mean"]
    assert (run / "interp.json").is_file()
    assert report["steering"]["table"] == [steering_row]
    assert report["selection"]["retrieval"]["mona"]["auc"]["mean"] == 0.9
    assert report["selection"]["downstream"]["mona"]["response_loss"] == 2.5
    table = summary_table(report)
    scored = any(report["saes"][n]["detection"] is not None for n in names)
    assert ("detection" in table) == scored and "S 0.250" in table
    saved = json.loads((run / "report.json").read_text())
    assert saved["steering"]["table"] == [steering_row]


def test_eval_runs_sparse_probing_and_absorption_on_request(
    tmp_path, saekit_home, corpus_jsonl, tokenizer, eval_tl, pm_identity
):
    from saekit.eval.absorption import AbsorptionConfig
    from saekit.eval.probing import ProbingConfig

    run = tmp_path / "run"
    names = make_run(run, corpus_jsonl, pm_identity)
    task = tmp_path / "task.csv"
    rows = [f"{w},{i % 2}\n" for i, w in enumerate(["ab", "cd", "ef", "gh"] * 10)]
    task.write_text("text,label\n" + "".join(rows))
    probing = ProbingConfig(tasks=str(task), n_train=16, n_test=8, ks=(1, 2), context_size=8)
    absorption = AbsorptionConfig(prompt_template="{word}:", token_pos=-2, n_examples=3)
    report = evaluate_run(run, n_windows=4, model=HookedModel(eval_tl, tokenizer),
                          probing=probing, absorption=absorption)  # fmt: skip
    for name in names:
        entry = report["saes"][name]["sparse_probing"]
        assert set(entry["controls"]) == {"random", "init"}
        assert entry["top_k"]["k=1"] == report["saes"][name]["probing_k1"]
        best_floor = max(c["k=2"] for c in entry["controls"].values())
        assert entry["margin_over_strongest_control"]["k=2"] == entry["top_k"]["k=2"] - best_floor
        assert report["saes"][name]["absorption"]["n_tokens"] == 26  # the char vocabulary
        # The scorecard holds the same numbers, the controls measured on the same task.
        card = report["scorecard"][name]
        top2 = card["sparse_probing"]["accuracy_k2"]
        assert top2["value"] == pytest.approx(entry["top_k"]["k=2"])
        floors = {c: v["k=2"] for c, v in entry["controls"].items()}
        assert top2["controls"] == pytest.approx(floors)
        assert top2["margin"] == pytest.approx(entry["margin_over_strongest_control"]["k=2"])
        assert top2["resampled"] == "1 tasks" and "scores" not in entry
        absorbed = report["saes"][name]["absorption"]
        assert set(absorbed["controls"]) == {"random", "init"}  # scored on the same prompts
        fraction = report["saes"][name]["absorption_fraction"]
        if fraction is not None:
            got = card["absorption"]["absorption_fraction"]
            assert got["value"] == pytest.approx(fraction) and not got["higher_is_better"]
            floors = {c: v["mean_absorption_fraction"] for c, v in absorbed["controls"].items()}
            assert got["controls"] == pytest.approx(floors)
            # Lower is better: the strongest control is the one with the least absorption.
            margin = absorbed["margin_over_strongest_control"]["absorption_fraction"]
            assert margin == pytest.approx(min(floors.values()) - fraction)
    probing_file = json.loads((run / "probing.json").read_text())
    assert set(probing_file) == {HOOK} and len(probing_file[HOOK]["tasks"]) == 1
    absorption_file = json.loads((run / "absorption.json").read_text())
    assert set(absorption_file) == {f"{n}{c}" for n in names for c in ("", "/random", "/init")}
    assert "probing_k1" in summary_table(report)


def test_a_bad_probing_task_fails_before_any_model_runs(tmp_path, corpus_jsonl, pm_identity):
    from saekit.eval.probing import ProbingConfig

    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"the model was used ({name}) before the tasks were checked")

    run = tmp_path / "run"
    make_run(run, corpus_jsonl, pm_identity)
    missing = ProbingConfig(tasks=str(tmp_path / "missing.csv"))
    with pytest.raises(SaekitError, match="missing.csv' does not exist"):
        evaluate_run(run, model=Untouchable(), probing=missing)  # type: ignore[arg-type]
    assert not (run / "report.json").exists()


def test_eval_flags_reach_the_saebench_configs():
    from saekit.cli import build_parser
    from saekit.config import flag_overrides, load_recipe
    from saekit.report import SAEBenchEvals

    args = build_parser().parse_args(
        ["eval", "RUN", "--probing", "--probing.ks", "[1, 3]", "--absorption.per_letter", "8"]
    )
    extra = load_recipe(SAEBenchEvals, None, flag_overrides(args))
    assert args.probing and not args.absorption and not args.saebench_core
    assert build_parser().parse_args(["eval", "RUN", "--saebench-core"]).saebench_core
    assert extra.probing.ks == (1, 3) and extra.absorption.per_letter == 8
    bad = build_parser().parse_args(["eval", "RUN", "--probing.ks", "[0]"])
    with pytest.raises(SaekitError, match="probing.ks must be positive"):
        load_recipe(SAEBenchEvals, None, flag_overrides(bad))

"""`saekit train`: bad input is one stderr line and status 2; a run, a refusal, a resume; and
one end-to-end run on the offline SmolLM2 whose dictionaries SAELens loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from saekit.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def recipe_yaml(tmp_path: Path) -> Path:
    """A synthetic-stream recipe (see `synthetic_run`): TopK d_sae 64 on hook h0, 20 steps."""
    path = tmp_path / "recipe.yaml"
    path.write_text(f"""
stream: {{hooks: [h0], batch_size: 256}}
saes:
  - {{method: topk, d_sae: 64, k: 4}}
train:
  total_tokens: 5120
  log_every: 5
  output_dir: {tmp_path / "run"}
  wandb_mode: disabled
""")
    return path


def test_an_old_recipe_trains_with_one_deprecation_line(synthetic_run, tmp_path, capsys):
    """A saekit 0.1 recipe (flat `target_l0`) still trains; stderr says how to rewrite it."""
    path = tmp_path / "old.yaml"
    path.write_text(f"""
stream: {{hooks: [h0], batch_size: 256}}
saes:
  - {{method: relu, d_sae: 64, target_l0: 6, l1_coefficient: 2.0}}
train: {{total_tokens: 2560, log_every: 5, output_dir: {tmp_path / "run"}, wandb_mode: disabled}}
""")
    assert main(["train", str(path)]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "deprecated" in line]
    assert err == [
        "saekit: deprecated: saes[0]: flat keys target_l0, l1_coefficient are deprecated and "
        "will stop loading in saekit 0.3; they were read as relu.target_l0, "
        "relu.l1_coefficient. Write them under `relu:`."
    ]
    saved = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())
    assert saved["saes"][0]["relu"] == {"l1_coefficient": 2.0, "target_l0": 6.0}


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("saekit: error: "), err
    return lines[0]


@pytest.mark.parametrize(
    ("flags", "fragments"),
    [
        (["--saes.k", "64"], ["k=64 must be smaller than d_sae=64"]),
        (["--train.lr", "0"], ["train.lr must be > 0"]),
        (["--train.lr", "-0.001"], ["train.lr must be > 0"]),
        (["--saes.method", "topkk"], ["saes[0].method", "'topkk' is not one of"]),
        (["--saes.hook", "h1"], ["saes[0].hook 'h1' is not streamed", "stream.hooks"]),
        (["--saes.method", "topk", "--saes.relu.target_l0", "8"], ["options of method relu"]),
        (
            [
                "--saes.method",
                "relu",
                "--saes.relu.l1_coefficient",
                "0",
                "--saes.relu.target_l0",
                "8",
            ],
            ["00-relu-h0: target_l0 needs"],
        ),
        (["--train.checkpoint_every", "-3"], ["train.checkpoint_every must be ≥ 0", "got -3"]),
        (["--train.log_every", "0"], ["train.log_every must be ≥ 1, got 0"]),
        (["--train.lr_warmup_steps", "-1"], ["train.lr_warmup_steps must be ≥ 0, got -1"]),
        (["--train.sparsity_warmup_steps", "-1"], ["train.sparsity_warmup_steps must be ≥ 0"]),
        (["--train.dead_window_tokens", "0"], ["train.dead_window_tokens must be ≥ 1, got 0"]),
        (["--train.b_dec_init_samples", "-8"], ["train.b_dec_init_samples must be ≥ 0"]),
        (["--train.grad_clip_norm", "-1"], ["train.grad_clip_norm must be ≥ 0 (0 disables"]),
        (["--train.lr_decay_fraction", "1.5"], ["train.lr_decay_fraction must be in [0, 1]"]),
        (["--train.adam_betas", "[0.9, 1.0]"], ["train.adam_betas must be in [0, 1)"]),
    ],
)
def test_bad_flags_are_one_line_and_status_2(
    flags, fragments, recipe_yaml, synthetic_run, tmp_path, capsys
) -> None:
    assert main(["train", str(recipe_yaml), *flags]) == 2
    line = one_error_line(capsys)
    for fragment in fragments:
        assert fragment in line
    assert not (tmp_path / "run").exists()  # refused before touching the output directory


def test_an_empty_recipe_is_refused_before_anything_is_written(
    tmp_path, synthetic_run, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.yaml").write_text("")
    assert main(["train", "empty.yaml"]) == 2
    assert "Recipe 'empty.yaml' is empty" in one_error_line(capsys)
    assert list(tmp_path.iterdir()) == [tmp_path / "empty.yaml"] and not synthetic_run


def test_bad_train_key_in_yaml_names_the_valid_ones(
    recipe_yaml, synthetic_run, tmp_path, capsys
) -> None:
    recipe_yaml.write_text(recipe_yaml.read_text().replace("log_every", "log_evry"))
    assert main(["train", str(recipe_yaml)]) == 2
    line = one_error_line(capsys)
    assert "'train.log_evry'" in line and "Did you mean 'log_every'" in line
    assert not (tmp_path / "run").exists()


def test_train_refuse_then_resume(recipe_yaml, synthetic_run, tmp_path, capsys) -> None:
    assert main(["train", str(recipe_yaml)]) == 0
    out = capsys.readouterr().out
    assert "trained 1 dictionary on 5,120 tokens" in out and "00-topk-h0" in out
    assert main(["train", str(recipe_yaml)]) == 2
    assert "pass --resume" in one_error_line(capsys)
    assert main(["train", str(recipe_yaml), "--resume", "--train.total_tokens", "7680"]) == 0
    assert "on 7,680 tokens" in capsys.readouterr().out
    assert main(["train", str(recipe_yaml), "--resume", "--saes.d_sae", "128"]) == 2
    assert "saes[0].d_sae: 64 (saved) vs 128 (now)" in one_error_line(capsys)


@pytest.mark.e2e
def test_smollm2_quickstart_trains_saelens_loadable_dictionaries(tmp_path, smollm2_tl) -> None:
    from sae_lens import SAE

    from saekit.dictionaries import load_dictionary
    from saekit.fitting import train_recipe
    from saekit.recipe import Recipe

    overrides = {
        "train.total_tokens": 8192,
        "stream.buffer_sequences": 16,
        "stream.batch_size": 1024,
        "saes.d_sae": 1024,
        "train.output_dir": str(tmp_path / "run"),
        "train.wandb_mode": "disabled",  # offline wandb is tested on synthetic data; ~3 s here
    }
    recipe = Recipe.load(REPO / "recipes/smollm2-quickstart.yaml", overrides)
    summary = train_recipe(recipe, model=smollm2_tl)
    assert summary["steps"] == 8 and len(summary["saes"]) == 1
    (info,) = summary["saes"].values()
    path = Path(info["path"])
    assert path.parent == tmp_path / "run/saes" and (path / "cfg.json").is_file()
    sae = SAE.load_from_disk(str(path), device="cpu")
    assert sae.cfg.d_in == 576 and sae.cfg.d_sae == 1024
    mine = load_dictionary(path)
    x = torch.randn(64, 576, generator=torch.Generator().manual_seed(0)) * 3
    with torch.no_grad():
        assert torch.allclose(sae.encode(x), mine.encode(x), atol=1e-4)

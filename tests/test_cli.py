"""The `saekit` command: hooks and cache on a tiny local model, one-line errors, exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from saekit.activations.cache import ActivationCache
from saekit.cli import main

REPO = Path(__file__).resolve().parents[1]


def tiny_recipe(tmp_path: Path, model_dir: Path, corpus: Path, extra: str = "") -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(f"""
model: {{name: {model_dir}, backend: transformer_lens}}
data: {{source: {corpus}, context_size: 16}}
stream:
  hooks: [blocks.0.hook_resid_post, blocks.1.mlp.hook_post]
  batch_size: 32
  buffer_sequences: 4
  model_batch_size: 2
  normalize: true
cache: {{output_dir: {tmp_path / "cache"}, n_tokens: 100, shard_tokens: 64}}
{extra}""")
    return path


def files(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def assert_one_line_error(
    capsys: pytest.CaptureFixture[str], *fragments: str, only: bool = False
) -> str:
    """The error is the last stderr line, alone; `only`: nothing else was printed before it."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    # Loading a model prints transformers' progress bars to stderr before any error.
    assert [i for i, line in enumerate(lines) if line.startswith("saekit:")] == [len(lines) - 1]
    assert lines[-1].startswith("saekit: error: ")
    if only:
        assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[-1]
    return lines[-1]


# ---- errors ----------------------------------------------------------------------------------
def test_bad_recipe_key_is_one_line_and_status_2(tmp_path, capsys):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("stream:\n  batch_sise: 8\n")
    assert main(["cache", str(recipe)]) == 2
    assert_one_line_error(capsys, "'stream.batch_sise'", "batch_size", "Valid keys:", only=True)


def test_missing_recipe_is_one_line(tmp_path, capsys):
    assert main(["cache", str(tmp_path / "nope.yaml")]) == 2
    assert_one_line_error(capsys, "not found", only=True)


def test_invalid_yaml_is_one_line(tmp_path, capsys):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("stream:\n  hooks: [a, b\n")
    assert main(["cache", str(recipe)]) == 2
    assert_one_line_error(capsys, "is not valid YAML at line 3", only=True)


def test_wrong_flag_value_is_one_line(tmp_path, capsys):
    recipe = tmp_path / "ok.yaml"
    recipe.write_text("stream: {batch_size: 8}\n")
    assert main(["cache", str(recipe), "--stream.batch_size", "many"]) == 2
    assert_one_line_error(capsys, "stream.batch_size: expected int, got 'many'", only=True)


def test_missing_model_path_is_one_line(tmp_path, capsys):
    assert main(["hooks", str(tmp_path / "no_model_here")]) == 2
    assert_one_line_error(capsys, "does not exist", "smollm2-135m")


# ---- hooks -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("backend", "shown", "width"),
    [
        ("hf", "model.layers.1.mlp.down_proj:in", 32),
        ("transformer_lens", "blocks.1.mlp.hook_post", 32),
    ],
)
def test_hooks_lists_names_and_widths(tiny_model_dir, capsys, backend, shown, width):
    assert main(["hooks", str(tiny_model_dir), "--backend", backend, "--filter", "mlp"]) == 0
    out = capsys.readouterr().out.splitlines()
    # TransformerLens prints "Moving model to device" to stdout first: find our header.
    header = next(i for i, line in enumerate(out) if line.endswith(f"({backend}):"))
    rows = dict(line.split() for line in out[header + 1 :])
    assert rows[shown] == str(width)
    assert all("mlp" in name for name in rows)


# ---- cache -----------------------------------------------------------------------------------
def test_cache_writes_a_valid_cache_and_reuses_it(
    tmp_path, saekit_home, tiny_model_dir, corpus_jsonl, capsys
):
    recipe = tiny_recipe(tmp_path, tiny_model_dir, corpus_jsonl)
    assert main(["cache", str(recipe), "--stream.batch_size", "8"]) == 0
    assert "cache: " in capsys.readouterr().out
    cache = ActivationCache(tmp_path / "cache")
    assert cache.rows == 100
    assert {h: info["d_in"] for h, info in cache.manifest["hooks"].items()} == {
        "blocks.0.hook_resid_post": 16,
        "blocks.1.mlp.hook_post": 32,
    }
    stream_cfg = cache.manifest["provenance"]["stream"]
    assert stream_cfg["batch_size"] == 8  # the flag overrode the recipe's 32
    assert stream_cfg["normalize"] is False  # raw activations; normalize is applied on read
    assert cache.manifest["norm_factors"] == {}
    assert torch.isfinite(cache.read("blocks.1.mlp.hook_post", 0, 100)).all()
    before = files(tmp_path / "cache")
    # The same recipe again reuses the cache; a different one is refused; nothing is rewritten.
    assert main(["cache", str(recipe), "--stream.batch_size", "8"]) == 0
    assert files(tmp_path / "cache") == before
    capsys.readouterr()
    assert main(["cache", str(recipe), "--stream.batch_size", "8", "--cache.dtype", "float16"]) == 2
    assert_one_line_error(capsys, "already holds a different activation cache")
    assert files(tmp_path / "cache") == before


@pytest.mark.parametrize("damage", ["flipped bit", "truncated shard"])
def test_a_damaged_cache_is_refused_and_the_advised_command_rebuilds_it(
    tmp_path, saekit_home, tiny_model_dir, corpus_jsonl, capsys, damage
):
    recipe = tiny_recipe(tmp_path, tiny_model_dir, corpus_jsonl)
    assert main(["cache", str(recipe)]) == 0
    shard = tmp_path / "cache/blocks.1.mlp.hook_post/shard_00001.bin"
    data = bytearray(shard.read_bytes())
    if damage == "flipped bit":
        data[40] ^= 0x80  # a sign bit: the size still matches, only the checksum differs
    else:
        del data[-8:]
    shard.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["cache", str(recipe)]) == 2
    line = assert_one_line_error(capsys, "shard_00001.bin", only=True)
    command = line.split("`")[1]
    assert command == "saekit cache RECIPE --cache.overwrite true"
    argv = command.replace("RECIPE", str(recipe)).split()[1:]
    assert main(argv) == 0
    assert "caching" in capsys.readouterr().err  # rebuilt from the model, with progress
    ActivationCache(tmp_path / "cache")  # verifies
    assert main(["cache", str(recipe)]) == 0
    assert "reused" in capsys.readouterr().out
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".cache")]  # no temp dirs


def test_cache_with_an_unknown_hook_lists_close_names(
    tmp_path, saekit_home, tiny_model_dir, corpus_jsonl, capsys
):
    recipe = tiny_recipe(tmp_path, tiny_model_dir, corpus_jsonl)
    assert main(["cache", str(recipe), "--stream.hooks", "[blocks.1.hook_resid_pst]"]) == 2
    assert_one_line_error(capsys, "Unknown hook point", "blocks.1.hook_resid_post")
    assert not (tmp_path / "cache").exists()


# ---- end to end ------------------------------------------------------------------------------
@pytest.mark.e2e
def test_smollm2_cache_on_a_tiny_budget(tmp_path, capsys):
    out = tmp_path / "smollm2-cache"
    argv = [
        "cache", str(REPO / "recipes" / "smollm2-cache.yaml"),
        "--stream.hooks", "[blocks.3.hook_resid_post]",
        "--stream.buffer_sequences", "8", "--stream.model_batch_size", "8",
        "--stream.batch_size", "256",
        "--cache.n_tokens", "2048", "--cache.shard_tokens", "1024", "--cache.output_dir", str(out),
    ]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    cache = ActivationCache(out)
    assert cache.rows == 2048
    info = cache.manifest["hooks"]["blocks.3.hook_resid_post"]
    assert info["d_in"] == 576 and [s["rows"] for s in info["shards"]] == [1024, 1024]
    x = cache.read("blocks.3.hook_resid_post", 0, 2048)
    assert torch.isfinite(x).all()
    assert json.loads((out / "manifest.json").read_text())["provenance"]["model"]["name"] == (
        "smollm2-135m"
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [("-1e-3", "train.lr must be > 0, got -0.001"), ("-0.5", "train.lr must be > 0, got -0.5")],
)
def test_negative_number_flag_reaches_validation(tmp_path, capsys, value, message):
    """argparse alone takes `-1e-3` for an option ("expected one argument")."""
    recipe = tmp_path / "ok.yaml"
    recipe.write_text(f"train: {{output_dir: {tmp_path / 'run'}}}\n")
    assert main(["train", str(recipe), "--train.lr", value]) == 2
    assert_one_line_error(capsys, message, only=True)
    assert not (tmp_path / "run").exists()

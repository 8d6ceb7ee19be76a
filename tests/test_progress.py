"""Every long command shows progress from its first second: the model load is announced before
it starts, and the work after it is a progress bar with a rate and an ETA. Training and caching
count tokens that move with each model forward while the first shuffle buffer fills."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from saekit.activations.progress import TokenProgress
from saekit.cli import main

HOOK = "model.layers.0"
BAR = re.compile(r"(\d+(\.\d+)?k?)/(\d+(\.\d+)?k?) \[[0-9:]+<[0-9:?]+, ")
"""A tqdm bar with a count, a total, elapsed time, an ETA and a rate."""


@pytest.fixture
def run_dir(tmp_path: Path, tiny_topk_run) -> Path:
    """recipe.yaml (tiny HF Llama, synthetic corpus) and one TopK SAE at HOOK."""
    return tiny_topk_run(tmp_path / "run", eval_fraction=0.5)


def starts_with_the_model_load(err: str, bar: str) -> None:
    """The first line names the model being loaded; a bar named `bar` ran with an ETA."""
    lines = [line.strip("\r ") for line in re.split(r"[\r\n]", err) if line.strip("\r ")]
    assert lines and lines[0].startswith("loading model "), err
    assert any(line.startswith(bar) and BAR.search(line) for line in lines), err


def test_eval_dashboard_steer_compare_and_select_show_progress(run_dir, tmp_path, capsys):
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--windows", "4"]) == 0
    starts_with_the_model_load(capsys.readouterr().err, f"eval {HOOK}")

    assert main(["dashboard", str(run_dir), "--windows", "4", "--recompute"]) == 0
    starts_with_the_model_load(capsys.readouterr().err, "interp")

    steer = ["--features", "1", "--prompts", "2", "--gen-tokens", "2", "--random", "1"]
    assert main(["steer", "compare", str(run_dir), *steer, "--kl", "0.01", "--no-diffmean"]) == 0
    starts_with_the_model_load(capsys.readouterr().err, f"baseline {HOOK}")

    samples = [
        {"instruction": f"question {i} about {w}", "response": f"an answer on {w}"}
        for i, w in enumerate(["cats", "dogs", "birds", "fish", "home", "trees"] * 2)
    ]
    pool, target = tmp_path / "pool.jsonl", tmp_path / "target.jsonl"
    pool.write_text("".join(json.dumps(s) + "\n" for s in samples))
    target.write_text("".join(json.dumps(s) + "\n" for s in samples[:2]))
    flags = ["--pool", str(pool), "--target", str(target), "--ratio", "0.5", "--no-baselines"]
    assert main(["select", str(run_dir), *flags]) == 0
    starts_with_the_model_load(capsys.readouterr().err, "embed")


def test_training_and_caching_count_tokens_while_the_first_buffer_fills(
    run_dir, tmp_path, monkeypatch, capsys
):
    """With a buffer of 16 windows (~240 tokens, 8 forwards) and batches of 32, the bar is
    past 0 before the first step and says it is filling the buffer."""
    seen: list[tuple[int, int, str]] = []
    capture = TokenProgress.capture

    def spy(self: TokenProgress, rows: int) -> None:
        capture(self, rows)
        seen.append((self.bar.n, self.consumed, self.bar.postfix or ""))

    monkeypatch.setattr(TokenProgress, "capture", spy)
    recipe = run_dir / "recipe.yaml"
    stream = ["--stream.batch_size", "32", "--stream.buffer_sequences", "16"]
    stream += ["--stream.model_batch_size", "2"]
    train = ["--train.total_tokens", "320", "--train.output_dir", str(tmp_path / "trained")]
    capsys.readouterr()
    assert main(["train", str(recipe), *stream, *train, "--train.wandb_mode", "disabled"]) == 0
    first_fill = [s for s in seen if s[1] == 0]
    assert len(first_fill) == 8 and first_fill[0][0] > 0  # moving before the first step
    assert [n for n, _, _ in first_fill] == sorted({n for n, _, _ in first_fill})
    assert all("filling the shuffle buffer" in p for _, _, p in first_fill)
    starts_with_the_model_load(capsys.readouterr().err, "training")

    seen.clear()
    cache = ["--cache.output_dir", str(tmp_path / "cache"), "--cache.n_tokens", "240"]
    assert main(["cache", str(recipe), *stream, *cache]) == 0
    assert len([s for s in seen if s[1] == 0]) == 8 and seen[0][0] > 0
    starts_with_the_model_load(capsys.readouterr().err, "caching activations")

    # A cache smaller than a buffer fills the 8 windows it needs and 2 to spare (5 forwards),
    # not the recipe's 16.
    seen.clear()
    cache = ["--cache.output_dir", str(tmp_path / "small"), "--cache.n_tokens", "120"]
    assert main(["cache", str(recipe), *stream, *cache]) == 0
    assert len(seen) == 5

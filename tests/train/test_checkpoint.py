"""Checkpoints are atomic and checked on resume; run directories and locks refuse clobbering."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from synthetic_stream import synthetic_stream

import saekit.train.checkpoint as checkpoint
from saekit.dictionaries import SAEConfig
from saekit.errors import SaekitError
from saekit.fitting import train_recipe
from saekit.rundir import RunDir
from saekit.train.checkpoint import RunLock, load_checkpoint

TOPK = (SAEConfig(d_sae=64, k=4),)


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root → sha256 of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def trained(train_cfg, make_trainer, tmp_path: Path) -> Path:
    """A finished 40-step TopK run with checkpoints every 10 steps; returns its directory."""
    make_trainer(TOPK, train_cfg(checkpoint_every=10)).train()
    return tmp_path / "run"


# ---- atomic writes ---------------------------------------------------------------------------
def test_only_the_newest_complete_checkpoints_are_kept(trained: Path) -> None:
    root = trained / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000030", "step-00000040"]
    assert (root / "latest").read_text() == "step-00000040\n"
    weights, state, meta = load_checkpoint(root)
    assert meta["step"] == state["step"] == 40 and list(weights) == ["00-topk-h0"]


def test_a_leftover_partial_is_ignored_then_cleaned(trained, train_cfg, make_trainer) -> None:
    root = trained / "checkpoints"
    junk = root / "step-00000050.partial"
    junk.mkdir()
    (junk / "trainer_state.pt").write_bytes(b"half a file")
    trainer = make_trainer(TOPK, train_cfg(checkpoint_every=10))
    trainer.resume()
    assert trainer.step == 40
    trainer.checkpoint()
    assert not junk.exists()


def test_a_crash_mid_write_leaves_latest_on_a_complete_checkpoint(
    train_cfg, make_trainer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = make_trainer(TOPK, train_cfg(total_tokens=256 * 20, checkpoint_every=10))
    real_save = torch.save

    def dying_save(obj, path, *args, **kwargs):
        if "step-00000020" in str(path):
            real_save(obj, path, *args, **kwargs)
            Path(path).write_bytes(Path(path).read_bytes()[:100])  # torn write, then death
            raise KeyboardInterrupt
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    root = tmp_path / "run/checkpoints"
    assert (root / "latest").read_text() == "step-00000010\n"
    assert (root / "step-00000020.partial").is_dir() and not (root / "step-00000020").exists()
    monkeypatch.undo()
    resumed = make_trainer(TOPK, train_cfg(total_tokens=256 * 20, checkpoint_every=10))
    resumed.resume()
    assert resumed.step == 10


def test_rewriting_the_same_step_keeps_a_complete_checkpoint(trained, train_cfg, make_trainer):
    trainer = make_trainer(TOPK, train_cfg(checkpoint_every=10))
    trainer.resume()
    trainer.checkpoint()  # step 40 again, as a resumed finished run would
    root = trained / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000030", "step-00000040"]
    assert load_checkpoint(root)[2]["step"] == 40


@pytest.mark.parametrize("victim", ["trainer_state.pt", "00-topk-h0.safetensors", "meta.json"])
def test_a_truncated_checkpoint_file_is_a_clear_error(trained: Path, victim: str) -> None:
    path = trained / "checkpoints/step-00000040" / victim
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(SaekitError, match="unreadable or truncated") as err:
        load_checkpoint(trained / "checkpoints")
    assert "step-00000040" in str(err.value) and "\n" not in str(err.value)


def test_a_missing_weights_file_is_a_clear_error(trained, train_cfg, make_trainer) -> None:
    (trained / "checkpoints/step-00000040/00-topk-h0.safetensors").unlink()
    with pytest.raises(SaekitError, match="00-topk-h0"):
        make_trainer(TOPK, train_cfg()).resume()


def test_resume_without_a_checkpoint_says_so(train_cfg, make_trainer) -> None:
    with pytest.raises(SaekitError, match="No checkpoint to resume from"):
        make_trainer(TOPK, train_cfg()).resume()


# ---- resume checks ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("changed", "named"),
    [
        (SAEConfig(d_sae=128, k=4), "d_sae: 64 (saved) vs 128 (now)"),
        (SAEConfig(method="relu", d_sae=64), "00-topk-h0: only in the saved run"),
    ],
)
def test_resume_with_another_dictionary_names_the_mismatch(
    trained, train_cfg, make_trainer, changed, named
) -> None:
    before = snapshot(trained)
    trainer = make_trainer((changed,), train_cfg(checkpoint_every=10))
    with pytest.raises(SaekitError, match="different recipe") as err:
        trainer.train(resume=True)
    assert named in str(err.value)
    assert snapshot(trained) == before


def test_resume_with_another_stream_names_the_mismatch(trained, train_cfg) -> None:
    from saekit.train.trainer import Trainer

    before = snapshot(trained)
    cfg = train_cfg()
    run_config = {"stream": {"batch": 512}}
    stream = synthetic_stream({"h0": 16})
    trainer = Trainer(TOPK, cfg, stream, run_config, run_dir=RunDir(cfg.output_dir))
    with pytest.raises(SaekitError, match="run_config.stream: not in the saved run"):
        trainer.train(resume=True)
    assert snapshot(trained) == before


# ---- output directory and lock ---------------------------------------------------------------
def test_a_second_run_into_another_runs_dir_is_refused(synthetic_run, synthetic_recipe, tmp_path):
    recipe = synthetic_recipe()
    train_recipe(recipe)
    out = tmp_path / "run"
    before = snapshot(out)
    other = replace(recipe, saes=(SAEConfig(d_sae=128, k=8),))
    with pytest.raises(SaekitError, match="holds a different run"):
        train_recipe(other)
    with pytest.raises(SaekitError, match="pass --resume"):
        train_recipe(recipe)
    with pytest.raises(SaekitError, match="written by a different recipe"):
        train_recipe(other, resume=True)
    assert snapshot(out) == before


def test_a_non_empty_foreign_dir_is_refused(synthetic_run, synthetic_recipe, tmp_path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SaekitError, match="not empty and holds no saekit run"):
        train_recipe(synthetic_recipe())
    assert snapshot(out) == {"notes.txt": hashlib.sha256(b"mine").hexdigest()}
    assert not synthetic_run  # refused before opening a stream


def test_resume_continues_a_finished_or_crashed_run(synthetic_run, synthetic_recipe, tmp_path):
    recipe = synthetic_recipe(total_tokens=256 * 20)
    first = train_recipe(recipe)
    assert first["steps"] == 20
    longer = replace(recipe, train=replace(recipe.train, total_tokens=256 * 30))
    assert train_recipe(longer, resume=True)["steps"] == 30


def test_resume_of_a_run_that_died_before_its_first_checkpoint_starts_over(
    synthetic_run, synthetic_recipe, tmp_path
) -> None:
    recipe = synthetic_recipe()
    out = tmp_path / "run"
    out.mkdir()
    (out / "recipe.yaml").write_text(_yaml(recipe))  # what train_recipe writes before step 0
    assert train_recipe(recipe, resume=True)["steps"] == 20


def _yaml(recipe) -> str:
    import yaml

    from saekit.config import to_dict

    return yaml.safe_dump(to_dict(recipe), sort_keys=False)


def test_run_lock_refuses_a_live_other_process(tmp_path: Path) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "run.lock").write_text(str(other.pid))
        busy = f"Another run \\(pid {other.pid}\\)"
        with pytest.raises(SaekitError, match=busy), RunLock(tmp_path):
            pass
        assert (tmp_path / "run.lock").read_text() == str(other.pid)
    finally:
        other.kill()
        other.wait()
    # Now the pid is dead: its lock is stale and taken over, then released.
    with RunLock(tmp_path):
        assert (tmp_path / "run.lock").read_text() == str(os.getpid())
    assert not (tmp_path / "run.lock").exists()


def test_run_lock_refuses_the_parent_process(tmp_path: Path) -> None:
    (tmp_path / "run.lock").write_text(str(os.getppid()))
    with pytest.raises(SaekitError, match="Another run"), RunLock(tmp_path):
        pass

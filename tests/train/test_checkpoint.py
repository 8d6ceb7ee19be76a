"""Checkpoints are atomic and checked on resume; run directories and locks refuse clobbering."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from cached_runs import child_env
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
def test_a_truncated_checkpoint_file_falls_back_to_the_previous_one(
    trained: Path, victim: str, capsys
) -> None:
    root = trained / "checkpoints"
    path = root / "step-00000040" / victim
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    assert load_checkpoint(root)[2]["step"] == 30
    warning = capsys.readouterr().err.strip()
    assert warning.startswith("saekit: warning: step-00000040 is unreadable or truncated (")
    assert warning.endswith("resuming from step-00000030.") and "\n" not in warning
    assert (root / "latest").read_text() == "step-00000030\n"
    assert sorted(p.name for p in root.iterdir()) == [
        "latest", "step-00000030", "step-00000040.unreadable",
    ]  # fmt: skip
    path = root / "step-00000030" / victim
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(SaekitError, match="No readable checkpoint.*step-00000030 is unreadable"):
        load_checkpoint(root)


def test_a_missing_weights_file_falls_back_to_the_previous_one(
    trained, train_cfg, make_trainer
) -> None:
    (trained / "checkpoints/step-00000040/00-topk-h0.safetensors").unlink()
    trainer = make_trainer(TOPK, train_cfg())
    trainer.resume()
    assert trainer.step == 30


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


RACER = """
import sys, time
from pathlib import Path
import saekit.train.checkpoint as checkpoint

run, role, stale, first = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
seen = run / "second-saw-the-stale-lock"
real_alive = checkpoint._alive


def wait_for(done):
    deadline = time.monotonic() + 120
    while not done():
        if time.monotonic() > deadline:
            sys.exit("timed out")
        time.sleep(0.005)


def alive(pid):
    # The injected delay: both racers judge the same dead pid before either acts on it; the
    # second then acts only once the first has taken the lock (the worst interleaving).
    result = real_alive(pid)
    if pid == stale and role == "first":
        wait_for(seen.exists)
    elif pid == stale:
        seen.touch()
        wait_for(lambda: (run / "run.lock").read_text().strip() == first)
    return result


checkpoint._alive = alive
try:
    with checkpoint.RunLock(run):
        print("WON", flush=True)
        sys.stdin.read()  # hold the lock until the test closes stdin
except checkpoint.SaekitError as exc:
    print("LOST", exc, flush=True)
"""


def test_two_resumers_racing_for_a_stale_lock_exactly_one_wins(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "run.lock").write_text(str(dead.pid))

    def racer(role: str, first: int) -> subprocess.Popen[str]:
        argv = [str(tmp_path), role, str(dead.pid), str(first)]
        return subprocess.Popen(
            [sys.executable, "-c", RACER, *argv],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=child_env(),
        )  # fmt: skip

    first = racer("first", 0)
    second = racer("second", first.pid)
    try:
        assert first.stdout is not None and second.stdout is not None
        results = [first.stdout.readline().strip(), second.stdout.readline().strip()]
        assert results[0] == "WON", results
        assert results[1].startswith("LOST Another run"), results
        assert (tmp_path / "run.lock").read_text() == str(first.pid)
    finally:
        for child in (first, second):
            child.communicate(timeout=120)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["second-saw-the-stale-lock"]


def test_an_interrupted_takeover_names_the_file_to_delete(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "run.lock").write_text(str(dead.pid))
    claim = tmp_path / f"run.lock.stale-{dead.pid}"
    claim.write_text(str(dead.pid))  # its claimant died between claiming and replacing
    with pytest.raises(SaekitError) as err, RunLock(tmp_path):
        pass
    assert f"delete {claim}, then rerun" in str(err.value)
    claim.unlink()  # as advised
    with RunLock(tmp_path):
        assert (tmp_path / "run.lock").read_text() == str(os.getpid())
    assert list(tmp_path.iterdir()) == []


def test_run_lock_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_link(src: object, dst: object) -> None:
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(checkpoint.os, "link", no_link)
    (tmp_path / "run.lock").write_text(str(os.getppid()))  # a live process holds it
    with pytest.raises(SaekitError, match="Another run"), RunLock(tmp_path):
        pass
    (tmp_path / "run.lock").unlink()
    with RunLock(tmp_path):
        assert (tmp_path / "run.lock").read_text() == str(os.getpid())
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_files_follow_the_umask(trained, train_cfg, make_trainer) -> None:
    trainer = make_trainer(TOPK, train_cfg(checkpoint_every=10))
    trainer.resume()
    old = os.umask(0o002)
    try:
        trainer.checkpoint()
    finally:
        os.umask(old)
    ckpt = trained / "checkpoints/step-00000040"
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in ckpt.iterdir()} == dict.fromkeys(
        ["00-topk-h0.safetensors", "meta.json", "trainer_state.pt"], 0o664
    )
    assert stat.S_IMODE(ckpt.stat().st_mode) == 0o775

"""Faults: SIGKILL mid-run or mid-checkpoint, truncated files, a full disk, two runs on one
directory. Each ends in the same weights as an uninterrupted run, or in one clear error."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from cached_runs import exported, make_cache, max_abs_diff, start_stalled, write_recipe
from synthetic_stream import synthetic_stream

from saekit.activations.cache import ActivationCache, CacheConfig, write_cache
from saekit.cli import main
from saekit.errors import SaekitError
from saekit.train.checkpoint import load_checkpoint

SAES = [
    {"method": "topk", "d_sae": 64, "k": 4},
    {"method": "batchtopk", "d_sae": 64, "k": 4},
    {"method": "relu", "d_sae": 64, "relu": {"target_l0": 6.0}, "hook": "h1"},
]
SETTINGS = {"total_tokens": 256 * 20, "checkpoint_every": 5, "dead_window_tokens": 1280}
"""20 steps, checkpoints at 5, 10, 15, 20; latents dead after 5 steps so AuxK and the clocks
matter, and the relu controller starts at step 5."""


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cache(tmp_path_factory.mktemp("faults") / "cache", {"h0": 16, "h1": 16})


@pytest.fixture(scope="module")
def uninterrupted(cache: Path) -> dict[str, dict[str, torch.Tensor]]:
    out = cache.parent / "straight"
    assert (
        main(["train", str(write_recipe(out.with_suffix(".yaml"), cache, out, SAES, **SETTINGS))])
        == 0
    )
    return exported(out)


def kill_9(child: subprocess.Popen[str]) -> None:
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL


def one_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("saekit:")]
    assert len(err) == 1, err
    return err[0]


def test_kill_9_then_resume_matches_an_uninterrupted_run(cache, uninterrupted, tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", cache, tmp_path / "run", SAES, **SETTINGS)
    child, _ = start_stalled(["stall-batch", "13", "train", str(recipe)])  # checkpoint at 10
    try:
        # While it runs, a second run on its directory is refused, with or without --resume.
        assert main(["train", str(recipe)]) == 2
        assert "holds this run already; pass --resume" in one_error(capsys)
        assert main(["train", str(recipe), "--resume"]) == 2
        assert f"Another run (pid {child.pid}) is writing" in one_error(capsys)
    finally:
        kill_9(child)
    assert (tmp_path / "run/checkpoints/latest").read_text() == "step-00000010\n"
    assert main(["train", str(recipe), "--resume"]) == 0  # the dead pid's lock is stale
    diff = max_abs_diff(uninterrupted, exported(tmp_path / "run"))
    print(f"kill -9 at step 13, resumed from 10: max |Δw| = {diff:.3g}")
    assert diff <= 1e-6


def test_kill_during_a_checkpoint_write_keeps_the_previous_one(
    cache, uninterrupted, tmp_path
) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", cache, tmp_path / "run", SAES, **SETTINGS)
    kill_9(start_stalled(["stall-state-write", "10", "train", str(recipe)])[0])  # torn state
    root = tmp_path / "run/checkpoints"
    assert (root / "step-00000010.partial").is_dir() and not (root / "step-00000010").exists()
    assert (root / "latest").read_text() == "step-00000005\n"
    assert load_checkpoint(root)[1]["step"] == 5
    assert main(["train", str(recipe), "--resume"]) == 0
    assert not (root / "step-00000010.partial").exists()
    diff = max_abs_diff(uninterrupted, exported(tmp_path / "run"))
    print(f"kill -9 inside checkpoint 10, resumed from 5: max |Δw| = {diff:.3g}")
    assert diff <= 1e-6


def test_a_truncated_checkpoint_is_one_clear_error(cache, tmp_path, capsys) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", cache, tmp_path / "run", SAES[:1], **SETTINGS)
    assert main(["train", str(recipe)]) == 0
    state = tmp_path / "run/checkpoints/step-00000020/trainer_state.pt"
    state.write_bytes(state.read_bytes()[:500])
    assert main(["train", str(recipe), "--resume"]) == 2
    line = one_error(capsys)
    assert "step-00000020 is unreadable or truncated" in line and "Delete it" in line


def test_a_truncated_cache_shard_is_one_clear_error(tmp_path, capsys) -> None:
    cache = make_cache(tmp_path / "cache", {"h0": 16}, n_tokens=4096)
    shard = cache / "h0/shard_00001.bin"
    shard.write_bytes(shard.read_bytes()[:1000])
    recipe = write_recipe(tmp_path / "r.yaml", cache, tmp_path / "run", SAES[:1], **SETTINGS)
    assert main(["train", str(recipe)]) == 2
    assert "shard_00001.bin is truncated or padded (1000 bytes" in one_error(capsys)
    assert not (tmp_path / "run").exists()


class FullDisk:
    """A file whose writes stop at `room` bytes with ENOSPC, as a full file system does."""

    def __init__(self, fh: Any, room: int) -> None:
        self.fh, self.room = fh, room

    def write(self, data: bytes) -> int:
        self.fh.write(data[: self.room])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fh, name)

    def __enter__(self) -> FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.fh.close()


def build_cache(out: Path) -> Path:
    stream = synthetic_stream({"h0": 16}, batch_size=256)
    cfg = CacheConfig(output_dir=str(out), n_tokens=2048, shard_tokens=512)
    return write_cache(stream, cfg, {"synthetic": ["h0"]})


def assert_no_valid_looking_shard(out: Path, complete: int) -> None:
    assert sorted(p.name for p in (out / "h0").iterdir()) == [
        f"shard_{i:05d}.bin" for i in range(complete)
    ]  # the failed shard is gone, no .partial left
    assert not (out / "manifest.json").exists()
    with pytest.raises(SaekitError, match="no manifest.json"):
        ActivationCache(out)


def test_a_full_disk_while_caching_is_a_clear_error(tmp_path, monkeypatch) -> None:
    real_open = Path.open

    def open_(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        fh = real_open(self, mode, *args, **kwargs)
        return FullDisk(fh, 3000) if self.name == "shard_00002.partial" else fh

    monkeypatch.setattr(Path, "open", open_)
    with pytest.raises(SaekitError, match="The disk is full: writing shard_00002.bin") as err:
        build_cache(tmp_path / "cache")
    assert "rerun `saekit cache`" in str(err.value)
    assert_no_valid_looking_shard(tmp_path / "cache", complete=2)


def test_a_full_tmpfs_while_caching_is_a_clear_error(tmp_path) -> None:
    mount = tmp_path / "small"
    mount.mkdir()
    # 80 KiB: two 32 KiB shards (512 rows × 16 × fp32) fit, the third does not.
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=80k", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        with pytest.raises(SaekitError, match="The disk is full"):
            build_cache(mount / "cache")
        assert_no_valid_looking_shard(mount / "cache", complete=2)
    finally:
        subprocess.run(["umount", str(mount)], check=True)

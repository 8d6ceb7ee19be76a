"""Faults: SIGKILL mid-run or mid-checkpoint, truncated files, a full disk, two runs on one
directory. Each ends in the same weights as an uninterrupted run, or in one clear error."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from cached_runs import exported, make_cache, max_abs_diff, start_stalled, write_recipe
from safetensors.torch import load_file
from synthetic_stream import synthetic_rows, synthetic_stream

from saekit.activations.cache import ActivationCache, CacheConfig, write_cache
from saekit.activations.cached_stream import CachedActivationStream
from saekit.activations.tensors import TensorStream
from saekit.cli import main
from saekit.errors import SaekitError
from saekit.train.checkpoint import load_checkpoint

SAES = [
    {"method": "topk", "d_sae": 64, "k": 4},
    {"method": "batchtopk", "d_sae": 64, "k": 4},
    {"method": "relu", "d_sae": 64, "relu": {"target_l0": 6.0}, "hook": "h1"},
    {"method": "jumprelu", "d_sae": 64, "jumprelu": {"target_l0": 3.0}, "hook": "h1"},
    {"method": "matryoshka", "d_sae": 64, "k": 4},
    {"method": "mp", "d_sae": 64, "k": 4, "mp": {"dropout": 0.25, "revival_coefficient": 0.01}},
]
"""Every gradient-trained method. MP's dropout draws from the torch RNG each step, so a resume
that restored the RNG state wrongly would bar other atoms."""
SETTINGS = {"total_tokens": 256 * 20, "checkpoint_every": 5, "dead_window_tokens": 1280}
"""20 steps, checkpoints at 5, 10, 15, 20; latents dead after 5 steps so AuxK, MP's revival
term and the clocks matter, and the relu/jumprelu controllers start at step 5."""
SNMF = [
    {"method": "snmf", "d_sae": 4, "snmf": {"sparsity": 0.25, "max_iter": 30}},
    {"method": "snmf", "d_sae": 4, "snmf": {"sparsity": 0.25, "stream_passes": 4}},
]
"""Full-batch and streaming SNMF on the first 20 batches (a streaming pass reads 20 batches)."""
Weights = dict[str, dict[str, torch.Tensor]]


@pytest.fixture(scope="module")
def one_thread():
    """Every run of this module on one thread, as the killed children run: float sums are
    bit-reproducible only at a fixed thread count. (Module fixtures set up before the root
    conftest's per-test one.)"""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cache(tmp_path_factory.mktemp("faults") / "cache", {"h0": 16, "h1": 16})


def saved(run_dir: Path) -> Weights:
    """Every exported tensor: weights, and the firing densities the dead-latent counts give."""
    out = exported(run_dir)
    for name, tensors in out.items():
        density = run_dir / "saes" / name / "sparsity.safetensors"
        if density.is_file():
            tensors.update({f"sparsity/{k}": v for k, v in load_file(str(density)).items()})
    return out


def train_straight(cache: Path, name: str, saes: list[dict[str, Any]]) -> Weights:
    out = cache.parent / name
    recipe = write_recipe(out.with_suffix(".yaml"), cache, out, saes, **SETTINGS)
    assert main(["train", str(recipe)]) == 0
    return saved(out)


@pytest.fixture(scope="module")
def uninterrupted(cache: Path, one_thread: None) -> Weights:
    return train_straight(cache, "straight", SAES)


def assert_bit_identical(a: Weights, b: Weights) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].keys() == b[name].keys(), name
        for key, tensor in a[name].items():
            assert torch.equal(tensor, b[name][key]), (name, key, max_abs_diff(a, b))


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
        assert "holds this run already (training); pass --resume" in one_error(capsys)
        assert main(["train", str(recipe), "--resume"]) == 2
        assert f"Another run (pid {child.pid}) is writing" in one_error(capsys)
    finally:
        kill_9(child)
    assert (tmp_path / "run/checkpoints/latest").read_text() == "step-00000010\n"
    assert run_status(tmp_path / "run")["status"] == "training"  # as the killed run left it
    # The next command that finds the dead run's lock records it, and says so.
    assert main(["train", str(recipe)]) == 2
    assert "holds this run already (interrupted); pass --resume" in one_error(capsys)
    assert run_status(tmp_path / "run")["status"] == "interrupted"
    assert main(["train", str(recipe), "--resume"]) == 0  # the dead pid's lock is stale
    assert run_status(tmp_path / "run")["status"] == "done"
    assert_bit_identical(uninterrupted, saved(tmp_path / "run"))


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
    assert_bit_identical(uninterrupted, saved(tmp_path / "run"))


def test_kill_9_during_snmf_then_resume_matches_an_uninterrupted_run(cache, one_thread, tmp_path):
    straight = train_straight(cache, "snmf-straight", SNMF)
    recipe = write_recipe(tmp_path / "r.yaml", cache, tmp_path / "run", SNMF, **SETTINGS)
    # 20 batches fill the full-batch matrix, then the streaming fit reads 20 per pass: batch 50
    # is in its third pass.
    kill_9(start_stalled(["stall-batch", "50", "train", str(recipe)])[0])
    assert main(["train", str(recipe), "--resume"]) == 0
    assert_bit_identical(straight, saved(tmp_path / "run"))


@pytest.mark.parametrize("fault", ["truncated", "deleted as once advised"])
def test_resume_falls_back_past_an_unreadable_newest_checkpoint(
    cache, uninterrupted, tmp_path, capsys, fault
) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", cache, tmp_path / "run", SAES, **SETTINGS)
    assert main(["train", str(recipe)]) == 0
    root = tmp_path / "run/checkpoints"
    newest = root / "step-00000020"
    if fault == "truncated":
        (newest / "trainer_state.pt").write_bytes((newest / "trainer_state.pt").read_bytes()[:500])
    else:
        shutil.rmtree(newest)  # `latest` still names it
    capsys.readouterr()
    assert main(["train", str(recipe), "--resume"]) == 0
    err = capsys.readouterr().err
    if fault == "truncated":
        assert "saekit: warning: step-00000020 is unreadable or truncated" in err
        assert "resuming from step-00000015" in err
    assert_bit_identical(uninterrupted, saved(tmp_path / "run"))
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000015", "step-00000020"]


def test_no_readable_checkpoint_names_a_command_that_works(
    cache, uninterrupted, tmp_path, capsys
) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", cache, tmp_path / "run", SAES, **SETTINGS)
    assert main(["train", str(recipe)]) == 0
    root = tmp_path / "run/checkpoints"
    for step in (15, 20):
        (root / f"step-{step:08d}/meta.json").write_text("{")
    capsys.readouterr()
    assert main(["train", str(recipe), "--resume"]) == 2
    line = one_error(capsys)
    assert "step-00000020" in line and "step-00000015" in line
    assert f"delete {root} and rerun with --resume" in line
    shutil.rmtree(root)  # as advised: the run starts over from step 0
    assert main(["train", str(recipe), "--resume"]) == 0
    assert_bit_identical(uninterrupted, saved(tmp_path / "run"))


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


def assert_nothing_left(out: Path) -> None:
    """The unfinished cache was removed whole: no directory, no temp dir, nothing to misread."""
    assert list(out.parent.iterdir()) == []
    with pytest.raises(SaekitError, match="no manifest.json"):
        ActivationCache(out)


def test_a_full_disk_while_caching_is_a_clear_error(tmp_path, monkeypatch) -> None:
    real_open = Path.open

    def open_(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        fh = real_open(self, mode, *args, **kwargs)
        return FullDisk(fh, 3000) if self.name == "shard_00002.partial" else fh

    monkeypatch.setattr(Path, "open", open_)
    out = tmp_path / "caches" / "cache"
    with pytest.raises(SaekitError, match="The disk is full: writing shard_00002.bin") as err:
        build_cache(out)
    assert "nothing in" in str(err.value) and "rerun `saekit cache RECIPE`" in str(err.value)
    assert_nothing_left(out)
    monkeypatch.undo()  # space freed, as advised: the rerun builds the cache
    assert ActivationCache(build_cache(out)).rows == 2048


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
        assert_nothing_left(mount / "cache")
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def nan_source(bad: list[int]) -> TensorStream:
    """Synthetic rows with NaN in rows `bad` of batch 3 (a source gone wrong), served in order."""
    rows = synthetic_rows({"h0": 16}, 256 * 40, draw_seed=0)
    rows["h0"][[3 * 256 + i for i in bad], 2] = float("nan")
    return TensorStream(rows, batch_size=256, shuffle=False, check_finite=False)


def nan_cache(out: Path, bad: list[int]) -> CacheConfig:
    cfg = CacheConfig(output_dir=str(out), n_tokens=256 * 40, shard_tokens=2048)
    write_cache(nan_source(bad), cfg, {"synthetic": ["h0"]})
    return cfg


def test_nan_rows_in_a_cache_are_skipped_like_the_live_streams(tmp_path, capsys) -> None:
    out = tmp_path / "cache"
    nan_cache(out, [7, 100])
    assert int(ActivationCache(out).read("h0", 0, 256 * 40).isnan().any(dim=1).sum()) == 2
    # 2 of 10,240 tokens (0.02%) is under stream.max_nonfinite_fraction (0.1%): skipped.
    recipe = write_recipe(tmp_path / "r.yaml", out, tmp_path / "run", SAES[:1], **SETTINGS)
    assert main(["train", str(recipe)]) == 0, capsys.readouterr().err
    weights = exported(tmp_path / "run")["00-topk-h0"]
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_train_reads_cache_verify(tmp_path, capsys) -> None:
    cache = make_cache(tmp_path / "cache", {"h0": 16}, n_tokens=4096)
    shard = cache / "h0/shard_00001.bin"
    data = bytearray(shard.read_bytes())
    data[400] ^= 0x01  # the lowest mantissa bit of one value: same size, other checksum
    shard.write_bytes(bytes(data))
    recipe = write_recipe(tmp_path / "r.yaml", cache, tmp_path / "run", SAES[:1], **SETTINGS)
    assert main(["train", str(recipe)]) == 2
    assert "shard_00001.bin is corrupt (sha256 mismatch)" in one_error(capsys)
    assert main(["train", str(recipe), "--cache.verify", "false"]) == 0


def run_status(run: Path) -> dict[str, Any]:
    return dict(json.loads((run / "run.json").read_text()))


def test_a_failed_run_records_why_and_resumes_once_fixed(tmp_path, capsys) -> None:
    cfg = nan_cache(tmp_path / "cache", list(range(0, 256, 4)))  # 64 of 10,240 tokens: 0.6%
    recipe = write_recipe(tmp_path / "r.yaml", tmp_path / "cache", tmp_path / "run", SAES[:1])
    assert main(["train", str(recipe)]) == 2
    line = one_error(capsys)
    assert "64 of 10240 tokens had NaN/inf" in line
    status = run_status(tmp_path / "run")
    assert status["status"] == "failed" and line == f"saekit: error: {status['error']}"
    # The advice: rebuild the cache (what `saekit cache RECIPE --cache.overwrite true` does, here
    # from the repaired synthetic source), then resume.
    repaired = synthetic_stream({"h0": 16}, n_tokens=256 * 40)
    write_cache(repaired, replace(cfg, overwrite=True), {"synthetic": ["h0"]})
    assert main(["train", str(recipe), "--resume"]) == 0
    assert run_status(tmp_path / "run")["status"] == "done"


def test_ctrl_c_records_interrupted_and_resumes_exactly(
    cache, uninterrupted, tmp_path, monkeypatch, capsys
) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", cache, tmp_path / "run", SAES, **SETTINGS)
    served = CachedActivationStream.next_batch
    calls = [0]

    def next_batch(self: CachedActivationStream) -> dict[str, torch.Tensor]:
        calls[0] += 1
        if calls[0] == 13:
            raise KeyboardInterrupt
        return served(self)

    monkeypatch.setattr(CachedActivationStream, "next_batch", next_batch)
    assert main(["train", str(recipe)]) == 130
    status = run_status(tmp_path / "run")
    assert status["status"] == "interrupted" and status["step"] == 12
    assert "--resume" in status["error"]
    monkeypatch.undo()
    assert main(["train", str(recipe), "--resume"]) == 0
    assert run_status(tmp_path / "run")["status"] == "done"
    assert_bit_identical(uninterrupted, saved(tmp_path / "run"))

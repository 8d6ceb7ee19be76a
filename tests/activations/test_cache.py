"""Activation cache: bit-exact round trips, shards, verification, reuse and rebuilds."""

from __future__ import annotations

import os
import re
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from cache_rows import HOOKS, PROVENANCE, bits, build, in_order, snapshot, source_rows
from torch import Tensor

from saekit.activations.cache import ActivationCache, CacheConfig, write_cache
from saekit.activations.stream import ActivationStream, StreamConfig
from saekit.activations.tensors import TensorStream
from saekit.errors import SaekitError


# ---- round trip ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_round_trip_is_bit_exact_across_shards(tmp_path, dtype):
    torch_dtype = getattr(torch, dtype)
    rows = source_rows(100, torch_dtype)
    cfg = CacheConfig(output_dir=str(tmp_path / "c"), n_tokens=100, shard_tokens=32, dtype=dtype)
    out = write_cache(in_order(rows, batch_size=24), cfg, PROVENANCE)
    cache = ActivationCache(out)
    assert cache.rows == 100 and cache.dtype == dtype
    for h in HOOKS:
        info = cache.manifest["hooks"][h]
        assert [s["rows"] for s in info["shards"]] == [32, 32, 32, 4]
        assert info["d_in"] == rows[h].shape[1]
        got = cache.read(h, 0, 100)
        assert got.dtype == torch_dtype
        assert torch.equal(bits(got), bits(rows[h])), h
        # A read spanning three shards.
        assert torch.equal(bits(cache.read(h, 20, 50)), bits(rows[h][20:70]))
    assert (out / "model.layers.1.mlp.down_proj__in" / "shard_00003.bin").is_file()


def test_storage_dtype_converts_once(tmp_path):
    rows = source_rows(40, torch.float32)
    cfg = CacheConfig(output_dir=str(tmp_path / "c"), n_tokens=40, shard_tokens=16, dtype="float16")
    cache = ActivationCache(write_cache(in_order(rows, batch_size=7), cfg, PROVENANCE))
    for h in HOOKS:
        assert torch.equal(bits(cache.read(h, 0, 40)), bits(rows[h].half()))


def test_live_stream_rows_are_cached_as_served(tmp_path, tiny, windows):
    hooks = (tiny.resid[0], tiny.mlp_hidden)
    cfg = StreamConfig(hooks=hooks, batch_size=30, buffer_sequences=4, model_batch_size=2)
    out = write_cache(
        ActivationStream(tiny.hooked, windows, cfg),
        CacheConfig(output_dir=str(tmp_path / "c"), n_tokens=100, shard_tokens=64),
        PROVENANCE,
    )
    replay = ActivationStream(tiny.hooked, windows, cfg)
    served = [replay.next_batch() for _ in range(4)]
    cache = ActivationCache(out)
    for h in hooks:
        assert torch.equal(cache.read(h, 0, 100), torch.cat([b[h] for b in served])[:100])


def test_config_validation():
    with pytest.raises(SaekitError, match="cache.dtype must be one of"):
        CacheConfig(dtype="int8")
    with pytest.raises(SaekitError, match="≥ 1"):
        CacheConfig(n_tokens=0)


# ---- refusing to overwrite -------------------------------------------------------------------
@pytest.mark.parametrize(
    "change",
    [{"provenance": {"model": "other"}}, {"n_tokens": 64}, {"dtype": "float16"}],
    ids=["provenance", "n_tokens", "dtype"],
)
def test_a_different_cache_is_never_overwritten(tmp_path, change):
    out = build(tmp_path)
    before = snapshot(out)
    with pytest.raises(SaekitError, match="already holds a different activation cache.*output_dir"):
        build(tmp_path, **{"n_tokens": 100, "dtype": "float32", **change})
    assert snapshot(out) == before


def test_the_same_cache_is_reused_untouched(tmp_path):
    out = build(tmp_path)
    before = snapshot(out)
    stream = in_order(source_rows(100, torch.float32), batch_size=24)
    cfg = CacheConfig(output_dir=str(out), n_tokens=100, shard_tokens=32)
    assert write_cache(stream, cfg, PROVENANCE) == out
    assert stream.n_tokens_served == 0
    assert snapshot(out) == before


# ---- verification errors ---------------------------------------------------------------------
REBUILD = "rebuild the cache: `saekit cache RECIPE --cache.overwrite true`"
"""The advice that ends every damaged-cache message."""


def test_corrupt_shard_is_reported(tmp_path):
    out = build(tmp_path)
    shard = out / "blocks.0.hook_resid_post" / "shard_00001.bin"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(
        SaekitError,
        match=r"shard_00001.bin is corrupt \(sha256 mismatch\); rebuild the cache: `saekit",
    ):
        ActivationCache(out)
    ActivationCache(out, verify=False)  # sizes still agree: opening unverified works


def test_truncated_shard_is_reported_even_unverified(tmp_path):
    out = build(tmp_path)
    shard = out / "blocks.0.hook_resid_post" / "shard_00002.bin"
    shard.write_bytes(shard.read_bytes()[:-4])
    with pytest.raises(SaekitError, match="shard_00002.bin is truncated.*rebuild the cache"):
        ActivationCache(out, verify=False)


def test_missing_shard_is_reported(tmp_path):
    out = build(tmp_path)
    (out / "blocks.0.hook_resid_post" / "shard_00000.bin").unlink()
    with pytest.raises(SaekitError, match="shard_00000.bin of hook .* is missing"):
        ActivationCache(out)


def test_missing_manifest_is_an_unfinished_cache(tmp_path):
    out = build(tmp_path)
    (out / "manifest.json").unlink()
    with pytest.raises(SaekitError, match="not an activation cache.*saekit cache RECIPE"):
        ActivationCache(out)


def test_corrupt_manifest_is_reported(tmp_path):
    out = build(tmp_path)
    (out / "manifest.json").write_text('{"dtype": ')
    with pytest.raises(SaekitError, match="corrupt \\(not a manifest\\); " + re.escape(REBUILD)):
        ActivationCache(out)


# ---- reuse only after verifying; --cache.overwrite rebuilds --------------------------------
def damage(out: Path, how: str) -> None:
    """Break a cache the ways a disk or a person does."""
    shard = out / "blocks.0.hook_resid_post" / "shard_00001.bin"
    if how == "flipped bit":
        data = bytearray(shard.read_bytes())
        data[100] ^= 0x01
        shard.write_bytes(bytes(data))
    elif how == "truncated shard":
        shard.write_bytes(shard.read_bytes()[:-4])
    elif how == "missing shard":
        shard.unlink()
    else:
        (out / "manifest.json").write_text('{"dtype": ')


def rebuild_cfg(out: Path, **kw: Any) -> CacheConfig:
    return CacheConfig(output_dir=str(out), n_tokens=100, shard_tokens=32, **kw)


@pytest.mark.parametrize("how", ["flipped bit", "truncated shard", "missing shard", "bad manifest"])
def test_a_damaged_cache_is_not_reused_and_overwrite_rebuilds_it(tmp_path, how):
    out = build(tmp_path)
    damage(out, how)
    before = snapshot(out)
    stream = in_order(source_rows(100, torch.float32), batch_size=24)
    with pytest.raises(SaekitError) as err:
        write_cache(stream, rebuild_cfg(out), PROVENANCE)
    assert REBUILD in str(err.value) and "\n" not in str(err.value)
    assert snapshot(out) == before and stream.n_tokens_served == 0
    # Following the advice: the rebuild replaces it with a cache that verifies.
    assert write_cache(stream, rebuild_cfg(out, overwrite=True), PROVENANCE) == out
    cache = ActivationCache(out)
    assert torch.equal(
        bits(cache.read(HOOKS[0], 0, 100)), bits(source_rows(100, torch.float32)[HOOKS[0]])
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # no temp dirs left


def test_overwrite_replaces_a_different_cache(tmp_path):
    out = build(tmp_path)
    with pytest.raises(SaekitError, match="different activation cache.*--cache.overwrite true"):
        build(tmp_path, n_tokens=64)
    cfg = CacheConfig(output_dir=str(out), n_tokens=64, shard_tokens=32, overwrite=True)
    write_cache(in_order(source_rows(64, torch.float32), batch_size=24), cfg, PROVENANCE)
    assert ActivationCache(out).rows == 64


def failing_stream(rows: dict[str, Tensor], batch_size: int, fail_at: int) -> TensorStream:
    """`in_order(rows)`, raising on batch `fail_at` (a model crash, Ctrl-C, a full disk ...)."""
    stream = in_order(rows, batch_size)
    serve = stream.next_batch

    def next_batch() -> dict[str, Tensor]:
        if stream.n_tokens_served >= fail_at * batch_size:
            raise KeyboardInterrupt
        return serve()

    stream.next_batch = next_batch  # type: ignore[method-assign]
    return stream


def test_a_rebuild_that_fails_midway_keeps_the_old_cache(tmp_path):
    out = build(tmp_path, n_tokens=100)
    before = snapshot(out)
    stream = failing_stream(source_rows(100, torch.float32), batch_size=24, fail_at=3)
    with pytest.raises(KeyboardInterrupt):
        write_cache(stream, rebuild_cfg(out, overwrite=True), PROVENANCE)
    assert stream.n_tokens_served == 72  # two shards of the new cache were written, then lost
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]
    ActivationCache(out)  # still verifies


def test_an_unfinished_cache_is_rebuilt_without_overwrite(tmp_path):
    out = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):  # nothing reaches the output directory
        write_cache(
            failing_stream(source_rows(100, torch.float32), 24, 3), rebuild_cfg(out), PROVENANCE
        )
    assert not out.exists() and list(tmp_path.iterdir()) == []
    # An unfinished cache left by an older saekit (shards but no manifest) is replaced.
    build(tmp_path)
    (out / "manifest.json").unlink()
    with pytest.raises(SaekitError, match="no manifest.json.*saekit cache RECIPE"):
        ActivationCache(out)
    write_cache(in_order(source_rows(100, torch.float32), 24), rebuild_cfg(out), PROVENANCE)
    assert ActivationCache(out).rows == 100


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_directory_with_other_files_is_never_replaced(tmp_path, overwrite):
    out = tmp_path / "cache"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SaekitError, match="notes.txt.*not part of an activation cache.*output_dir"):
        write_cache(
            in_order(source_rows(100, torch.float32), 24),
            rebuild_cfg(out, overwrite=overwrite),
            PROVENANCE,
        )
    assert snapshot(out) == {
        "notes.txt": ((out / "notes.txt").read_bytes(), (out / "notes.txt").stat().st_mtime_ns)
    }


def test_write_cache_refuses_a_dtype_that_overflows(tmp_path):
    rows = source_rows(100, torch.float32, specials=False)
    rows[HOOKS[1]][70, 3] = 1e5  # finite in fp32 and bf16, inf in fp16 (max 65504)
    cfg = CacheConfig(output_dir=str(tmp_path / "c"), n_tokens=100, shard_tokens=32)
    with pytest.raises(SaekitError) as err:
        write_cache(in_order(rows, batch_size=24), replace(cfg, dtype="float16"), PROVENANCE)
    message = str(err.value)
    assert "cache.dtype=float16 turns 1 activation" in message and "65504" in message
    assert "--cache.dtype bfloat16" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing left behind
    # Following the advice: bfloat16 holds it.
    out = write_cache(in_order(rows, batch_size=24), replace(cfg, dtype="bfloat16"), PROVENANCE)
    got = ActivationCache(out).read(HOOKS[1], 0, 100)
    assert torch.isfinite(got).all() and float(got[70, 3]) == pytest.approx(1e5, rel=1e-2)


def test_cache_files_follow_the_umask(tmp_path):
    old = os.umask(0o002)
    try:
        out = build(tmp_path)
    finally:
        os.umask(old)
    modes = {stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_file()}
    dirs = {stat.S_IMODE(p.stat().st_mode) for p in [out, *out.iterdir()] if p.is_dir()}
    assert modes == {0o664} and dirs == {0o775}

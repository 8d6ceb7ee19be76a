"""Activation cache: bit-exact round trips, shards, verification errors, cached stream restore."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from saekit.activations import open_stream
from saekit.activations.cache import ActivationCache, CacheConfig, write_cache
from saekit.activations.cached_stream import CachedActivationStream
from saekit.activations.stream import ActivationStream, BaseStream, StreamConfig
from saekit.data.text import DataConfig
from saekit.errors import SaekitError

HOOKS = ("blocks.0.hook_resid_post", "model.layers.1.mlp.down_proj:in")
PROVENANCE = {"model": "tiny", "data": "synthetic"}
INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


class ListStream(BaseStream):
    """Serves fixed rows in order, `batch_size` at a time, looping."""

    def __init__(self, rows: dict[str, Tensor], batch_size: int) -> None:
        self.rows = rows
        self.batch_size = batch_size
        self.d_in = {h: x.shape[1] for h, x in rows.items()}
        self.norm_factors = {}
        self.n_tokens_served = 0

    def next_batch(self) -> dict[str, Tensor]:
        n = next(iter(self.rows.values())).shape[0]
        idx = torch.arange(self.n_tokens_served, self.n_tokens_served + self.batch_size) % n
        self.n_tokens_served += self.batch_size
        return {h: x[idx] for h, x in self.rows.items()}


def source_rows(n: int, dtype: torch.dtype, specials: bool = True) -> dict[str, Tensor]:
    """Random rows per hook; with `specials`, values whose bits are easy to lose (-0, inf, tiny)."""
    gen = torch.Generator().manual_seed(0)
    out = {}
    for i, h in enumerate(HOOKS):
        x = torch.randn(n, 8 + 4 * i, generator=gen) * 3
        if specials:
            x[0, :4] = torch.tensor([-0.0, float("inf"), -float("inf"), 1e-40])
        out[h] = x.to(dtype)
    return out


def bits(x: Tensor) -> Tensor:
    return x.view(INT_VIEW[x.dtype])


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def build(
    tmp_path: Path, n_tokens: int = 100, dtype: str = "float32", specials: bool = True, **kw: Any
) -> Path:
    rows = source_rows(n_tokens, getattr(torch, dtype), specials)
    cfg = CacheConfig(
        output_dir=str(tmp_path / "cache"), n_tokens=n_tokens, shard_tokens=32, dtype=dtype
    )
    return write_cache(ListStream(rows, batch_size=24), cfg, kw.get("provenance", PROVENANCE))


# ---- round trip ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_round_trip_is_bit_exact_across_shards(tmp_path, dtype):
    torch_dtype = getattr(torch, dtype)
    rows = source_rows(100, torch_dtype)
    cfg = CacheConfig(output_dir=str(tmp_path / "c"), n_tokens=100, shard_tokens=32, dtype=dtype)
    out = write_cache(ListStream(rows, batch_size=24), cfg, PROVENANCE)
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
    cache = ActivationCache(write_cache(ListStream(rows, batch_size=7), cfg, PROVENANCE))
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
    stream = ListStream(source_rows(100, torch.float32), batch_size=24)
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
    stream = ListStream(source_rows(100, torch.float32), batch_size=24)
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
    write_cache(ListStream(source_rows(64, torch.float32), batch_size=24), cfg, PROVENANCE)
    assert ActivationCache(out).rows == 64


class FailingStream(ListStream):
    """Raises on batch `fail_at` (a model crash, Ctrl-C, a full disk ...)."""

    def __init__(self, rows: dict[str, Tensor], batch_size: int, fail_at: int) -> None:
        super().__init__(rows, batch_size)
        self.fail_at = fail_at

    def next_batch(self) -> dict[str, Tensor]:
        if self.n_tokens_served >= self.fail_at * self.batch_size:
            raise KeyboardInterrupt
        return super().next_batch()


def test_a_rebuild_that_fails_midway_keeps_the_old_cache(tmp_path):
    out = build(tmp_path, n_tokens=100)
    before = snapshot(out)
    stream = FailingStream(source_rows(100, torch.float32), batch_size=24, fail_at=3)
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
            FailingStream(source_rows(100, torch.float32), 24, 3), rebuild_cfg(out), PROVENANCE
        )
    assert not out.exists() and list(tmp_path.iterdir()) == []
    # An unfinished cache left by an older saekit (shards but no manifest) is replaced.
    build(tmp_path)
    (out / "manifest.json").unlink()
    with pytest.raises(SaekitError, match="no manifest.json.*saekit cache RECIPE"):
        ActivationCache(out)
    write_cache(ListStream(source_rows(100, torch.float32), 24), rebuild_cfg(out), PROVENANCE)
    assert ActivationCache(out).rows == 100


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_directory_with_other_files_is_never_replaced(tmp_path, overwrite):
    out = tmp_path / "cache"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SaekitError, match="notes.txt.*not part of an activation cache.*output_dir"):
        write_cache(
            ListStream(source_rows(100, torch.float32), 24),
            rebuild_cfg(out, overwrite=overwrite),
            PROVENANCE,
        )
    assert snapshot(out) == {
        "notes.txt": ((out / "notes.txt").read_bytes(), (out / "notes.txt").stat().st_mtime_ns)
    }


# ---- cached stream ---------------------------------------------------------------------------
def cached_cfg(out: Path, **overrides: Any) -> StreamConfig:
    # buffer_sequences=1 → 127-row shuffle chunks: a 400-row cache has chunks 127/127/127/19.
    return StreamConfig(
        hooks=HOOKS, cache_dir=str(out), buffer_sequences=1, **{"batch_size": 50, **overrides}
    )


def test_cached_stream_serves_each_row_once_per_epoch(tmp_path, sort_rows):
    rows = source_rows(400, torch.float32, specials=False)
    out = write_cache(
        ListStream(rows, batch_size=100),
        CacheConfig(output_dir=str(tmp_path / "c"), n_tokens=400, shard_tokens=150),
        PROVENANCE,
    )
    stream = CachedActivationStream(cached_cfg(out))
    epoch = [stream.next_batch() for _ in range(8)]
    for h in HOOKS:
        served = torch.cat([b[h] for b in epoch])
        assert torch.equal(sort_rows(served), sort_rows(rows[h]))
        assert not torch.equal(served, rows[h])
        # Shuffled within 127-row chunks: the first chunk's rows come first.
        assert torch.equal(sort_rows(served[:127]), sort_rows(rows[h][:127]))
    # Row i is the same token in every hook.
    index = {tuple(r.tolist()): i for i, r in enumerate(rows[HOOKS[0]])}
    perm = torch.tensor([index[tuple(r.tolist())] for b in epoch for r in b[HOOKS[0]]])
    assert torch.equal(torch.cat([b[HOOKS[1]] for b in epoch]), rows[HOOKS[1]][perm])
    # The next epoch starts over with the same order.
    assert torch.equal(stream.next_batch()[HOOKS[0]], epoch[0][HOOKS[0]])


@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "normalized"])
@pytest.mark.parametrize("n_before", [0, 1, 3, 5, 9])
def test_cached_stream_restore_continues_exactly(tmp_path, n_before, normalize):
    rows = source_rows(400, torch.float32, specials=False)  # finite norm factors
    out = write_cache(
        ListStream(rows, batch_size=100),
        CacheConfig(output_dir=str(tmp_path / "c"), n_tokens=400, shard_tokens=150),
        PROVENANCE,
    )
    cfg = cached_cfg(out, batch_size=45, normalize=normalize)
    a = CachedActivationStream(cfg)
    for _ in range(n_before):
        a.next_batch()
    state = json.loads(json.dumps(a.state_dict()))
    want = [a.next_batch() for _ in range(5)]
    b = CachedActivationStream(cfg)
    b.load_state_dict(state)
    got = [b.next_batch() for _ in range(5)]
    a.load_state_dict(state)  # rewinding a used stream drops the chunk it holds
    again = [a.next_batch() for _ in range(5)]
    for w, g, r in zip(want, got, again, strict=True):
        for h in HOOKS:
            assert torch.equal(w[h], g[h]) and torch.equal(w[h], r[h]), h
    assert b.state_dict() == a.state_dict()


def test_cached_stream_normalizes_on_the_first_chunk(tmp_path):
    rows = source_rows(400, torch.float32, specials=False)
    out = write_cache(
        ListStream(rows, batch_size=100),
        CacheConfig(output_dir=str(tmp_path / "c"), n_tokens=400, shard_tokens=400),
        PROVENANCE,
    )
    stream = CachedActivationStream(cached_cfg(out, batch_size=127, normalize=True))
    batch = stream.next_batch()
    for h in HOOKS:
        d = rows[h].shape[1]
        assert stream.norm_factors[h] == pytest.approx(
            math.sqrt(d) / float(rows[h][:127].norm(dim=1).mean()), rel=1e-6
        )
        assert float(batch[h].norm(dim=1).mean()) == pytest.approx(math.sqrt(d), rel=1e-5)


def test_cached_stream_serves_bfloat16_cache_as_the_stream_dtype(tmp_path, sort_rows):
    out = build(tmp_path, dtype="bfloat16", specials=False)
    stream = CachedActivationStream(cached_cfg(out, batch_size=100, dtype="float32"))
    batch = stream.next_batch()
    assert batch[HOOKS[0]].dtype == torch.float32
    cache = ActivationCache(out)
    assert torch.equal(sort_rows(batch[HOOKS[1]]), sort_rows(cache.read(HOOKS[1], 0, 100).float()))


def test_cached_stream_with_an_unknown_hook_lists_the_cached_ones(tmp_path):
    out = build(tmp_path)
    cfg = StreamConfig(hooks=("blocks.9.hook_resid_post",), cache_dir=str(out))
    with pytest.raises(SaekitError, match="has no hook 'blocks.9.hook_resid_post'; it holds"):
        CachedActivationStream(cfg)


def test_open_stream_reads_the_cache_when_cache_dir_is_set(tmp_path):
    out = build(tmp_path)
    stream = open_stream(None, DataConfig(), cached_cfg(out, batch_size=10))
    assert isinstance(stream, CachedActivationStream)
    assert stream.d_in == {HOOKS[0]: 8, HOOKS[1]: 12}
    assert stream.next_batch()[HOOKS[1]].shape == (10, 12)


# ---- non-finite rows -------------------------------------------------------------------------
def poison(out: Path, hook: str, rows: list[int], value: float = float("nan")) -> None:
    """Set `rows` of `hook` to `value` in place and re-checksum: a cache whose source held NaN
    (it verifies), not a damaged one."""
    manifest = json.loads((out / "manifest.json").read_text())
    info, start = manifest["hooks"][hook], 0
    for shard in info["shards"]:
        path = out / info["dir"] / shard["file"]
        arr = np.memmap(path, dtype=np.float32, mode="r+", shape=(shard["rows"], info["d_in"]))
        for row in rows:
            if start <= row < start + shard["rows"]:
                arr[row - start, 1] = value
        arr.flush()
        del arr
        shard["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        start += shard["rows"]
    (out / "manifest.json").write_text(json.dumps(manifest))


def finite_cache(tmp_path: Path, n: int = 400) -> tuple[Path, dict[str, Tensor]]:
    rows = source_rows(n, torch.float32, specials=False)
    out = write_cache(
        ListStream(rows, batch_size=100),
        CacheConfig(output_dir=str(tmp_path / "c"), n_tokens=n, shard_tokens=150),
        PROVENANCE,
    )
    return out, rows


BAD_ROWS = {HOOKS[0]: [5, 200], HOOKS[1]: [300]}
"""Three tokens with a NaN/inf in one hook: each is dropped from every hook."""


def poisoned_cache(tmp_path: Path) -> tuple[Path, dict[str, Tensor], Tensor]:
    out, rows = finite_cache(tmp_path)
    poison(out, HOOKS[0], BAD_ROWS[HOOKS[0]])
    poison(out, HOOKS[1], BAD_ROWS[HOOKS[1]], float("inf"))
    keep = torch.ones(400, dtype=torch.bool)
    keep[[r for bad in BAD_ROWS.values() for r in bad]] = False
    return out, rows, keep


def test_cached_stream_skips_nonfinite_rows_in_every_hook(tmp_path, sort_rows):
    out, rows, keep = poisoned_cache(tmp_path)
    stream = CachedActivationStream(cached_cfg(out, max_nonfinite_fraction=0.01))
    # 397 finite rows: 7 batches of 50 serve 350 of them, each row at most once.
    epoch = [stream.next_batch() for _ in range(7)]
    for h in HOOKS:
        served = torch.cat([b[h] for b in epoch])
        assert served.shape == (350, rows[h].shape[1]) and torch.isfinite(served).all()
        assert len(torch.unique(served, dim=0)) == 350
        assert set(map(tuple, served.tolist())) <= set(map(tuple, rows[h][keep].tolist()))
    # Row i is still the same token in every hook.
    index = {tuple(r.tolist()): i for i, r in enumerate(rows[HOOKS[0]])}
    perm = torch.tensor([index[tuple(r.tolist())] for b in epoch for r in b[HOOKS[0]]])
    assert torch.equal(torch.cat([b[HOOKS[1]] for b in epoch]), rows[HOOKS[1]][perm])
    assert stream.n_nonfinite == 3 and stream.n_tokens_seen == 381  # 3 of 4 chunks entered


def test_cached_stream_with_nonfinite_rows_restores_exactly(tmp_path):
    out, _, _ = poisoned_cache(tmp_path)
    cfg = cached_cfg(out, batch_size=45, normalize=True, max_nonfinite_fraction=0.01)
    a = CachedActivationStream(cfg)
    for _ in range(4):
        a.next_batch()
    state = json.loads(json.dumps(a.state_dict()))
    want = [a.next_batch() for _ in range(6)]  # across the epoch's end and the bad rows
    b = CachedActivationStream(cfg)
    b.load_state_dict(state)
    got = [b.next_batch() for _ in range(6)]
    for w, g in zip(want, got, strict=True):
        for h in HOOKS:
            assert torch.equal(w[h], g[h]), h
    assert b.state_dict() == a.state_dict()
    assert all(math.isfinite(f) for f in a.norm_factors.values())


def test_cached_stream_ranks_split_the_finite_rows_of_one_batch(tmp_path):
    out, _, _ = poisoned_cache(tmp_path)
    whole = CachedActivationStream(cached_cfg(out, batch_size=60, max_nonfinite_fraction=0.01))
    ranks = []
    for rank in range(2):
        stream = CachedActivationStream(cached_cfg(out, batch_size=30, max_nonfinite_fraction=0.01))
        stream.shard(rank, 2)
        ranks.append(stream)
    for _ in range(8):
        joined = [r.next_batch() for r in ranks]
        batch = whole.next_batch()
        for h in HOOKS:
            assert torch.equal(torch.cat([j[h] for j in joined]), batch[h])


def test_too_many_nonfinite_cached_rows_abort_with_the_live_streams_limit(tmp_path):
    out, _ = finite_cache(tmp_path)
    poison(out, HOOKS[0], [0, 1, 2])
    # 3 bad rows in the first 127-row chunk; the limit counts at least 1,000 tokens: 0.1% → 1.
    stream = CachedActivationStream(cached_cfg(out))
    with pytest.raises(SaekitError) as err:
        stream.next_batch()
    message = str(err.value)
    assert message.startswith("3 of 127 tokens had NaN/inf activations (limit 0.10%)")
    assert "--cache.overwrite true" in message and "stream.max_nonfinite_fraction" in message
    # Following the advice: a limit above 3 of 1,000 tokens serves the finite rows.
    stream = CachedActivationStream(cached_cfg(out, max_nonfinite_fraction=0.004))
    assert all(torch.isfinite(x).all() for x in stream.next_batch().values())


def test_write_cache_refuses_a_dtype_that_overflows(tmp_path):
    rows = source_rows(100, torch.float32, specials=False)
    rows[HOOKS[1]][70, 3] = 1e5  # finite in fp32 and bf16, inf in fp16 (max 65504)
    cfg = CacheConfig(output_dir=str(tmp_path / "c"), n_tokens=100, shard_tokens=32)
    with pytest.raises(SaekitError) as err:
        write_cache(ListStream(rows, batch_size=24), replace(cfg, dtype="float16"), PROVENANCE)
    message = str(err.value)
    assert "cache.dtype=float16 turns 1 activation" in message and "65504" in message
    assert "--cache.dtype bfloat16" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing left behind
    # Following the advice: bfloat16 holds it.
    out = write_cache(ListStream(rows, batch_size=24), replace(cfg, dtype="bfloat16"), PROVENANCE)
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

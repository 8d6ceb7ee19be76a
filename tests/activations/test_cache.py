"""Activation cache: bit-exact round trips, shards, verification errors, cached stream restore."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from saekit.activations import open_stream
from saekit.activations.cache import (
    ActivationCache,
    CacheConfig,
    CachedActivationStream,
    write_cache,
)
from saekit.activations.stream import ActivationStream, StreamConfig
from saekit.activations.tensors import TensorStream
from saekit.data.text import DataConfig
from saekit.errors import SaekitError

HOOKS = ("blocks.0.hook_resid_post", "model.layers.1.mlp.down_proj:in")
PROVENANCE = {"model": "tiny", "data": "synthetic"}
INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def in_order(rows: dict[str, Tensor], batch_size: int) -> TensorStream:
    """The rows in order, `batch_size` at a time, looping; special values served as they are."""
    return TensorStream(rows, batch_size, shuffle=False, check_finite=False)


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


def build(tmp_path: Path, n_tokens: int = 100, dtype: str = "float32", **kw: Any) -> Path:
    rows = source_rows(n_tokens, getattr(torch, dtype))
    cfg = CacheConfig(
        output_dir=str(tmp_path / "cache"), n_tokens=n_tokens, shard_tokens=32, dtype=dtype
    )
    return write_cache(in_order(rows, batch_size=24), cfg, kw.get("provenance", PROVENANCE))


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
def test_corrupt_shard_is_reported(tmp_path):
    out = build(tmp_path)
    shard = out / "blocks.0.hook_resid_post" / "shard_00001.bin"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(
        SaekitError, match=r"shard_00001.bin is corrupt \(sha256 mismatch\); rebuild"
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
    with pytest.raises(SaekitError, match="corrupt \\(not JSON\\); rebuild"):
        ActivationCache(out)


# ---- cached stream ---------------------------------------------------------------------------
def cached_cfg(out: Path, **overrides: Any) -> StreamConfig:
    # buffer_sequences=1 → 127-row shuffle chunks: a 400-row cache has chunks 127/127/127/19.
    return StreamConfig(
        hooks=HOOKS, cache_dir=str(out), buffer_sequences=1, **{"batch_size": 50, **overrides}
    )


def test_cached_stream_serves_each_row_once_per_epoch(tmp_path, sort_rows):
    rows = source_rows(400, torch.float32)
    out = write_cache(
        in_order(rows, batch_size=100),
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
        in_order(rows, batch_size=100),
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
        in_order(rows, batch_size=100),
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
    out = build(tmp_path, dtype="bfloat16")
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

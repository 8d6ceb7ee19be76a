"""The cached stream: shuffled chunks, exact restore, data-parallel slices, NaN/inf rows."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cache_rows import HOOKS, PROVENANCE, build, in_order, source_rows
from torch import Tensor

from saekit.activations import open_stream
from saekit.activations.cache import ActivationCache, CacheConfig, write_cache
from saekit.activations.cached_stream import CachedActivationStream
from saekit.activations.stream import StreamConfig
from saekit.data.text import DataConfig
from saekit.errors import SaekitError


def cached_cfg(out: Path, **overrides: Any) -> StreamConfig:
    # buffer_sequences=1 → 127-row shuffle chunks: a 400-row cache has chunks 127/127/127/19.
    return StreamConfig(
        hooks=HOOKS, cache_dir=str(out), buffer_sequences=1, **{"batch_size": 50, **overrides}
    )


def test_cached_stream_serves_each_row_once_per_epoch(tmp_path, sort_rows):
    rows = source_rows(400, torch.float32, specials=False)
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
    # The next epoch serves every row again, each chunk in a fresh order, the same for any
    # stream of this seed.
    second = [stream.next_batch() for _ in range(8)]
    again = CachedActivationStream(cached_cfg(out))
    for _ in range(8):
        again.next_batch()
    second_again = [again.next_batch() for _ in range(8)]
    for h in HOOKS:
        served = torch.cat([b[h] for b in second])
        assert torch.equal(sort_rows(served), sort_rows(rows[h]))
        assert torch.equal(sort_rows(served[:127]), sort_rows(rows[h][:127]))
        assert not torch.equal(served, torch.cat([b[h] for b in epoch]))
        assert torch.equal(served, torch.cat([b[h] for b in second_again]))


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
def poison(
    out: Path, hook: str, rows: list[int], value: float = float("nan"), col: int = 1
) -> None:
    """Set `rows` of `hook` to `value` in place and re-checksum: a cache whose source held NaN
    (it verifies), not a damaged one."""
    manifest = json.loads((out / "manifest.json").read_text())
    info, start = manifest["hooks"][hook], 0
    for shard in info["shards"]:
        path = out / info["dir"] / shard["file"]
        arr = np.memmap(path, dtype=np.float32, mode="r+", shape=(shard["rows"], info["d_in"]))
        for row in rows:
            if start <= row < start + shard["rows"]:
                arr[row - start, col] = value
        arr.flush()
        del arr
        shard["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        start += shard["rows"]
    (out / "manifest.json").write_text(json.dumps(manifest))


def finite_cache(tmp_path: Path, n: int = 400) -> tuple[Path, dict[str, Tensor]]:
    rows = source_rows(n, torch.float32, specials=False)
    out = write_cache(
        in_order(rows, batch_size=100),
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


def test_a_cache_of_nonfinite_rows_only_is_an_error_not_a_hang(tmp_path):
    out, _ = finite_cache(tmp_path)
    poison(out, HOOKS[1], list(range(400)))
    stream = CachedActivationStream(cached_cfg(out, max_nonfinite_fraction=1.0))
    with pytest.raises(SaekitError, match="Every row of the cache .* holds NaN/inf"):
        stream.next_batch()


def test_a_row_whose_sum_overflows_is_finite_and_kept(tmp_path):
    out, _ = finite_cache(tmp_path)
    for col in (1, 2):  # two finite 3e38 in one row: its fp32 sum is inf
        poison(out, HOOKS[0], [3], 3e38, col)
    stream = CachedActivationStream(cached_cfg(out, batch_size=127))
    assert float(stream.next_batch()[HOOKS[0]].max()) == pytest.approx(3e38, rel=1e-6)
    assert stream.n_nonfinite == 0

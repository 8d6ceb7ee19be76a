"""torchrun training: data-parallel and hook-parallel runs of 2 gloo processes end with the
dictionaries of a 1-process run with the same global batch (hook-parallel bit for bit); a
data-parallel run killed and resumed ends bit for bit on the uninterrupted one."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from cached_runs import (
    dump_rank_state,
    exported,
    free_port,
    make_cache,
    max_abs_diff,
    run,
    start_stalled,
    torchrun_cmd,
    write_recipe,
)

from saekit.activations.cached_stream import CachedActivationStream
from saekit.activations.stream import StreamConfig
from saekit.cli import main
from saekit.errors import SaekitError
from saekit.train.checkpoint import load_checkpoint
from saekit.train.distributed import Distributed, RankWindows, check_world, shard_stream

SAES = [
    {"method": "topk", "d_sae": 64, "k": 4},
    {"method": "relu", "d_sae": 64, "relu": {"target_l0": 6.0}, "hook": "h1"},
    {"method": "jumprelu", "d_sae": 64},
]
"""One dictionary per loss family whose terms are means over rows; relu's L0 controller reads
the global firing counts, so it diverges if ranks disagree on them."""
SETTINGS = {"lr_decay_fraction": 0.0, "checkpoint_every": 10}
"""No LR decay, so a 20-step run resumed to 30 steps follows the 30-step schedule."""
TOLERANCE = 1e-6
"""Max |Δweight| allowed between data-parallel and 1-process runs: float32 sums of 2×128 rows
vs 256 rows differ by rounding only (measured 1.19e-7)."""


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cache(tmp_path_factory.mktemp("dist") / "cache", {"h0": 16, "h1": 16})


@pytest.fixture(scope="module")
def one_process(cache: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Exported weights of the 30-step single-process run (global batch 256), on one thread
    as the torchrun ranks run (float sums are reproducible at a fixed thread count only)."""
    out = cache.parent / "one"
    recipe = write_recipe(cache.parent / "one.yaml", cache, out, SAES, **SETTINGS)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", str(recipe)]) == 0
    finally:
        torch.set_num_threads(previous)
    return exported(out)


def assert_bit_identical(
    a: dict[str, dict[str, torch.Tensor]], b: dict[str, dict[str, torch.Tensor]]
):
    assert a.keys() == b.keys()
    for name in a:
        for key, tensor in a[name].items():
            assert torch.equal(tensor, b[name][key]), (name, key, max_abs_diff(a, b))


def test_cached_stream_shards_concatenate_to_the_one_process_batch(cache: Path) -> None:
    cfg = StreamConfig(hooks=("h0", "h1"), batch_size=96, cache_dir=str(cache), buffer_sequences=8)
    whole = CachedActivationStream(cfg)  # chunks of 8·127 = 1,016 rows: batches straddle them
    ranks = []
    for rank in range(3):
        stream = CachedActivationStream(StreamConfig(**{**cfg.__dict__, "batch_size": 32}))
        stream.shard(rank, 3)
        ranks.append(stream)
    for _ in range(40):
        expected = whole.next_batch()
        parts = [s.next_batch() for s in ranks]
        for hook in ("h0", "h1"):
            assert torch.equal(torch.cat([p[hook] for p in parts]), expected[hook])
    assert ranks[2].state_dict()["position"] == whole.state_dict()["position"]


def test_rank_windows_split_the_buffers_disjointly() -> None:
    class Windows:
        def get(self, start: int, count: int) -> torch.Tensor:
            return torch.arange(start, start + count)

    size = 4  # windows per buffer
    seen = [RankWindows(Windows(), r, 3, size) for r in range(3)]
    got = [torch.cat([w.get(b * size, size) for b in range(5)]) for w in seen]
    assert sorted(torch.cat(got).tolist()) == list(range(3 * 5 * size))
    assert got[1][:size].tolist() == [4, 5, 6, 7]  # rank 1's first buffer is buffer 1


def test_live_stream_ranks_read_disjoint_buffers(tiny, windows, sort_rows) -> None:
    from saekit.activations.stream import ActivationStream

    hook = tiny.resid[0]

    def stream(rank: int | None, batch_size: int) -> ActivationStream:
        cfg = StreamConfig(hooks=(hook,), buffer_sequences=4, batch_size=batch_size)
        out = ActivationStream(tiny.hooked, windows, cfg)
        if rank is not None:
            shard_stream(out, Distributed(rank, 2))  # no process group needed to shard
        return out

    def first_buffer(rank: int) -> torch.Tensor:
        probe = stream(rank, 1)
        probe.next_batch()
        return stream(rank, probe.rows_left_in_buffer() + 1).next_batch()[hook]

    ranks = [first_buffer(0), first_buffer(1)]
    # Rank 0 reads windows 0-3 and rank 1 windows 4-7: one process's buffers 0 and 1.
    both = stream(None, sum(len(r) for r in ranks)).next_batch()[hook]
    assert torch.equal(sort_rows(torch.cat(ranks)), sort_rows(both))
    assert not torch.equal(sort_rows(ranks[0]), sort_rows(ranks[1][: len(ranks[0])]))


def test_impossible_splits_are_refused_with_the_fix() -> None:
    with pytest.raises(SaekitError, match="batch_size 100 is the global batch.*multiple of 3"):
        check_world("data", 3, 100, 1)
    with pytest.raises(SaekitError, match="at most 2 processes or use train.parallel=data"):
        check_world("hooks", 4, 256, 2)
    check_world("hooks", 1, 100, 1)  # a single process accepts anything
    assert Distributed().data_world == 1 and Distributed().owns(5)


def test_torchrun_data_parallel_survives_kill_9_and_equals_one_process(cache, one_process):
    straight = cache.parent / "data-straight"
    recipe = write_recipe(cache.parent / "data-straight.yaml", cache, straight, SAES, **SETTINGS)
    done = run(torchrun_cmd(2, "train", str(recipe)))
    assert done.returncode == 0, done.stderr[-3000:]
    out = cache.parent / "data"
    recipe = write_recipe(cache.parent / "data.yaml", cache, out, SAES, **SETTINGS)
    # Rank 0 hangs after 13 steps (checkpoint at 10); kill -9 it: torchrun ends rank 1.
    launcher, rank0 = start_stalled(["stall-batch", "13", "train", str(recipe)], n_proc=2)
    os.kill(rank0, signal.SIGKILL)
    assert launcher.wait(timeout=120) != 0
    weights, state, meta = load_checkpoint(out / "checkpoints")
    assert (meta["world"], meta["parallel"], state["step"]) == (2, "data", 10)
    assert [r["stream"]["position"] for r in state["ranks"]] == [256 * 10] * 2
    resumed = run(torchrun_cmd(2, "train", str(recipe), "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("trained 3 dictionaries on 7,680 tokens") == 1  # rank 0 reports
    assert_bit_identical(exported(straight), exported(out))  # the resume itself is exact
    diff = max_abs_diff(one_process, exported(out))
    print(f"data-parallel (2 gloo ranks, killed at 13, resumed from 10) vs 1 process: {diff:.3g}")
    assert diff <= TOLERANCE


def test_data_parallel_ranks_hold_identical_state(cache, tmp_path) -> None:
    # Every family, BatchTopK/Matryoshka included (their θ is averaged), a controller, AuxK.
    saes = [
        *SAES,
        {"method": "batchtopk", "d_sae": 64, "k": 4},
        {"method": "matryoshka", "d_sae": 64, "k": 4, "matryoshka": {"widths": [16, 64]}},
    ]
    recipe = write_recipe(
        tmp_path / "r.yaml", cache, tmp_path / "run", saes, total_tokens=256 * 20,
        dead_window_tokens=1280,
    )  # fmt: skip
    args = (2, free_port(), str(recipe), str(tmp_path))
    torch.multiprocessing.spawn(dump_rank_state, args=args, nprocs=2, join=True)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0.keys() == rank1.keys() and len(rank0) == 5
    for name, state in rank0.items():
        for key, value in state.items():
            assert torch.equal(value, rank1[name][key]), (name, key)  # bit for bit
    assert float(rank0["03-batchtopk-h0"]["threshold"]) > 0


def test_torchrun_hooks_parallel_equals_one_process(cache, one_process) -> None:
    out = cache.parent / "hooks"
    recipe = write_recipe(
        cache.parent / "hooks.yaml", cache, out, SAES, parallel="hooks", **SETTINGS
    )
    done = run(torchrun_cmd(2, "train", str(recipe)))
    assert done.returncode == 0, done.stderr[-3000:]
    weights, state, meta = load_checkpoint(out / "checkpoints")
    assert sorted(weights) == sorted(one_process) == sorted(meta["slots"])  # gathered on rank 0
    assert_bit_identical(one_process, exported(out))  # each rank runs its own as 1 process
    # Resuming with another process count is refused before anything is touched.
    assert main(["train", str(recipe), "--resume"]) == 2

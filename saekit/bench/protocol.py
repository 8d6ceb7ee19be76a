"""The one timing protocol every `saekit bench` with an anchor follows.

- Same untimed warm-up per side (`warmup` calls each, in the first round's order).
- Rounds: every side runs once per round; the order rotates every round (round r starts with
  side r mod n), so with two sides it alternates and no side always runs first or last.
- Figures are medians over ≥ `MIN_ROUNDS` rounds, never sums or means.
- Every side counts the same tokens per call (`run_rounds` refuses sides that differ).
- Threads: `at_threads` repeats a measurement at 1 thread and at all threads; each setting
  keeps its own medians and ratio.
- Real work: a side may name the tensors its step updates; `did_work` says whether they
  changed from before the warm-up to after the last round (a step that silently does nothing
  would otherwise look fast).

A bench builds `Side`s, calls `run_rounds` (inside `at_threads`), and writes `protocol_block`
into its JSON next to each anchor's configuration and its differences from saekit's step:

    sides = {"saekit": Side(step, tokens=4096, state=lambda: list(sae.parameters())), ...}
    per_threads = at_threads(lambda: run_rounds(sides, rounds=5), thread_counts())
    result["protocol"] = protocol_block(rounds=5, warmup=1, threads=..., tokens=4096,
                                        anchors={"sparsify": {...}})
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

MIN_ROUNDS = 5
"""The fewest timed rounds a published figure may rest on."""


@dataclass(frozen=True)
class Side:
    """One contestant of a bench: a callable that does one unit of timed work."""

    step: Callable[[], object]
    """One timed call: a training step, a forward over the round's windows, one kernel."""
    tokens: int
    """Tokens one call processes; every side of a comparison counts the same tokens."""
    state: Callable[[], Sequence[torch.Tensor]] | None = None
    """The tensors the step updates (parameters, buffers); None for stateless work (a GEMM)."""
    before_round: Callable[[int], object] | None = None
    """Untimed setup before each call, given the round index (-1 for warm-up calls), e.g.
    rewind a stream to the round's windows."""


def thread_counts() -> list[int]:
    """[1, all]: one thread, then every thread torch would use (deduplicated)."""
    n = max(1, torch.get_num_threads(), len(os.sched_getaffinity(0)))
    return sorted({1, n})


def _snapshot(side: Side) -> list[torch.Tensor] | None:
    return None if side.state is None else [t.detach().clone() for t in side.state()]


def _changed(before: list[torch.Tensor] | None, side: Side) -> bool | None:
    if before is None or side.state is None:
        return None
    after = side.state()
    return any(not torch.equal(b, a.detach()) for b, a in zip(before, after))


def run_rounds(
    sides: Mapping[str, Side], rounds: int = MIN_ROUNDS, warmup: int = 1, desc: str = "bench"
) -> dict[str, Any]:
    """Warm up every side alike, then time `rounds` rounds in rotating order.

    Returns medians (ms), every round's times, tokens/s from the medians, `did_work` per side
    and the order each round ran in. A progress bar (`desc`) counts calls on stderr."""
    if rounds < 1 or warmup < 0:
        raise ValueError(f"rounds must be ≥ 1 and warmup ≥ 0, got {rounds}, {warmup}")
    names = list(sides)
    tokens = {sides[n].tokens for n in names}
    if len(tokens) != 1:
        counts = {n: sides[n].tokens for n in names}
        raise ValueError(f"sides count different tokens per call: {counts}")
    before = {n: _snapshot(sides[n]) for n in names}
    bar = tqdm(total=(warmup + rounds) * len(names), desc=desc, unit="call", leave=False)
    for _ in range(warmup):
        for n in names:
            side = sides[n]
            if side.before_round is not None:
                side.before_round(-1)
            side.step()
            bar.update()
    times: dict[str, list[float]] = {n: [] for n in names}
    order: list[list[str]] = []
    for r in range(rounds):
        this = names[r % len(names) :] + names[: r % len(names)]
        order.append(this)
        for n in this:
            side = sides[n]
            if side.before_round is not None:
                side.before_round(r)
            t0 = time.perf_counter()
            side.step()
            times[n].append(time.perf_counter() - t0)
            bar.update()
    bar.close()
    (n_tokens,) = tokens
    median_ms = {n: 1e3 * statistics.median(t) for n, t in times.items()}
    return {
        "threads": torch.get_num_threads(),
        "rounds": rounds,
        "tokens_per_call": n_tokens,
        "median_ms": median_ms,
        "rounds_ms": {n: [round(1e3 * t, 2) for t in ts] for n, ts in times.items()},
        "tokens_per_s": {n: n_tokens / (ms / 1e3) for n, ms in median_ms.items()},
        "did_work": {n: _changed(before[n], sides[n]) for n in names},
        "order": order,
    }


def at_threads(
    measure: Callable[[int], dict[str, Any]], threads: Sequence[int]
) -> list[dict[str, Any]]:
    """`measure(threads)` under each torch thread count in turn; restores the count after."""
    previous = torch.get_num_threads()
    out = []
    try:
        for n in threads:
            torch.set_num_threads(n)
            out.append({"threads": n, **measure(n)})
    finally:
        torch.set_num_threads(previous)
    return out


def fastest(tokens_per_s: Mapping[str, float], peers: Sequence[str]) -> str:
    """The peer with the most tokens/s: `ratio_vs_anchor` is always against it."""
    return max(peers, key=lambda p: tokens_per_s[p])


def versus_peers(
    tokens_per_s: Mapping[str, float], ours: str, peers: Sequence[str]
) -> dict[str, Any]:
    """`ours` against every peer and against the fastest one (the anchor)."""
    best = fastest(tokens_per_s, peers)
    return {
        "fastest_peer": best,
        "ratio_vs_anchor": tokens_per_s[ours] / tokens_per_s[best],
        "ratio_vs_peer": {p: tokens_per_s[ours] / tokens_per_s[p] for p in peers},
    }


def protocol_block(
    *,
    rounds: int,
    warmup: int,
    threads: Sequence[int],
    tokens: int,
    anchors: Mapping[str, Any],
    load_before: Sequence[float] | None = None,
) -> dict[str, Any]:
    """What every anchored bench's JSON says about how it was measured.

    `anchors` maps each anchor to its configuration and its differences from saekit's work
    (optimizer, loss normalization, AuxK, decoder normalization, ...), in the bench's words.
    `load_before` is `os.getloadavg()` taken when the bench started."""
    return {
        "warmup_calls_per_side": warmup,
        "rounds": rounds,
        "statistic": "median over rounds",
        "order": "rotates every round: round r starts with side r mod n (alternates for two)",
        "tokens_per_call": tokens,
        "same_tokens_every_side": True,
        "threads": list(threads),
        "load_average_before": list(load_before) if load_before is not None else None,
        "load_average_after": list(os.getloadavg()),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "anchors": dict(anchors),
    }

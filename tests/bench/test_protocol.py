"""The shared bench protocol: warm-up, rotating order, medians, same tokens, threads, work."""

from __future__ import annotations

import pytest
import torch

from saekit.bench import protocol
from saekit.bench.protocol import Side, at_threads, fastest, protocol_block, run_rounds


class FakeClock:
    """perf_counter that only moves when a side's step says how long it took."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_rounds_rotate_warm_up_alike_and_report_medians(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(protocol.time, "perf_counter", clock)
    calls: list[str] = []
    # Each side's durations per call (warm-up first); one outlier per side that a mean
    # (or a sum) would show and a median must not.
    durations = {
        "a": iter([9.0, 1.0, 1.0, 50.0, 1.0, 1.0]),
        "b": iter([9.0, 2.0, 2.0, 2.0, 2.0, 90.0]),
        "c": iter([9.0, 3.0, 70.0, 3.0, 3.0, 3.0]),
    }

    def step(name: str):
        def run() -> None:
            calls.append(name)
            clock.now += next(durations[name])

        return run

    sides = {n: Side(step(n), tokens=100) for n in "abc"}
    out = run_rounds(sides, rounds=5, warmup=1)
    assert calls[:3] == ["a", "b", "c"]  # one warm-up call each, untimed
    assert out["order"] == [
        ["a", "b", "c"],
        ["b", "c", "a"],
        ["c", "a", "b"],
        ["a", "b", "c"],
        ["b", "c", "a"],
    ]
    assert calls[3:] == [n for r in out["order"] for n in r]
    assert out["median_ms"] == {"a": 1000.0, "b": 2000.0, "c": 3000.0}
    assert out["rounds_ms"]["a"] == [1000.0, 1000.0, 50000.0, 1000.0, 1000.0]
    assert out["tokens_per_s"]["b"] == pytest.approx(50.0)
    assert out["did_work"] == {"a": None, "b": None, "c": None}


def test_two_sides_alternate_who_goes_first():
    seen: list[str] = []
    sides = {n: Side(lambda n=n: seen.append(n), tokens=1) for n in ("x", "y")}
    out = run_rounds(sides, rounds=6, warmup=0)
    assert [r[0] for r in out["order"]] == ["x", "y", "x", "y", "x", "y"]


def test_sides_must_count_the_same_tokens():
    sides = {"a": Side(lambda: None, tokens=4096), "b": Side(lambda: None, tokens=4064)}
    with pytest.raises(ValueError, match="different tokens"):
        run_rounds(sides)


def test_did_work_compares_state_before_warm_up_and_after_the_last_round():
    w = torch.zeros(3)
    frozen = torch.zeros(3)

    def update() -> None:
        w.add_(1.0)

    sides = {
        "works": Side(update, tokens=8, state=lambda: [w]),
        "idle": Side(lambda: frozen.clone(), tokens=8, state=lambda: [frozen]),
    }
    out = run_rounds(sides, rounds=5)
    assert out["did_work"] == {"works": True, "idle": False}
    assert torch.equal(w, torch.full((3,), 6.0))  # 1 warm-up + 5 rounds


def test_before_round_gets_the_round_index_untimed():
    rounds_seen: list[int] = []
    side = Side(lambda: None, tokens=1, before_round=rounds_seen.append)
    run_rounds({"s": side}, rounds=5, warmup=2)
    assert rounds_seen == [-1, -1, 0, 1, 2, 3, 4]


def test_at_threads_sets_and_restores_the_thread_count():
    before = torch.get_num_threads()
    out = at_threads(lambda n: {"inside": torch.get_num_threads(), "asked": n}, [1, 2])
    assert [(o["threads"], o["inside"], o["asked"]) for o in out] == [(1, 1, 1), (2, 2, 2)]
    assert torch.get_num_threads() == before


def test_thread_counts_start_at_one_and_end_at_all():
    counts = protocol.thread_counts()
    assert counts[0] == 1 and counts == sorted(set(counts))
    assert counts[-1] >= torch.get_num_threads()


def test_fastest_peer_and_protocol_block():
    assert fastest({"saekit": 9.0, "p": 2.0, "q": 3.0}, ["p", "q"]) == "q"
    block = protocol_block(
        rounds=5,
        warmup=1,
        threads=[1, 2],
        tokens=4096,
        anchors={"q": {"lr": 1}},
        load_before=[0.5, 0.4, 0.3],
    )
    assert block["rounds"] == 5 and block["warmup_calls_per_side"] == 1
    assert block["threads"] == [1, 2] and block["tokens_per_call"] == 4096
    assert block["anchors"] == {"q": {"lr": 1}} and len(block["load_average_after"]) == 3

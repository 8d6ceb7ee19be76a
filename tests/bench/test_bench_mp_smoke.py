"""`saekit bench mp` at toy size: all three sides run and the table renders (~2 s)."""

from __future__ import annotations

import pytest
import torch

from saekit.bench import BENCHES
from saekit.bench import mp as bench_mp


def test_bench_mp_runs_at_toy_size():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # toy shapes: a thread barrier costs more than the work
    try:
        result = bench_mp.run(rounds=1, d_in=32, d_sae=256, k=4, batch=64)
    finally:
        torch.set_num_threads(threads)
    assert BENCHES["mp"] == "saekit.bench.mp"
    assert set(result["step_ms"]) == set(bench_mp.SIDES)
    ms, tps = result["step_ms"], result["tokens_per_s"]
    assert result["ratio_vs_anchor"] == pytest.approx(tps["saekit_mp"] / tps["saelens_mp"])
    assert result["mp_vs_topk"] == pytest.approx(ms["saekit_mp"] / ms["saekit_topk"])
    b = result["breakdown_ms"]
    assert b["path"] in ("gram", "recompute")
    floor = b["encoder_gemm_c0"] + (
        b["gram_gemm"] if b["path"] == "gram" else (4 - 1) * b["encoder_gemm_c0"]
    )
    assert result["exact_mp_ceiling"] == pytest.approx(ms["saelens_mp"] / floor)
    assert "ratio_vs_anchor" in bench_mp.table(result)
    assert "exact_mp_ceiling" in bench_mp.table(result)

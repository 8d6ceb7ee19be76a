"""`saekit bench mp` at a toy shape: the shared protocol, both peers and saekit did real work,
every derived figure is what the medians give, and the floor's products compute W Wᵀ (~20 s)."""

from __future__ import annotations

import pytest
import torch
from test_bench_protocols import check_protocol

from saekit.bench import BENCHES, sitting
from saekit.bench import mp as bench_mp
from saekit.bench.train_anchors import Shape
from saekit.kernels import native

TOY = Shape(d_in=32, d_sae=256, k=4, batch=64)


def test_bench_mp_toy_shape():
    threads = torch.get_num_threads()
    try:
        result = bench_mp.run(threads=[1], shape=TOY)
    finally:
        torch.set_num_threads(threads)
    assert BENCHES["mp"] == "saekit.bench.mp"
    check_protocol(result, [1])
    (per,) = result["threads"]
    ms, tps = per["median_ms"], per["tokens_per_s"]
    steps = {"saekit_mp", "saelens_mp", "overcomplete_mp", "saekit_topk"}
    assert {side for side, worked in per["did_work"].items() if worked} == set(ms) - {
        "forward_backward"
    }
    assert steps <= set(ms) and {"c0_gemm", "gram_syrk", "gram_panels"} <= set(ms)
    best = max(bench_mp.PEERS, key=tps.__getitem__)
    assert per["fastest_peer"] == best
    assert per["ratio_vs_anchor"] == pytest.approx(tps["saekit_mp"] / tps[best])
    assert per["ratio_vs_saelens"] == pytest.approx(tps["saekit_mp"] / tps["saelens_mp"])
    floor = ms["c0_gemm"] + min(ms["gram_syrk"], ms["gram_panels"])
    assert per["floor_ms"]["total"] == pytest.approx(floor)
    assert per["step_vs_floor"] == pytest.approx(ms["saekit_mp"] / floor)
    assert per["exact_mp_ceiling"] == pytest.approx(ms["saelens_mp"] / floor)
    full = floor + ms["gram_read"] * TOY.batch * (TOY.k - 1) / TOY.d_sae + ms["adam_update"]
    assert per["full_floor_ms"]["total"] == pytest.approx(full)
    assert per["step_vs_full_floor"] == pytest.approx(ms["saekit_mp"] / full)
    assert per["full_floor_ceiling"] == pytest.approx(ms["saelens_mp"] / full)
    ((name, met),) = per["target_met"].items()
    assert name == ("ratio_vs_saelens" if per["exact_mp_ceiling"] >= 10 else "step_vs_floor")
    assert met == (per[name] >= 10 if name == "ratio_vs_saelens" else per[name] <= 1.3)
    parts = per["saekit_step_parts_ms"]  # the mirror is a part of the Gram build
    assert sum(parts.values()) - parts["gram_mirror"] == pytest.approx(ms["saekit_mp"])
    if native.library() is not None:
        assert parts["gram_mirror"] == ms["gram_mirror"]
        assert result["saekit"]["native_kernels"].startswith("compiled C")
    anchors = result["protocol"]["anchors"]
    assert set(anchors) == set(bench_mp.PEERS)
    assert "signed max" in anchors["overcomplete_mp"]["pursuit"]
    assert "fixed 4 steps" in anchors["saelens_mp"]["pursuit"]
    assert result["ratio_vs_anchor"] == per["ratio_vs_anchor"]
    text = bench_mp.table(result)
    assert "ratio_vs_anchor" in text and "step_vs_floor" in text and "step_vs_full_floor" in text
    ((name_cell, n, _, anchor, ratio, also, target),) = sitting._rows("mp", result)  # README
    assert (name_cell, n) == ("`mp`", "1") and anchor.startswith(best)
    assert ratio.startswith(f"{per['ratio_vs_anchor']:.3f} (")
    assert f"{per['step_vs_floor']:.3f}x the exact-MP floor" in also
    met = all(per["target_met"].values()) and per["mp_vs_topk"] <= 3
    assert target.endswith(" (met)" if met else " (**missed**)")


def test_floor_products_compute_the_gram_matrix():
    x = bench_mp.activations(seed=bench_mp.DATA_SEED, shape=TOY)
    sides = bench_mp.part_sides(x, TOY)
    W = bench_mp.MatchingPursuitSAE(
        bench_mp.SAEConfig(method="mp", d_sae=TOY.d_sae, k=TOY.k), TOY.d_in
    ).W_dec.detach()
    G = W @ W.T
    if native.library() is not None:  # the mirror alone: ssyrk's triangle into the other one
        sides["gram_syrk"].step()
        (C,) = sides["gram_syrk"].state()
        (G_mirror,) = sides["gram_mirror"].state()
        G_mirror.copy_(C)  # the lower triangle only, as ssyrk leaves it
        sides["gram_mirror"].step()
        torch.testing.assert_close(G_mirror, G)
    for name in ("gram_syrk", "gram_panels", "gram_saekit", "c0_gemm"):
        sides[name].step()
        assert sides[name].state is not None
    (C,) = sides["gram_syrk"].state()
    torch.testing.assert_close(C.tril(), G.tril())  # one triangle, S²D/2 multiply-adds
    (G_panels,) = sides["gram_saekit"].state()  # the panels' buffer, now the full build
    torch.testing.assert_close(G_panels, G)
    (c,) = sides["c0_gemm"].state()
    torch.testing.assert_close(c, x @ W.T)


def test_full_floor_sides_read_g_and_update_the_weights():
    x = bench_mp.activations(seed=bench_mp.DATA_SEED, shape=TOY)
    sides = bench_mp.part_sides(x, TOY)
    sides["gram_syrk"].step()
    (C,) = sides["gram_syrk"].state()
    sides["gram_read"].step()
    (total,) = sides["gram_read"].state()
    G = C.tril() + C.tril(-1).T
    torch.testing.assert_close(total, G.sum(), rtol=1e-4, atol=1e-3)  # all of G, read once
    (before,) = [t.clone() for t in sides["adam_update"].state()]
    sides["adam_update"].step()
    (after,) = sides["adam_update"].state()
    assert not torch.equal(before, after)

"""Every anchored bench at a toy shape follows the shared protocol and does real work.

Checked from each bench's own JSON, never from timings: the protocol block, ≥ 5 rounds per
thread count in rotating order, medians that are the medians of the recorded rounds, the same
tokens on every side, `ratio_vs_anchor` against the fastest peer recomputed here, and that
every training side changed its parameters (and every forward side produced output).
"""

from __future__ import annotations

import statistics

import pytest
import torch

from saekit.bench import kernels, protocol, snmf, stream, train
from saekit.bench.train_anchors import PEERS


def check_protocol(result: dict, threads: list[int]) -> None:
    block = result["protocol"]
    assert block["rounds"] >= protocol.MIN_ROUNDS and block["warmup_calls_per_side"] == 1
    assert block["threads"] == threads and block["same_tokens_every_side"]
    assert [t["threads"] for t in result["threads"]] == threads
    for per in result["threads"]:
        names = list(per["median_ms"])
        assert (
            per["rounds"] == block["rounds"] and per["tokens_per_call"] == block["tokens_per_call"]
        )
        for r, order in enumerate(per["order"]):
            assert order[0] == names[r % len(names)] and sorted(order) == sorted(names)
        for side, times in per["rounds_ms"].items():
            assert len(times) == block["rounds"]
            assert per["median_ms"][side] == pytest.approx(statistics.median(times), abs=0.01)
            tps = per["tokens_per_call"] / (per["median_ms"][side] / 1e3)
            assert per["tokens_per_s"][side] == pytest.approx(tps)


def test_bench_train_toy_shape():
    result = train.run(shape=train.Shape(32, 256, 4, 64), memory=False, threads=[1])
    check_protocol(result, [1])
    (per,) = result["threads"]
    tps = per["tokens_per_s"]
    timed = [p for p in PEERS if p in tps]
    assert set(timed) | set(result["errors"]) == set(PEERS)
    assert {"sparsify", "overcomplete", "saelens_dense"} <= set(timed)
    best = max(timed, key=tps.__getitem__)
    assert per["fastest_peer"] == best
    assert per["ratio_vs_anchor"] == pytest.approx(tps["saekit"] / tps[best])
    assert result["ratio_vs_anchor"] == per["ratio_vs_anchor"]
    assert per["did_work"] == {side: side != "gemm" or None for side in per["did_work"]}
    anchors = result["protocol"]["anchors"]
    assert "SignSGD" in anchors["sparsify"]["optimizer"] and "FVU" in anchors["sparsify"]["loss"]
    # saekit's label names the lr it trains at (TopK's 4x width rule), not step 0's warmed-up one
    assert f"lr {4 * 2e-4 / (256 / 2**14) ** 0.5:.2e}," in result["saekit"]["optimizer"]
    assert anchors["overcomplete"]["package"].startswith("overcomplete")
    if not torch.cuda.is_available():  # documented: SAELens' sparse mode fails on CPU
        assert result["errors"]["saelens_sparse"].startswith("NotImplementedError")
        assert "error" in anchors["saelens_sparse"]
    assert "ratio_vs_anchor" in train.table(result)


def test_bench_stream_toy_model(tl_model, tokenizer, corpus_jsonl, saekit_home):
    from saekit.data.text import DataConfig
    from saekit.models.hooks import HookedModel

    data = DataConfig(source=str(corpus_jsonl), context_size=16)
    hooked = HookedModel(tl_model, tokenizer)
    result = stream.run(
        layer=1,
        buffer_sequences=4,
        model_batch_size=2,
        threads=[1],
        n_hooks=2,
        hooked=hooked,
        data=data,
    )
    check_protocol(result, [1])
    (per,) = result["threads"]
    assert per["did_work"] == {"bare": True, "stream_1": True, "stream_n": True}
    assert result["window_tokens_per_call"] == 4 * 16 == per["tokens_per_call"]
    # BOS is masked: a stream serves fewer rows than the window tokens all sides count.
    for rows in result["rows_served_per_call"].values():
        assert rows and max(rows) < result["window_tokens_per_call"]
    assert per["ratio_vs_anchor"] == pytest.approx(
        per["tokens_per_s"]["stream_1"] / per["tokens_per_s"]["bare"]
    )
    assert result["hooks_n"] == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    assert "ratio_vs_anchor" in stream.table(result)


def test_bench_kernels_toy_shapes(monkeypatch):
    monkeypatch.setattr(kernels, "BATCH", 64)
    result = kernels.run(shapes="16x128x4,8x96x2", threads=[1])
    rounds = result["protocol"]["rounds"]
    assert rounds >= protocol.MIN_ROUNDS and result["protocol"]["threads"] == [1]
    (per,) = result["threads"]
    assert [r["d_sae"] for r in per["ops"]] == [128, 96]
    assert set(per["methods_ms"]) == set(kernels.METHODS)
    for r in per["ops"]:
        assert r["kernels"] == "torch" and set(r["speedup"]) == set(kernels.OPS)
        for op in kernels.OPS:
            for kind in ("sparse", "dense"):
                times = r["rounds_ms"][f"{op}/{kind}"]
                assert len(times) == rounds
                assert r[f"{kind}_ms"][op] == pytest.approx(statistics.median(times), abs=0.01)
            assert r["speedup"][op] == pytest.approx(r["dense_ms"][op] / r["sparse_ms"][op])
    text = kernels.table(result)
    assert "decode fwd" in text and "jumprelu" in text


def test_bench_snmf_toy_size():
    result = snmf.run(tokens=8192, passes=1, threads=[1], full_batch_tokens=4096)
    check_protocol(result, [1])
    (per,) = result["threads"]
    assert per["did_work"] == {"saekit": True, "anchor": True}
    assert per["ratio_vs_anchor"] == pytest.approx(
        per["median_ms"]["anchor"] / per["median_ms"]["saekit"]
    )
    # The same iterations from the same codes: the two solvers' features agree.
    assert per["max_rel_diff_F_vs_anchor"] < 1e-3
    assert result["stream"]["tokens"] == 8192 and result["stream"]["passes"] == 1


@pytest.mark.e2e
def test_bench_select_smollm2():
    from saekit.bench import select

    result = select.run(n_samples=2, threads=[1])
    check_protocol(result, [1])
    (per,) = result["threads"]
    assert per["tokens_per_call"] == result["samples"]
    assert per["ratio_vs_anchor"] == pytest.approx(
        per["tokens_per_s"]["mona"] / per["tokens_per_s"]["rds"]
    )
    assert result["scores_shape"]["mona"] == result["scores_shape"]["rds"]


def test_bad_kernel_shapes_name_the_format():
    from saekit.errors import SaekitError

    with pytest.raises(SaekitError, match="D_INxD_SAExK"):
        kernels.parse_shapes("576x16384")


def test_bench_cli_refuses_fewer_than_five_rounds_and_bad_threads(capsys):
    from saekit.cli import main

    assert main(["bench", "train", "--rounds", "3"]) == 2
    assert "≥ 5 rounds" in capsys.readouterr().err
    assert main(["bench", "train", "--threads", "1,x"]) == 2
    assert "expected counts like 1,2" in capsys.readouterr().err
    assert main(["bench", "synthetic", "--threads", "1"]) == 2
    assert "has no --threads option" in capsys.readouterr().err

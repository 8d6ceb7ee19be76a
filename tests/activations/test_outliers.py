"""The outlier policy (stream.outliers at stream.max_norm_multiple): which rows it finds, what
filter/clip/keep do to them, the same on the live and the cached stream, bad values refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cache_rows import HOOKS, PROVENANCE, in_order

from saekit.activations.cache import CacheConfig, write_cache
from saekit.activations.cached_stream import CachedActivationStream
from saekit.activations.stream import ActivationStream, StreamConfig, apply_outliers
from saekit.cli import main

PLANTED = {HOOKS[0]: (3, 250), HOOKS[1]: (7, 251)}
"""Rows scaled 40x in one hook only: outliers of that hook (threshold 10x the median)."""


def planted_rows(n: int = 400) -> dict[str, torch.Tensor]:
    """Gaussian rows (norms within ~2x of each other) with one 40x row per hook, and a 5x row
    (row 11, both hooks) under the threshold."""
    gen = torch.Generator().manual_seed(1)
    rows = {h: torch.randn(n, 8 + 4 * i, generator=gen) for i, h in enumerate(HOOKS)}
    for h, planted in PLANTED.items():
        for i in planted:
            rows[h][i] *= 40.0
    for h in HOOKS:
        rows[h][11] *= 5.0
    return rows


def cfg(policy: str, **kw) -> StreamConfig:
    return StreamConfig(hooks=HOOKS, max_norm_multiple=10.0, outliers=policy, **kw)  # type: ignore[arg-type]


def outlier_set() -> set[int]:
    return {i for planted in PLANTED.values() for i in planted}


def test_filter_drops_exactly_the_planted_rows_and_counts_them():
    rows = planted_rows()
    keep_N = torch.ones(400, dtype=torch.bool)
    out, kept, n = apply_outliers({h: x.clone() for h, x in rows.items()}, keep_N, cfg("filter"))
    assert n == 4
    assert set((~kept).nonzero().squeeze(1).tolist()) == outlier_set()
    for h in HOOKS:
        assert torch.equal(out[h], rows[h])  # filtering does not touch the rows


def test_filter_counts_only_rows_that_were_served():
    keep_N = torch.ones(400, dtype=torch.bool)
    keep_N[3] = False  # e.g. a special token: neither served nor counted
    _, kept, n = apply_outliers(planted_rows(), keep_N, cfg("filter"))
    assert n == 3 and not kept[3] and not kept[7]


def test_clip_scales_each_hooks_outliers_to_the_threshold_norm():
    rows = planted_rows()
    out, kept, n = apply_outliers(
        {h: x.clone() for h, x in rows.items()}, torch.ones(400, dtype=torch.bool), cfg("clip")
    )
    assert n == 4 and bool(kept.all())
    for h in HOOKS:
        limit = 10.0 * float(rows[h].norm(dim=1).median())
        for i in range(400):
            if i in PLANTED[h]:
                assert float(out[h][i].norm()) == pytest.approx(limit, rel=1e-5)
                cosine = torch.nn.functional.cosine_similarity(out[h][i], rows[h][i], dim=0)
                assert float(cosine) == pytest.approx(1.0, abs=1e-6)
            else:  # the other hook's outliers and the 5x row are left alone
                assert torch.equal(out[h][i], rows[h][i]), (h, i)


def test_keep_serves_the_rows_unchanged_and_counts_them():
    rows = planted_rows()
    out, kept, n = apply_outliers(
        {h: x.clone() for h, x in rows.items()}, torch.ones(400, dtype=torch.bool), cfg("keep")
    )
    assert n == 4 and bool(kept.all())
    assert all(torch.equal(out[h], rows[h]) for h in HOOKS)


def test_no_threshold_means_no_outliers():
    rows = planted_rows()
    _, kept, n = apply_outliers(rows, torch.ones(400, dtype=torch.bool), StreamConfig(hooks=HOOKS))
    assert n == 0 and bool(kept.all())


@pytest.mark.parametrize("policy", ["filter", "clip", "keep"])
def test_cached_stream_applies_the_policy_to_planted_rows(tmp_path, sort_rows, policy):
    rows = planted_rows()
    out = write_cache(
        in_order(rows, batch_size=100),
        CacheConfig(output_dir=str(tmp_path / "c"), n_tokens=400),
        PROVENANCE,
    )
    # One 400-row chunk (buffer_sequences 4 → up to 508 rows): the median is the whole cache's.
    served_n = 396 if policy == "filter" else 400
    stream = CachedActivationStream(
        cfg(policy, cache_dir=str(out), buffer_sequences=4, batch_size=served_n)
    )
    batch = stream.next_batch()
    assert stream.n_outliers == 4 and stream.state_dict()["n_outliers"] == 4
    expected, _, _ = apply_outliers(
        {h: x.clone() for h, x in rows.items()}, torch.ones(400, dtype=torch.bool), cfg(policy)
    )
    keep = [i for i in range(400) if policy != "filter" or i not in outlier_set()]
    for h in HOOKS:
        assert torch.equal(sort_rows(batch[h]), sort_rows(expected[h][keep])), h


@pytest.mark.parametrize("policy", ["filter", "clip", "keep"])
def test_live_and_cached_streams_agree(tmp_path, tiny, windows, sort_rows, policy):
    """A cache of one live buffer's raw rows, read back with the policy, serves what the live
    stream serves with it (the median is the same buffer's), with the same count."""
    hooks = (tiny.resid[0], tiny.resid[1])
    base = StreamConfig(hooks=hooks, buffer_sequences=4, model_batch_size=2)
    raw = ActivationStream(tiny.hooked, windows, base)._fill(0)
    n = raw[hooks[0]].shape[0]
    # The tiny random models have no 10x rows: a threshold ~10% of the rows exceed.
    ratio_N = torch.stack([x.norm(dim=1) / x.norm(dim=1).median() for x in raw.values()])
    multiple = float(ratio_N.max(dim=0).values.quantile(0.9))
    cache = write_cache(
        ActivationStream(tiny.hooked, windows, StreamConfig(**{**base.__dict__, "batch_size": n})),
        CacheConfig(output_dir=str(tmp_path / "c"), n_tokens=n),
        PROVENANCE,
    )
    policy_cfg = StreamConfig(
        **{**base.__dict__, "max_norm_multiple": multiple, "outliers": policy, "batch_size": n}
    )
    probe = ActivationStream(tiny.hooked, windows, policy_cfg)
    served = next(iter(probe._fill(0).values())).shape[0]
    assert 0 < probe.n_outliers < n // 2
    served_cfg = StreamConfig(**{**policy_cfg.__dict__, "batch_size": served})
    live = ActivationStream(tiny.hooked, windows, served_cfg)
    cached = CachedActivationStream(
        StreamConfig(**{**served_cfg.__dict__, "cache_dir": str(cache)})
    )
    a, b = live.next_batch(), cached.next_batch()
    assert live.n_outliers == cached.n_outliers == probe.n_outliers
    for h in hooks:
        assert torch.allclose(sort_rows(a[h]), sort_rows(b[h]), rtol=1e-6, atol=1e-6), h
    if policy == "filter":
        assert served == n - probe.n_outliers


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--stream.outliers", "drop", "stream.outliers: 'drop' is not one of ['filter', 'clip',"),
        ("--stream.max_norm_multiple", "0.5", "stream.max_norm_multiple must be ≥ 1"),
    ],
)
def test_an_invalid_policy_exits_2_with_one_line(tmp_path: Path, capsys, flag, value, message):
    recipe = tmp_path / "ok.yaml"
    recipe.write_text(f"train: {{output_dir: {tmp_path / 'run'}}}\n")
    assert main(["train", str(recipe), flag, value]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("saekit: error: ") and message in err[0]
    assert not (tmp_path / "run").exists()


def test_training_reports_the_outlier_count(tmp_path):
    """run.json's summary and every history record carry the count of the stream's outliers."""
    from saekit.dictionaries import SAEConfig
    from saekit.train.config import TrainConfig
    from saekit.train.trainer import Trainer

    out = write_cache(
        in_order(planted_rows(), batch_size=100),
        CacheConfig(output_dir=str(tmp_path / "c"), n_tokens=400),
        PROVENANCE,
    )
    stream = CachedActivationStream(
        cfg("clip", cache_dir=str(out), buffer_sequences=4, batch_size=100)
    )
    sae = SAEConfig(method="topk", hook=HOOKS[0], d_sae=16, k=2)
    train = TrainConfig(total_tokens=800, log_every=1, wandb_mode="disabled")
    trainer = Trainer((sae,), train, stream)
    summary = trainer.train()
    # Two epochs over the one 400-row chunk: its 4 outliers counted each time it is entered.
    assert summary["stream"] == {
        "tokens_seen": 800,
        "nonfinite_rows": 0,
        "outlier_rows": 8,
        "outlier_policy": "clip",
        "max_norm_multiple": 10.0,
    }
    assert [r["outlier_rows"] for r in trainer.history] == [4.0] * 4 + [8.0] * 4

"""`saekit bench main-job` at a toy shape: every run trains on the cache it should, counts the
outliers a hand computation over the cache finds, and the epoch run reads 1/epochs of it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from saekit.activations import ActivationCache
from saekit.bench import main_job
from saekit.cli import main


@pytest.fixture
def toy(tmp_path, saekit_home, corpus_jsonl, tiny_model_dir) -> main_job.MainJobConfig:
    return main_job.MainJobConfig(
        model=str(tiny_model_dir),
        backend="hf",
        hook="model.layers.0",
        source=str(corpus_jsonl),
        context_size=16,
        train_tokens=768,
        heldout_tokens=96,
        batch_size=64,
        d_sae=32,
        k=4,
        max_norm_multiple=1.3,  # the tiny model has no 10x rows
        ce_windows=4,
        rounds=3,
        probe_windows=4,
        out_dir=str(tmp_path / "study"),
    )


def test_bench_main_job_toy(toy, capsys):
    result = main_job.run(toy)
    runs = result["runs"]
    assert set(runs) == {"keep", "filter", "clip", "3-epochs-clip", "3-epochs-all-clip"}
    # The outliers, by hand: rows over 1.3x the median norm of the one cache-sized chunk.
    cache = ActivationCache(f"{toy.out_dir}/cache-train", verify=False)
    x_ND = cache.read(toy.hook, 0, cache.rows)
    norms = x_ND.norm(dim=1)
    outliers = int((norms > 1.3 * norms.median()).sum())
    assert outliers > 0
    steps = toy.train_tokens // toy.batch_size
    for policy in ("keep", "clip"):  # every row served once: each chunk entered once
        assert runs[policy]["stream"]["outlier_rows"] == outliers
        assert runs[policy]["steps"] == steps and runs[policy]["rows"] == cache.rows
    # Filtering serves fewer rows per pass: the stream wraps into a second epoch.
    assert runs["filter"]["stream"]["outlier_rows"] >= outliers
    epochs = runs["3-epochs-clip"]
    assert epochs["rows"] == toy.train_tokens // 3 and epochs["steps"] == steps
    assert epochs["stream"]["tokens_seen"] == steps * toy.batch_size
    longer = runs["3-epochs-all-clip"]
    assert longer["rows"] == cache.rows and longer["steps"] == 3 * steps
    assert longer["stream"]["outlier_rows"] == 3 * outliers  # each epoch counts them again
    for r in runs.values():
        assert 0 < r["fvu_inliers"] < 1.5 and 0 < r["fvu"] < 1.5
        assert r["l0_mean"] == pytest.approx(4)
        b = r["batch_fvu"]
        assert b["p05"] <= b["median"] <= b["p95"] <= b["max"]
        assert r["estimated_wall_s"] > r["train_s"]
    rates = result["throughput"]
    assert rates["live_tokens_per_s"] > 0 and rates["cached_tokens_per_s"] > 0
    table = main_job.table(result)
    assert "| 3-epochs-clip | 256 |" in table and "live stream" in table
    # Finished runs are kept: a second run reads them back.
    again = main_job.run(toy)
    assert again["runs"]["clip"]["fvu"] == runs["clip"]["fvu"]
    assert torch.get_num_threads() == result["protocol"]["threads"]


def test_bench_main_job_flag_is_checked(capsys):
    assert main(["bench", "main-job", "--study.policies", "[drop]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("saekit: error: ") and "'drop' is not one of" in err[-1]


def test_bench_main_job_pins_the_studys_warmup(toy, monkeypatch):
    """The study's runs train at its 50-step warmup and export the last iterate whatever
    TopK's defaults are, and a run at another warmup or with a weight average is kept under
    another name (so kept runs are never mixed in)."""
    seen = []
    real = main_job.Trainer

    def spy(saes, train, stream):
        seen.append((train.lr_warmup_steps, train.ema_decay))
        trainer = real(saes, train, stream)
        assert trainer.slots[0].average is None
        return trainer

    monkeypatch.setattr(main_job, "Trainer", spy)
    main_job.run(toy)
    assert seen and set(seen) == {(50, 0.0)}
    path = main_job._run_path(toy, "clip")
    assert "warmup" not in path.name and "ema" not in path.name
    other = main_job._run_path(dataclasses.replace(toy, lr_warmup_steps=10), "clip")
    assert other.name != path.name and "-warmup10" in other.name
    averaged = main_job._run_path(dataclasses.replace(toy, ema_decay=0.98), "clip")
    assert averaged.name != path.name and "-ema0.98" in averaged.name

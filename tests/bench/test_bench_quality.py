"""`saekit bench quality` at a toy shape: the whole pipeline in seconds.

Checked against references computed here, not against the bench's own arithmetic: every side
read exactly the rows a fresh cached stream serves (their digest), each saved dictionary's
held-out FVU is what `saekit.evaluate` measures on the held-out cache, the best peer and the
ratios follow from the per-run figures, and tuning picked the grid's lowest FVU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import statistics
from pathlib import Path

import pytest
import torch

import saekit
from saekit.activations import ActivationCache, CachedActivationStream, StreamConfig
from saekit.bench import quality, quality_report
from saekit.cli import main


@pytest.fixture
def toy(tmp_path, saekit_home, corpus_jsonl, tiny_model_dir) -> quality.QualityConfig:
    return quality.QualityConfig(
        model=str(tiny_model_dir),
        backend="hf",
        hook="model.layers.0",
        source=str(corpus_jsonl),
        context_size=16,
        train_tokens=1024,
        heldout_tokens=96,
        batch_size=128,
        d_sae=32,
        k=4,
        seeds=(0, 1),
        lr_multipliers=(1.0, 2.0),
        tune_tokens=1024,  # as many as the final runs: tuning runs must be kept apart
        tune_extensions=2,
        curve_points=4,
        curve_rows=64,
        ce_windows=4,
        out_dir=str(tmp_path / "quality"),
    )


def served_digest(cfg: quality.QualityConfig, tokens: int) -> str:
    cache = f"{cfg.out_dir}/cache-train"
    stream = CachedActivationStream(
        StreamConfig(hooks=(cfg.hook,), batch_size=cfg.batch_size, cache_dir=cache)
    )
    digest = hashlib.sha256()
    for _ in range(tokens // cfg.batch_size):
        digest.update(stream.next_batch()[cfg.hook].numpy().tobytes())
    return digest.hexdigest()[:16]


def test_bench_quality_toy(toy, capsys):
    result = quality.run(toy)
    # One bar over every run's training tokens ends at its (adjusted) total.
    assert "bench quality, all runs: 100%" in capsys.readouterr().err
    runs = result["runs"]
    assert set(runs) == {
        f"{side}/{config}/seed{s}"
        for side in ("saekit", "saelens", "sparsify")
        for config in ("default", "tuned")
        for s in (0, 1)
    }
    # Every side read the rows a fresh stream over the cache serves, in that order.
    expected = served_digest(toy, (toy.train_tokens // toy.batch_size) * toy.batch_size)
    assert {r["rows_digest"] for r in runs.values()} == {expected} and result["same_rows"]
    heldout = ActivationCache(f"{toy.out_dir}/cache-heldout", verify=False)
    held_ND = heldout.read(toy.hook, 0, heldout.rows)
    norm_N = held_ND.norm(dim=1)
    inliers_ND = held_ND[norm_N <= 10 * norm_N.median()]
    assert result["heldout"]["outliers"] == pytest.approx(1 - len(inliers_ND) / len(held_ND))
    assert heldout.rows == toy.heldout_tokens
    for run in runs.values():
        sae = saekit.load_dictionary(run["dictionary"])
        assert run["fvu"] == pytest.approx(saekit.evaluate(sae, held_ND)["fvu"], rel=1e-5)
        assert run["fvu_inliers"] == pytest.approx(
            saekit.evaluate(sae, inliers_ND)["fvu"], rel=1e-5
        )
        assert math.isfinite(run["fvu"]) and run["l0_mean"] <= toy.k
        assert math.isfinite(run["ce_loss_score"]) and run["kl_sae"] >= 0
        assert [t for t, _ in run["curve"]] == [256, 512, 768, 1024]
    assert all(runs[f"saekit/tuned/seed{s}"]["fvu"] < 0.9 for s in (0, 1))  # it learned
    for tuned in result["tuning"].values():
        grid = {float(m): f for m, f in tuned["fvu_by_multiplier"].items()}
        assert tuned["best_multiplier"] == min(grid, key=grid.__getitem__)
    summary = result["summary"]
    for key, s in summary.items():
        values = [runs[f"{key}/seed{seed}"]["fvu"] for seed in (0, 1)]
        assert s["fvu"]["mean"] == pytest.approx(statistics.fmean(values))
    peers = {k: s["fvu"]["mean"] for k, s in summary.items() if not k.startswith("saekit")}
    best = min(peers, key=peers.__getitem__)
    assert result["best_peer"] == best
    ours = {k: s["fvu"]["mean"] for k, s in summary.items() if k.startswith("saekit")}
    assert result["saekit_config"] == min(ours, key=ours.__getitem__)
    ratio = ours[result["saekit_config"]] / peers[best]
    assert result["ratios_vs_best_peer"]["fvu"] == pytest.approx(ratio)
    assert "| saekit/tuned |" in quality.table(result)
    # Provenance: the commit this process runs, on the result and on every kept run.
    assert {r["commit"] for r in runs.values()} == {result["protocol"]["commit"]}
    assert all(r["finished"].endswith(" UTC") for r in runs.values())

    # The command prints the same result as one JSON object and reuses every finished run.
    capsys.readouterr()
    flags = [
        f"--quality.{k}={v if isinstance(v, str) else json.dumps(v)}"  # str fields: as given
        for k, v in toy.__dict__.items()
    ]
    assert main(["bench", "quality", "--json", *flags]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["summary"] == result["summary"]
    assert torch.get_num_threads() == again["protocol"]["threads"]

    # A kept saekit run whose settings are not saekit's today (trained before its defaults
    # changed) is set aside and trained again; the peers' kept runs are reused as they are.
    kept = Path(toy.out_dir) / "runs" / "saekit-lrdefault-t1024-seed1.json"
    peer = Path(toy.out_dir) / "runs" / "sparsify-lrdefault-t1024-seed1.json"
    old = json.loads(kept.read_text())
    assert old["settings"]["grad_clip_norm"] == 0.0 and old["settings"]["lr_decay_fraction"] == 0.5
    old["settings"]["grad_clip_norm"], old["fvu"] = 1.0, 123.0
    kept.write_text(json.dumps(old))
    peer_mtime = peer.stat().st_mtime_ns
    assert main(["bench", "quality", "--json", *flags]) == 0
    assert "saekit-lrdefault-t1024-seed1.json: trained with other" in capsys.readouterr().err
    assert json.loads(kept.with_name(kept.stem + ".stale.json").read_text())["fvu"] == 123.0
    assert kept.with_name(kept.stem + ".stale").is_dir()  # its dictionary went with it
    retrained = json.loads(kept.read_text())
    assert retrained["settings"]["grad_clip_norm"] == 0.0
    assert retrained["fvu"] == pytest.approx(runs["saekit/default/seed1"]["fvu"], rel=1e-4)
    assert peer.stat().st_mtime_ns == peer_mtime


@pytest.mark.parametrize(
    ("flag", "fragment"),
    [
        ('--quality.sides=["saelens", "sae_lens"]', "choose among"),
        ("--quality.seeds=[]", "at least one value"),
        ("--quality.train_tokens=4096", "a step per budget point"),
        ("--quality.tune_extensions=-1", "must be ≥ 0"),
    ],
)
def test_a_study_that_cannot_run_is_one_line_before_any_work(tmp_path, capsys, flag, fragment):
    out = tmp_path / "quality"
    assert main(["bench", "quality", f"--quality.out_dir={out}", flag]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("saekit: error: --quality.") and fragment in err[0]
    assert not out.exists()  # nothing cached, loaded or written


def test_ratios_when_the_best_peer_has_no_dead_latents():
    """A peer with 0 dead latents gives no finite dead ratio (JSON null, "n/a"), and
    1 when saekit has none either; the other ratios are plain quotients."""

    def one(fvu: float, dead: float) -> dict[str, object]:
        metrics = {"fvu": fvu, "fvu_inliers": fvu / 2, "ce_loss_score": 0.9, "kl_sae": 0.1}
        metrics |= {"l0_mean": 32.0, "dead_fraction": dead, "dense_fraction": 0.0}
        return metrics | {"wall_s": 10.0, "lr": 1e-3, "curve": [[4096, fvu]], "rows_digest": "a"}

    for ours, ratio in ((0.0, 1.0), (0.25, None)):
        runs = {
            "saekit/default/seed0": one(0.2, ours),
            "saekit/tuned/seed0": one(0.2, ours),
            "saelens/default/seed0": one(0.4, 0.0),
            "saelens/tuned/seed0": one(0.5, 0.0),
        }
        out = quality_report.summarize(runs, ("saekit", "saelens"), (0,))
        r = out["ratios_vs_best_peer"]
        assert out["best_peer"] == "saelens/default" and r["fvu"] == pytest.approx(0.5)
        assert out["saekit_config"] == "saekit/default"  # equal FVU: the first
        assert r["dead_fraction"] == ratio and out["met"]["dead_fraction"] is (ours == 0)
        json.dumps(out, allow_nan=False)  # valid JSON


def test_saekit_and_the_peers_are_compared_at_the_configuration_one_rule_picks():
    """Every library is compared at its configuration with the lower final FVU; the per-point
    ratios are that configuration's curve over the best peer's, and saekit/tuned's are kept
    beside them."""

    def one(fvu: float, curve: list[float]) -> dict[str, object]:
        metrics = {"fvu": fvu, "fvu_inliers": fvu, "ce_loss_score": 0.9, "kl_sae": 0.1}
        metrics |= {"l0_mean": 32.0, "dead_fraction": 0.0, "dense_fraction": 0.0}
        points = [[4096 * (i + 1), v] for i, v in enumerate(curve)]
        return metrics | {"wall_s": 10.0, "lr": 1e-3, "curve": points, "rows_digest": "a"}

    peers = {
        "saelens/default/seed0": one(0.30, [0.9, 0.30]),
        "saelens/tuned/seed0": one(0.20, [0.4, 0.20]),
        "sparsify/default/seed0": one(0.25, [0.1, 0.25]),  # best early, not at the end
        "sparsify/tuned/seed0": one(0.26, [0.1, 0.26]),
    }
    sides = ("saekit", "saelens", "sparsify")
    for tuned_fvu, chosen in ((0.19, "saekit/tuned"), (0.21, "saekit/default")):
        runs = peers | {
            "saekit/default/seed0": one(0.20, [0.3, 0.20]),
            "saekit/tuned/seed0": one(tuned_fvu, [0.5, tuned_fvu]),
        }
        out = quality_report.summarize(runs, sides, (0,))
        r = out["ratios_vs_best_peer"]
        assert out["best_peer"] == "saelens/tuned" and out["saekit_config"] == chosen
        own = runs[f"{chosen}/seed0"]["curve"]
        assert r["fvu_by_budget_point"] == pytest.approx([own[0][1] / 0.4, own[1][1] / 0.2])
        assert r["tuned_fvu_by_budget_point"] == pytest.approx([0.5 / 0.4, tuned_fvu / 0.2])
        assert out["met"]["fvu_at_every_budget_point"] is (chosen == "saekit/default")


def test_publish_copies_the_result_and_writes_the_table_where_it_is_marked(tmp_path, capsys):
    """The published table carries each side's mean and half-range over seeds as computed here
    from the runs, links the PNG relative to each page, and a second publish changes nothing."""
    fvu = {"saekit": (0.05, 0.06), "saelens": (0.08, 0.07)}  # seeds 0, 1 of each config
    runs = {}
    for side, (a, b) in fvu.items():
        for config in ("default", "tuned"):
            for seed, value in enumerate((a, b)):
                runs[f"{side}/{config}/seed{seed}"] = {
                    "fvu": value,
                    "fvu_inliers": value * 3,
                    "ce_loss_score": 0.97 - value,
                    "kl_sae": value * 6,
                    "l0_mean": 32.0,
                    "dead_fraction": 0.01 * seed,
                    "dense_fraction": 0.0,
                    "wall_s": 100.0 + 50 * seed + (500 if side == "saelens" else 0),
                    "lr": 1e-3,
                    "curve": [[4096, value * (3 if side == "saekit" else 2)], [8192, value]],
                    "rows_digest": "a",
                }
    result = quality_report.summarize(runs, ("saekit", "saelens"), (0, 1))
    cfg = quality.QualityConfig(seeds=(0, 1), sides=("saekit", "saelens"))
    # One run kept from a sitting at an earlier commit: the table must say so.
    kept = {
        k: r | {"commit": "0ld0000" if k == "saelens/tuned/seed1" else "abc1234"}
        for k, r in runs.items()
    }
    result |= {
        "runs": kept,
        "config": dataclasses.asdict(cfg),
        "protocol": {
            "date": "2026-12-07 12:00 UTC",
            "commit": "abc1234",
            "threads": 2,
            "load_average_before": [0.1, 0, 0],
            "load_average_after": [2.0, 0, 0],
        },
    }
    src, dest, root = tmp_path / "bench", tmp_path / "repo" / "benchmarks" / "quality", tmp_path
    src.mkdir()
    (src / "quality.json").write_text(json.dumps(result))
    (src / "fvu-vs-tokens.png").write_bytes(b"\x89PNG not really")
    start, end = quality_report.MARKERS
    readme, page = tmp_path / "repo" / "README.md", tmp_path / "repo" / "docs" / "b.md"
    page.parent.mkdir(parents=True)
    readme.write_text(f"# r\n{start}\nold\n{end}\nafter\n")
    page.write_text(f"# b\n{start}\n{end}\n")
    (tmp_path / "repo" / "other.md").write_text("no markers\n")
    argv = ["publish", str(src), str(dest), "--root", str(root / "repo")]
    quality_report.main(argv)
    assert "updated:" in capsys.readouterr().out
    assert (dest / "fvu-vs-tokens.png").read_bytes() == b"\x89PNG not really"
    published = json.loads((dest / "quality.json").read_text())
    assert published.pop("plot") == str(dest / "fvu-vs-tokens.png")
    assert published == json.loads(json.dumps(result))
    assert (tmp_path / "repo" / "other.md").read_text() == "no markers\n"
    text = readme.read_text()
    table = text.split(start)[1].split(end)[0]
    assert (
        table.replace("](benchmarks/", "](../benchmarks/")
        == page.read_text().split(start)[1].split(end)[0]
    )
    assert "old" not in text and text.endswith(f"{end}\nafter\n")
    assert "](benchmarks/quality/fvu-vs-tokens.png)" in text
    assert "](../benchmarks/quality/fvu-vs-tokens.png)" in page.read_text()
    # saekit/tuned: FVU 0.05, 0.06 → 0.0550 ±0.0050; CE 0.92, 0.91 → 0.915 ±0.005; dead 0.5%;
    # training: median of 100 and 150 s.
    row = next(line for line in text.splitlines() if line.startswith("| saekit/tuned |"))
    assert "| 0.0550 ±0.0050 | 0.1650 ±0.0150 | 0.915 ±0.005 | 0.330 ±0.030 | 0.5% | 125 s |" in row
    # the best peer's FVU is 0.075, saekit's 0.055: 0.733x; at 4096 tokens 0.165 / 0.15 = 1.1x
    assert row.startswith("| saekit/tuned | 1.00e-03 |")
    # saekit's two configurations tie: the first, saekit/default, is compared.
    assert (
        "saekit/default (saekit's lower-FVU configuration) ÷ the best peer "
        "(saelens/default): FVU 0.733x, at the worst budget point 1.100x" in text
    )
    # dead: 0.5% each (met, ≤); training: 125 s against saelens/default's 625 s (met)
    assert (
        "Targets: fvu_at_every_budget_point **missed**; dead_fraction met; wall_s met. "
        "saekit/tuned's worst budget point: 1.100x." in text
    )
    assert "`saekit bench quality` (2026-12-07 12:00 UTC, commit abc1234, 2 threads" in text
    assert "; runs trained at 0ld0000, abc1234)." in text
    quality_report.main(argv)
    assert "nothing (already current)" in capsys.readouterr().out


def test_publish_refuses_before_writing_anything(tmp_path, capsys):
    """No result, no PNG, or a page without its end marker: one line naming the fix, exit 2,
    nothing written anywhere."""
    src, dest, root = tmp_path / "bench", tmp_path / "dest", tmp_path / "repo"
    src.mkdir()
    root.mkdir()
    start, end = quality_report.MARKERS
    (root / "README.md").write_text(f"{start}\nkeep\n{end}\n")
    argv = ["publish", str(src), str(dest), "--root", str(root)]

    def refused(fragment: str) -> None:
        with pytest.raises(SystemExit) as exc:
            quality_report.main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and fragment in err[0], err
        assert not dest.exists() and (root / "README.md").read_text() == f"{start}\nkeep\n{end}\n"

    refused("quality.json not found: run `saekit bench quality --quality.out_dir")
    (src / "quality.json").write_text("{}")
    refused("fvu-vs-tokens.png not found")
    (src / "fvu-vs-tokens.png").write_bytes(b"png")
    refused("is not a finished bench's result")
    (src / "quality.json").write_text(json.dumps(_finished()))
    (root / "docs.md").write_text(f"{start}\n")
    refused("without <!-- quality-table:end -->; add the end marker")
    (root / "docs.md").write_text(f"{start}\n{end}\n")
    quality_report.main(argv)
    assert "| saekit/tuned |" in (root / "README.md").read_text()


def _finished() -> dict[str, object]:
    """A minimal finished result: one seed of saekit only."""
    run = {"fvu": 0.1, "fvu_inliers": 0.2, "ce_loss_score": 0.9, "kl_sae": 0.3, "l0_mean": 8.0}
    run |= {"dead_fraction": 0.0, "dense_fraction": 0.0, "wall_s": 1.0, "lr": 1e-3}
    run |= {"curve": [[1, 0.1]], "rows_digest": "a"}
    runs = {"saekit/default/seed0": run, "saekit/tuned/seed0": run}
    result = quality_report.summarize(runs, ("saekit",), (0,))
    protocol = {"threads": 1, "load_average_before": [0.0], "load_average_after": [0.0]}
    return result | {
        "config": dataclasses.asdict(quality.QualityConfig(seeds=(0,))),
        "protocol": protocol,
    }


@pytest.mark.parametrize(
    ("optimum", "extensions", "grid", "best", "at_edge"),
    [
        (16.0, 4, [0.5, 1, 2, 4, 8, 16, 32], 16.0, False),  # found with a neighbour each side
        (16.0, 2, [0.5, 1, 2, 4, 8], 8.0, True),  # out of extensions: the edge is said
        (0.125, 4, [0.0625, 0.125, 0.25, 0.5, 1, 2], 0.125, False),
        (1.0, 4, [0.5, 1, 2], 1.0, False),
    ],
)
def test_tuning_extends_the_grid_at_a_winning_edge(optimum, extensions, grid, best, at_edge):
    """A winner at the grid's edge doubles (or halves) the grid that way until it has a
    neighbour on each side, at most `tune_extensions` times; FVU here is a bowl around
    `optimum` in log2(multiplier)."""
    cfg = quality.QualityConfig(lr_multipliers=(0.5, 1.0, 2.0), tune_extensions=extensions)
    base = quality.library_lr("saekit", cfg.d_sae)

    class Runs:
        bar = None

        def __init__(self) -> None:
            self.cfg, self.trained = cfg, []

        def run(self, side: str, lr: float | None, seed: int, tokens: int) -> float:
            assert (side, seed, tokens) == ("saekit", cfg.seeds[0], cfg.tune_tokens)
            return 1.0 if lr is None else lr / base

        def result(self, m: float, final: bool) -> dict[str, object]:
            self.trained.append(m)
            return {"curve": [[tokens, 0.1 + math.log2(m / optimum) ** 2] for tokens in (1, 2)]}

    runs = Runs()
    out = quality.tune(runs, "saekit")  # type: ignore[arg-type]
    assert sorted(runs.trained) == pytest.approx(grid) and len(runs.trained) == len(grid)
    assert out["best_multiplier"] == best and out["at_edge"] is at_edge
    assert out["best_lr"] == pytest.approx(best * base)

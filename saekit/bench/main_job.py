"""`saekit bench main-job`: the main job's outlier policy and epochs over a cache, measured.

1. Cache `train_tokens` rows of the quickstart's hook from the training documents and
   `heldout_tokens` from the held-out ones (`saekit bench quality`'s caches and evaluators).
2. Outlier policy: train the quickstart's TopK SAE (its width, k, batch size and
   normalization; the study's lr, clip and decay) on the same cached rows, same seed, once
   per policy (`stream.outliers` keep, filter, clip at `max_norm_multiple`); log every step's
   batch FVU (its spread shows the spikes) and evaluate each SAE on the same held-out rows:
   FVU over all rows and over the non-outliers, CE-loss score and KL with the SAE spliced
   into the model.
3. Epochs, with the `epochs_policy`: the first 1/`epochs` of the cache read `epochs` times
   (reshuffled each time) against the whole cache read once, at equal SAE steps; and the whole
   cache read `epochs` times (`epochs` × the steps, the same LM forwards). The wall-clock of
   each is estimated from throughputs measured here, in one process: the live stream (model
   forward to the hook, buffer, shuffle), the cached stream, and the SAE step, each timed in
   `rounds` rounds of alternating order (medians).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch

from saekit.activations.cached_stream import CachedActivationStream
from saekit.activations.stream import ActivationStream, OutlierPolicy, StreamConfig
from saekit.bench.quality import Bench, QualityConfig, quality_recipe
from saekit.config import load_recipe
from saekit.data.text import DataConfig, build_windows
from saekit.dictionaries import SAEConfig
from saekit.models.hooks import build_hooked_model
from saekit.rundir import write_json
from saekit.train.config import TrainConfig
from saekit.train.trainer import Trainer


@dataclass(frozen=True)
class MainJobConfig:
    """What `saekit bench main-job` trains and measures (flags: `--study.FIELD VALUE`)."""

    model: str = "smollm2-135m"
    """The language model (a local HF directory works too)."""
    backend: Literal["transformer_lens", "hf"] = "transformer_lens"
    """Hook backend of the model."""
    source: str = "offline"
    """Text source: its training and held-out documents."""
    context_size: int = 128
    """Tokens per context window."""
    train_tokens: int = 300_000
    """Rows of the training cache (the 1-epoch runs read each once)."""
    heldout_tokens: int = 50_000
    """Rows of the held-out cache every SAE is scored on."""
    hook: str = "blocks.12.hook_resid_post"
    """The quickstart's hook."""
    d_sae: int = 4608
    """The quickstart's width."""
    k: int = 32
    """The quickstart's k."""
    lr: float = 5e-4
    """Learning rate (the study's: the quickstart's before it took TopK's defaults)."""
    grad_clip_norm: float = 1.0
    """Gradient-norm clip, 0: none (the study's, as lr)."""
    lr_warmup_steps: int = 50
    """Linear lr warmup steps (the study's, as lr)."""
    lr_decay_fraction: float = 0.2
    """Final lr decay, as a fraction of the run (the study's, as lr)."""
    ema_decay: float = 0.0
    """β of the exported weight average, 0: the last iterate (the study's, as lr)."""
    batch_size: int = 2048
    """The quickstart's rows per step."""
    max_norm_multiple: float = 10.0
    """Outlier threshold: multiple of the median norm of a chunk."""
    policies: tuple[OutlierPolicy, ...] = ("keep", "filter", "clip")
    """Outlier policies compared."""
    epochs: int = 3
    """Epochs over the first 1/epochs of the cache, against one over all of it."""
    epochs_policy: OutlierPolicy = "clip"
    """Outlier policy of the epoch runs."""
    seed: int = 0
    """Seed of the SAEs and the shuffles."""
    ce_windows: int = 32
    """Held-out windows of the CE-loss score and KL."""
    rounds: int = 5
    """Rounds of the throughput measurement (medians)."""
    probe_windows: int = 64
    """Context windows per live-stream round of the throughput measurement."""
    out_dir: str = "runs/bench-main-job"
    """Caches (shared with `saekit bench quality` at the same out_dir), results, main_job.json."""


def quality_config(cfg: MainJobConfig) -> QualityConfig:
    """`saekit bench quality`'s caches and evaluators at this study's sizes. The caches'
    stream batch size (part of a cache's provenance) is the default whatever --study.batch_size
    is, so studies at several batch sizes share their caches."""
    return QualityConfig(
        model=cfg.model,
        backend=cfg.backend,
        source=cfg.source,
        context_size=cfg.context_size,
        hook=cfg.hook,
        train_tokens=cfg.train_tokens,
        heldout_tokens=cfg.heldout_tokens,
        batch_size=MainJobConfig.batch_size,
        d_sae=cfg.d_sae,
        k=cfg.k,
        ce_windows=cfg.ce_windows,
        out_dir=cfg.out_dir,
    )


def stream_config(cfg: MainJobConfig, bench: Bench, policy: OutlierPolicy) -> StreamConfig:
    return StreamConfig(
        hooks=(cfg.hook,),
        batch_size=cfg.batch_size,
        normalize=True,
        seed=cfg.seed,
        max_norm_multiple=cfg.max_norm_multiple,
        outliers=policy,
        cache_dir=bench.train_dir,
    )


def spread(fvus: list[float]) -> dict[str, float]:
    """Per-batch FVU after the first 10% of steps (warm-up): quantiles, and the share of
    batches above twice the median (spikes)."""
    tail = sorted(fvus[len(fvus) // 10 :])
    q = statistics.quantiles(tail, n=20, method="inclusive")
    median = statistics.median(tail)
    return {
        "p05": q[0],
        "median": median,
        "p95": q[-1],
        "max": tail[-1],
        "spikes_over_2x_median": sum(f > 2 * median for f in tail) / len(tail),
    }


def train_one(
    cfg: MainJobConfig, bench: Bench, policy: OutlierPolicy, rows: int | None, steps: int
) -> dict[str, Any]:
    """One SAE on the cached rows (the first `rows` of them, in epochs, when given)."""
    stream = CachedActivationStream(stream_config(cfg, bench, policy), verify=False, rows=rows)
    sae_cfg = SAEConfig(method="topk", hook=cfg.hook, d_sae=cfg.d_sae, k=cfg.k, seed=cfg.seed)
    train = TrainConfig(
        total_tokens=steps * cfg.batch_size,
        lr=cfg.lr,
        grad_clip_norm=cfg.grad_clip_norm,
        lr_warmup_steps=cfg.lr_warmup_steps,
        lr_decay_fraction=cfg.lr_decay_fraction,
        ema_decay=cfg.ema_decay,
        log_every=1,
        dead_window_tokens=cfg.train_tokens // 2,
        wandb_mode="disabled",
        seed=cfg.seed,
    )
    trainer = Trainer((sae_cfg,), train, stream)
    t0 = time.perf_counter()
    summary = trainer.train()
    seconds = time.perf_counter() - t0
    (name,) = trainer.dictionaries
    fvus = [r[f"{name}/fvu"] for r in trainer.history]
    return {
        "policy": policy,
        "rows": rows or stream.cache.rows,
        "steps": steps,
        "train_s": seconds,
        "stream": summary["stream"],
        "batch_fvu": spread(fvus),
        **bench.evaluate(trainer.dictionaries[name]),  # type: ignore[arg-type]
    }


def throughputs(cfg: MainJobConfig, bench: Bench) -> dict[str, float]:
    """Tokens/s of the live stream (model forward, buffer, shuffle: one buffer of
    `probe_windows` windows per round) and of the cached stream (as many rows), alternating
    which goes first; medians over `rounds`."""
    if bench.model is None:
        bench.model = build_hooked_model(quality_recipe(quality_config(cfg), "eval").model)
    model = bench.model
    data = DataConfig(source=cfg.source, context_size=cfg.context_size)
    n_windows = (cfg.rounds + 1) * cfg.probe_windows
    windows = build_windows(data, model.tokenizer, "train", n_windows * cfg.context_size)
    keep = stream_config(cfg, bench, "keep")
    live = ActivationStream(
        model, windows, replace(keep, cache_dir=None, buffer_sequences=cfg.probe_windows)
    )
    cached = CachedActivationStream(keep, verify=False)
    live._fill(cfg.rounds)  # warm-up of each side, on rows not timed
    cached.next_batch()
    rates: dict[str, list[float]] = {"live": [], "cached": []}
    for r in range(cfg.rounds):
        for side in ("live", "cached") if r % 2 == 0 else ("cached", "live"):
            t0 = time.perf_counter()
            if side == "live":
                tokens = next(iter(live._fill(r).values())).shape[0]  # one buffer
            else:
                tokens = 0
                while tokens < cfg.probe_windows * (cfg.context_size - 1):
                    tokens += next(iter(cached.next_batch().values())).shape[0]
            rates[side].append(tokens / (time.perf_counter() - t0))
    return {f"{k}_tokens_per_s": statistics.median(v) for k, v in rates.items()}


def run(cfg: MainJobConfig | None = None) -> dict[str, Any]:
    """The whole study (see the module doc); returns main_job.json's contents."""
    cfg = cfg or MainJobConfig()
    load_before = os.getloadavg()
    bench = Bench(quality_config(cfg))
    out = Path(cfg.out_dir)
    steps = cfg.train_tokens // cfg.batch_size
    runs: dict[str, dict[str, Any]] = {}
    for policy in cfg.policies:
        runs[policy] = _kept(
            _run_path(cfg, policy), lambda p=policy: train_one(cfg, bench, p, None, steps)
        )
    # Epochs at equal steps over 1/epochs of the rows, and epochs × the steps over all rows.
    for key, rows, n_steps in (
        (f"{cfg.epochs}-epochs-{cfg.epochs_policy}", cfg.train_tokens // cfg.epochs, steps),
        (f"{cfg.epochs}-epochs-all-{cfg.epochs_policy}", None, cfg.epochs * steps),
    ):
        runs[key] = _kept(
            _run_path(cfg, key),
            lambda r=rows, n=n_steps: train_one(cfg, bench, cfg.epochs_policy, r, n),
        )
    rates = throughputs(cfg, bench)
    for r in runs.values():
        # What the run would cost from the model: capture its distinct rows, then train.
        r["estimated_wall_s"] = r["rows"] / rates["live_tokens_per_s"] + r["train_s"]
    result = {
        "bench": "main-job",
        "config": asdict(cfg),
        "protocol": {
            "threads": torch.get_num_threads(),
            "load_average_before": list(load_before),
            "load_average_after": list(os.getloadavg()),
        },
        "heldout": bench.heldout_stats,
        "throughput": rates,
        "runs": runs,
    }
    write_json(out / "main_job.json", result)
    return result


def _run_path(cfg: MainJobConfig, key: str) -> Path:
    """Where a finished run is kept: named by what changes its result (the caches' sizes are
    fixed by their own provenance)."""
    c = cfg
    shape = f"d{c.d_sae}-k{c.k}-lr{c.lr:g}-b{c.batch_size}-m{c.max_norm_multiple:g}"
    if (c.grad_clip_norm, c.lr_decay_fraction) != (1.0, 0.2):  # runs kept before these fields
        shape += f"-clip{c.grad_clip_norm:g}-decay{c.lr_decay_fraction:g}"
    if c.lr_warmup_steps != 50:  # runs kept before this field
        shape += f"-warmup{c.lr_warmup_steps}"
    if c.ema_decay:  # runs kept before this field exported the last iterate
        shape += f"-ema{c.ema_decay:g}"
    return Path(c.out_dir) / "runs" / f"{key}-{shape}-ce{c.ce_windows}-seed{c.seed}.json"


def _kept(path: Path, compute: Any) -> dict[str, Any]:
    """A finished run's result, read back; else computed and kept (an interrupted study
    continues where it stopped)."""
    if path.is_file():
        return dict(json.loads(path.read_text()))
    result = dict(compute())
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, result)
    return result


def table(result: dict[str, Any]) -> str:
    c = result["config"]
    lines = [
        f"TopK d_sae {c['d_sae']} k {c['k']} lr {c['lr']:g}, batch {c['batch_size']}, "
        f"{c['train_tokens']:,} cached training rows, {c['heldout_tokens']:,} held-out rows; "
        f"outliers: norm over {c['max_norm_multiple']:g}x the chunk median",
        "| run | rows | steps | held-out FVU | FVU w/o outliers | CE-loss score | KL | L0 | "
        "dead | batch FVU p05 / median / p95 / max | outlier rows | train s | est. wall s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for name, r in result["runs"].items():
        b = r["batch_fvu"]
        lines.append(
            f"| {name} | {r['rows']:,} | {r['steps']} | {r['fvu']:.4f} | {r['fvu_inliers']:.4f}"
            f" | {r['ce_loss_score']:.4f} | {r['kl_sae']:.4f} | {r['l0_mean']:.1f} | "
            f"{r['dead_fraction']:.3f} | {b['p05']:.3f} / {b['median']:.3f} / {b['p95']:.3f} / "
            f"{b['max']:.3f} | {r['stream']['outlier_rows']:,} | {r['train_s']:.0f} | "
            f"{r['estimated_wall_s']:.0f} |"
        )
    t = result["throughput"]
    lines.append(
        f"live stream {t['live_tokens_per_s']:,.0f} tok/s, cached stream "
        f"{t['cached_tokens_per_s']:,.0f} tok/s (medians of {c['rounds']} alternating rounds, "
        f"{result['protocol']['threads']} threads)"
    )
    return "\n".join(lines)


@dataclass(frozen=True)
class MainJobFlags:
    """The flags of `saekit bench main-job`: `--study.FIELD VALUE`."""

    study: MainJobConfig = MainJobConfig()
    """What the study trains and measures."""


def config_from_flags(overrides: dict[str, Any]) -> MainJobConfig:
    """A MainJobConfig with the `--study.FIELD` flags applied."""
    return load_recipe(MainJobFlags, None, overrides).study

"""`saekit bench quality`: SAEs per token of training data, saekit vs SAELens vs sparsify.

1. Cache the activations once with `saekit cache`'s code: `train_tokens` rows of a mid-layer
   residual hook from the training documents and `heldout_tokens` from the held-out ones
   (`OUT_DIR/cache-train`, `OUT_DIR/cache-heldout`; an existing cache is verified and reused).
2. Tune each library's learning rate the same way: runs of `tune_tokens` at seed `seeds[0]` over
   `lr_multipliers` × the library's own default lr; the lowest held-out FVU wins, and a winner at
   the grid's edge extends the grid by one more factor of 2 that way, until the winner has a
   neighbour on each side (at most `tune_extensions` times).
3. Train every side at its default lr and at its tuned lr, at each seed, for `train_tokens`, all
   on the same rows in the same order (`quality_sides.py`; the row digests are compared). The
   side order rotates with the seed. Held-out FVU is measured at `curve_points` budget points.
4. Evaluate each final dictionary with saekit's evaluators: FVU (also without the held-out
   outliers, `fvu_inliers`), L0, dead and dense fractions on every held-out row; CE-loss
   score and KL with the SAE spliced into the model on `ce_windows` held-out windows
   (eval/core.py).

Every finished run is kept as `OUT_DIR/runs/KEY.json`, so an interrupted bench continues where
it stopped; a kept saekit run trained with other settings than saekit's now (its defaults
changed) is moved aside to `KEY.stale.json` and trained again.
The table, the ratios against the best peer and the curve PNG: `quality_report.py`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm import tqdm

from saekit.activations.cache import ActivationCache, CacheConfig
from saekit.activations.stats import OUTLIER_MULTIPLE, activation_stats
from saekit.activations.stream import StreamConfig
from saekit.bench import quality_report
from saekit.bench.quality_sides import SIDES, Run, saekit_settings, train
from saekit.bench.sitting import current_commit, now_utc
from saekit.caching import cache_recipe
from saekit.config import load_recipe
from saekit.data.text import DataConfig, build_windows
from saekit.dictionaries.topk import TopKSAE
from saekit.errors import SaekitError
from saekit.eval.core import evaluate_core
from saekit.eval.evaluate import evaluate_activations
from saekit.models.hooks import HookedModel, build_hooked_model
from saekit.models.loading import ModelConfig
from saekit.recipe import Recipe
from saekit.rundir import write_json
from saekit.train.schedule import default_lr


@dataclass(frozen=True)
class QualityConfig:
    """What `saekit bench quality` trains and measures (flags: `--quality.FIELD VALUE`)."""

    model: str = "smollm2-135m"
    """The language model whose activations are cached (a local HF directory works too)."""
    backend: Literal["transformer_lens", "hf"] = "transformer_lens"
    """Hook backend of the model."""
    hook: str = "blocks.12.hook_resid_post"
    """The hook point (a mid-layer residual stream of SmolLM2's 30 layers)."""
    source: str = "offline"
    """Text source (data.source of a recipe): its training and held-out documents."""
    context_size: int = 128
    """Tokens per context window."""
    train_tokens: int = 2_000_000
    """Training budget of every side: rows of the training cache, read once in one order."""
    heldout_tokens: int = 100_000
    """Rows of the held-out cache (from the held-out documents)."""
    batch_size: int = 4096
    """Rows per training step, for every side."""
    d_sae: int = 4608
    """Latents of every side (8 × SmolLM2's d_in of 576)."""
    k: int = 32
    """Active latents per token."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Initialization seeds of the final runs (the first one also tunes)."""
    sides: tuple[str, ...] = SIDES
    """Libraries to train: saekit, saelens, sparsify."""
    lr_multipliers: tuple[float, ...] = (0.5, 1.0, 2.0)
    """Tuning grid: multiples of each library's default learning rate."""
    tune_tokens: int = 500_000
    """Training tokens of each tuning run."""
    tune_extensions: int = 4
    """How many times a winner at the tuning grid's edge may extend the grid by another factor
    of 2 that way."""
    curve_points: int = 8
    """Budget points (evenly spaced, the last at the end) where held-out FVU is measured."""
    curve_rows: int = 32_768
    """Held-out rows scored at each budget point (the final figures use all of them)."""
    ce_windows: int = 64
    """Held-out context windows of the CE-loss score and KL with the SAE spliced in."""
    out_dir: str = "runs/bench-quality"
    """Caches, finished runs (one JSON each, reused when the bench runs again), quality.json
    and fvu-vs-tokens.png."""


def quality_recipe(cfg: QualityConfig, split: Literal["train", "eval"]) -> Recipe:
    """The recipe of the training (split train) or held-out (split eval) activation cache."""
    n_tokens = cfg.train_tokens if split == "train" else cfg.heldout_tokens
    name = "cache-train" if split == "train" else "cache-heldout"
    return Recipe(
        model=ModelConfig(name=cfg.model, backend=cfg.backend),
        data=DataConfig(source=cfg.source, context_size=cfg.context_size),
        stream=StreamConfig(hooks=(cfg.hook,), batch_size=cfg.batch_size),
        cache=CacheConfig(output_dir=str(Path(cfg.out_dir) / name), n_tokens=n_tokens, split=split),
    )


def library_lr(side: str, d_sae: int) -> float:
    """Each library's own default learning rate at this width."""
    if side == "saelens":
        from sae_lens.config import LanguageModelSAERunnerConfig

        return float(LanguageModelSAERunnerConfig.__dataclass_fields__["lr"].default)
    if side == "sparsify":
        return 5e-3 / math.sqrt(d_sae / 2**14)  # sparsify's Trainer, optimizer "signum"
    return TopKSAE.default_lr_scale * default_lr(d_sae)


class Bench:
    """The caches, the model (loaded when first needed) and the finished runs on disk."""

    def __init__(self, cfg: QualityConfig) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out_dir)
        self.model: HookedModel | None = None
        self.bar: tqdm | None = None
        """The whole bench's bar, in training tokens of the planned runs (`run` sets it)."""
        self.commit = current_commit()
        """The code this process runs: HEAD now (commits may land while a bench runs)."""
        for split in ("eval", "train"):
            recipe = quality_recipe(cfg, split)  # type: ignore[arg-type]
            if not (Path(recipe.cache.output_dir) / "manifest.json").is_file():
                self.model = self.model or build_hooked_model(recipe.model)
            cache_recipe(recipe, self.model)
        self.train_dir = quality_recipe(cfg, "train").cache.output_dir
        heldout = ActivationCache(quality_recipe(cfg, "eval").cache.output_dir, verify=False)
        self.heldout_ND = heldout.read(cfg.hook, 0, heldout.rows).float()
        # A few held-out rows can carry most of the total variance (docs/benchmarks.md), so
        # FVU would be mostly theirs: FVU without them is reported too.
        norm_N = self.heldout_ND.norm(dim=1)
        self.inlier_N = norm_N <= OUTLIER_MULTIPLE * norm_N.median()
        self.heldout_stats = activation_stats(self.heldout_ND)

    def run(self, side: str, lr: float | None, seed: int, tokens: int) -> Run:
        c = self.cfg
        shape = (c.d_sae, c.k, c.batch_size, c.hook, self.train_dir, c.context_size)
        return Run(side, lr, seed, tokens, *shape)

    def path(self, run: Run, final: bool) -> Path:
        """Where the run's result is kept; a tuning run (no evaluation) is kept apart, even
        when tune_tokens equals train_tokens."""
        lr = "default" if run.lr is None else f"{run.lr:.4g}"
        kind = "" if final else "tune-"
        return self.out / "runs" / f"{kind}{run.side}-lr{lr}-t{run.tokens}-seed{run.seed}.json"

    def result(self, run: Run, final: bool) -> dict[str, Any]:
        """The run's result: read back if it finished before, else trained and evaluated."""
        path = self.path(run, final)
        if path.is_file() and run.side == "saekit":
            kept = json.loads(path.read_text()).get("settings")
            if kept != saekit_settings(run):
                set_aside(path)
        if path.is_file():
            if self.bar is not None:  # finished before: no longer part of what is left
                self.bar.total -= run.tokens
                self.bar.refresh()
            return dict(json.loads(path.read_text()))
        steps = run.steps
        n = self.cfg.curve_points
        points = {round(steps * j / n) * run.batch_size for j in range(1, n)}
        curve: list[tuple[int, float]] = []
        sample = self.heldout_ND[: self.cfg.curve_rows]

        def probe(tokens: int, sae: TopKSAE) -> None:
            curve.append((tokens, float(evaluate_activations(sae, sample)["fvu"])))

        out = train(run, points if final else set(), probe)
        sae = out.pop("dictionary")
        out |= {"run": asdict(run), "curve": curve, "load_after": os.getloadavg()[0]}
        out |= {"finished": now_utc(), "commit": self.commit}  # runs are kept across sittings
        if final:
            out |= self.evaluate(sae)
            out["dictionary"] = str(sae.save(path.with_suffix("")))
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, out)
        if self.bar is not None:
            self.bar.update(run.tokens)
        return out

    def evaluate(self, sae: TopKSAE) -> dict[str, Any]:
        """saekit's evaluators: held-out rows, then the model with the SAE spliced in."""
        keys = ("fvu", "l0_mean", "dead_fraction", "dense_fraction", "l2_ratio")
        rows = evaluate_activations(sae, self.heldout_ND)
        inliers = evaluate_activations(sae, self.heldout_ND[self.inlier_N])["fvu"]
        if self.model is None:
            self.model = build_hooked_model(quality_recipe(self.cfg, "eval").model)
        data = DataConfig(source=self.cfg.source, context_size=self.cfg.context_size)
        n = self.cfg.ce_windows
        windows = build_windows(data, self.model.tokenizer, "eval", n * self.cfg.context_size)
        lm = evaluate_core(self.model, sae, self.cfg.hook, windows, n_windows=n)
        return (
            {k: rows[k] for k in keys}
            | {"fvu_inliers": inliers}
            | {k: lm[k] for k in ("ce_clean", "ce_sae", "ce_loss_score", "kl_sae")}
        )


def set_aside(path: Path) -> None:
    """Move a stale run (its JSON and its dictionary) to the first free `.stale[N]` name."""
    n = 0
    while (stale := path.with_name(f"{path.stem}.stale{n or ''}.json")).exists():
        n += 1
    note = f"{path.name}: trained with other saekit settings than today's; kept as {stale.name}"
    tqdm.write(note, file=sys.stderr)
    if path.with_suffix("").is_dir():
        path.with_suffix("").rename(stale.with_suffix(""))
    path.rename(stale)


def tune(bench: Bench, side: str) -> dict[str, Any]:
    """The lr of `side` with the lowest held-out FVU over the grid (extended at an edge)."""
    cfg = bench.cfg
    base = library_lr(side, cfg.d_sae)
    fvu: dict[float, float] = {}
    grid = sorted(cfg.lr_multipliers)
    for _ in range(cfg.tune_extensions + 1):
        for m in grid:
            if m not in fvu:
                if bench.bar is not None and m not in cfg.lr_multipliers:
                    bench.bar.total += cfg.tune_tokens  # an extension: a run not planned
                run = bench.run(side, None if m == 1 else m * base, cfg.seeds[0], cfg.tune_tokens)
                fvu[m] = bench.result(run, final=False)["curve"][-1][1]
        best = min(fvu, key=lambda m: fvu[m])
        ordered = sorted(fvu)
        if best == ordered[0]:
            grid = [best / 2]
        elif best == ordered[-1]:
            grid = [best * 2]
        else:
            break
    return {
        "default_lr": base,
        "fvu_by_multiplier": {str(m): f for m, f in sorted(fvu.items())},
        "best_multiplier": best,
        "best_lr": best * base,
        "at_edge": best in (min(fvu), max(fvu)),
    }


def check(cfg: QualityConfig) -> None:
    """Refuse a study that cannot run, before anything is cached or trained."""
    unknown = [s for s in cfg.sides if s not in SIDES]
    if unknown or not cfg.sides:
        raise SaekitError(f"--quality.sides {list(cfg.sides)}: choose among {list(SIDES)}.")
    if cfg.tune_extensions < 0:
        raise SaekitError(
            f"--quality.tune_extensions {cfg.tune_extensions}: must be ≥ 0 (0: the grid as given)."
        )
    if not cfg.seeds or not cfg.lr_multipliers or min(cfg.lr_multipliers) <= 0:
        raise SaekitError(
            "--quality.seeds and --quality.lr_multipliers need at least one value each, the "
            "multipliers positive, e.g. --quality.seeds '[0]' --quality.lr_multipliers '[1.0]'."
        )
    if cfg.train_tokens < cfg.batch_size * cfg.curve_points or cfg.tune_tokens < cfg.batch_size:
        raise SaekitError(
            f"--quality.train_tokens must be at least batch_size × curve_points = "
            f"{cfg.batch_size * cfg.curve_points:,} (a step per budget point) and "
            f"--quality.tune_tokens at least batch_size = {cfg.batch_size:,}."
        )


def run(cfg: QualityConfig | None = None) -> dict[str, Any]:
    """The whole bench (see the module doc); returns quality.json's contents."""
    cfg = cfg or QualityConfig()
    check(cfg)
    load_before = os.getloadavg()
    t0, date = time.perf_counter(), now_utc()
    bench = Bench(cfg)
    started = {"date": date, "commit": bench.commit}
    # In training tokens of every planned run, the mean rate since the start: its ETA is the
    # whole bench's (evaluations included), and runs finished before are taken off the total.
    planned = len(cfg.lr_multipliers) * cfg.tune_tokens + 2 * len(cfg.seeds) * cfg.train_tokens
    bar = tqdm(
        total=len(cfg.sides) * planned,
        desc="bench quality, all runs",
        unit="tok",
        unit_scale=True,
        smoothing=0,
    )
    bench.bar = bar
    tuning = {side: tune(bench, side) for side in cfg.sides}
    runs: dict[str, dict[str, Any]] = {}
    for i, seed in enumerate(cfg.seeds):
        order = cfg.sides[i % len(cfg.sides) :] + cfg.sides[: i % len(cfg.sides)]
        for side in order:
            best = tuning[side]["best_multiplier"]
            for config, lr in (("default", None), ("tuned", tuning[side]["best_lr"])):
                if config == "tuned" and best == 1:
                    lr = None  # the tuned lr is the default: the same run
                run_ = bench.run(side, lr, seed, cfg.train_tokens)
                runs[f"{side}/{config}/seed{seed}"] = bench.result(run_, final=True)
    bar.close()
    result = quality_report.summarize(runs, cfg.sides, cfg.seeds)
    result = {
        "bench": "quality",
        "config": asdict(cfg),
        "protocol": {
            **started,
            "threads": torch.get_num_threads(),
            "load_average_before": list(load_before),
            "load_average_after": list(os.getloadavg()),
            "cpu_count": os.cpu_count(),
            "wall_s": time.perf_counter() - t0,
            "tuning": "each library: lr = multiplier × its default, multipliers "
            f"{list(cfg.lr_multipliers)} extended by ×2 at a winning edge (at most "
            f"{cfg.tune_extensions} times), {cfg.tune_tokens:,} "
            f"tokens at seed {cfg.seeds[0]}, lowest held-out FVU",
            "order": "side order rotates with the seed",
        },
        "heldout": bench.heldout_stats,
        "tuning": tuning,
        "runs": runs,
        **result,
    }
    out = Path(cfg.out_dir)
    result["plot"] = str(quality_report.plot(result, out / "fvu-vs-tokens.png"))
    write_json(out / "quality.json", result)
    return result


def table(result: dict[str, Any]) -> str:
    return quality_report.table(result)


@dataclass(frozen=True)
class QualityFlags:
    """The flags of `saekit bench quality`: `--quality.FIELD VALUE`."""

    quality: QualityConfig = QualityConfig()
    """What the bench trains and measures."""


def config_from_flags(overrides: dict[str, Any]) -> QualityConfig:
    """A QualityConfig with the `--quality.FIELD` flags applied."""
    return load_recipe(QualityFlags, None, overrides).quality

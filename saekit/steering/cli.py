"""`saekit steer`: generate with a feature steered, or score and compare steering.

saekit steer RUN_DIR --feature I --strength S --prompt "..."    add S × unit direction
saekit steer RUN_DIR --feature I --clamp V --prompt "..."       clamp the code to V
saekit steer RUN_DIR --vector v.npy --hook H --strength S ...   any vector at any hook
saekit steer RUN_DIR --diffmean poker --strength S ...          DiffMean (offline concepts)
saekit steer compare RUN_DIR [RUN_DIR ...] [--out DIR]          the steering score table, and
    per method means with 95% intervals, Pareto areas and paired differences (the study:
    --features 32 --random 32 --concepts 32 --kl 0.1,0.25,0.5; docs/steering.md)
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from saekit.errors import SaekitError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "steer",
        help="generate with a feature steered; `steer compare` scores steering per method",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "target",
        nargs="+",
        metavar="RUN_DIR",
        help="run dir of `saekit train` or an SAE dir; `compare RUN_DIR [RUN_DIR ...]` scores",
    )
    g = p.add_argument_group("generation")
    g.add_argument("--feature", type=int, default=None, help="feature index in the dictionary")
    g.add_argument("--dictionary", default=None, help="dictionary name when the run has several")
    g.add_argument("--vector", default=None, help="steer with this vector (.npy/.pt/.safetensors)")
    g.add_argument("--diffmean", default=None, help="steer with a DiffMean concept direction")
    g.add_argument("--hook", default=None, help="hook to steer at (default: the dictionary's)")
    g.add_argument("--strength", type=float, default=None, help="α: add α × unit direction")
    g.add_argument("--clamp", type=float, default=None, help="set the feature's code to this")
    g.add_argument("--from-pos", type=int, default=0, help="steer positions ≥ this (0 = all)")
    g.add_argument("--prompt", default="I think that", help="text to continue")
    g.add_argument("--tokens", type=int, default=32, help="tokens to generate")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    g.add_argument("--seed", type=int, default=0, help="sampling seed")
    g.add_argument("--model", default=None, help="override the run's model spec")
    c = p.add_argument_group("compare")
    c.add_argument("--out", default=None, help="output dir for steering.json (default: 1st run)")
    c.add_argument(
        "--features",
        type=int,
        default=4,
        help="features per dictionary: seeded draw among those firing on 1e-4..1e-1 of tokens",
    )
    c.add_argument("--kl", default=None, help="comma-separated KL budgets, e.g. 0.1,0.5")
    c.add_argument("--prompts", type=int, default=None, help="use the first N neutral prompts")
    c.add_argument("--gen-tokens", type=int, default=None, help="tokens per scored continuation")
    c.add_argument("--random", type=int, default=None, help="random directions per hook")
    c.add_argument("--targets", choices=["vocab", "maxact"], default=None, help="target tokens")
    c.add_argument(
        "--concepts", type=int, default=4, help="DiffMean directions per hook (1-32 concepts)"
    )
    c.add_argument("--no-diffmean", action="store_true", help="skip DiffMean directions")
    c.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default=None,
        help="run the model in this dtype (default: the run's); every method alike",
    )
    c.add_argument(
        "--no-select",
        action="store_true",
        help="generate on the evaluation prompts only (half the cost); no selected-κ row",
    )
    c.add_argument(
        "--judge",
        choices=["none", "openai", "local"],
        default="none",
        help="also rate continuations: an OpenAI-compatible endpoint or the local model",
    )
    c.add_argument("--judge-url", default="", help="judge endpoint base URL (…/v1)")
    c.add_argument("--judge-model", default="", help="judge model name (local: a model spec)")
    p.set_defaults(func=cmd_steer)


def cmd_steer(args: argparse.Namespace) -> None:
    if args.target[0] == "compare":
        _compare(args, args.target[1:])
        return
    if len(args.target) != 1:
        raise SaekitError("Give one RUN_DIR to steer with (or `saekit steer compare RUN_DIR ...`).")
    _generate(args, args.target[0])


def _generate(args: argparse.Namespace, run_dir: str) -> None:
    from saekit.models.hooks import build_hooked_model
    from saekit.steering.api import feature_edits, resolve_dictionary, steer_generate
    from saekit.steering.directions import diffmean_direction, load_vector, unit
    from saekit.steering.interventions import AddDirection, PositionalEdit

    sources = [x is not None for x in (args.feature, args.vector, args.diffmean)]
    if sum(sources) != 1:
        raise SaekitError("Give exactly one of --feature I, --vector PATH or --diffmean CONCEPT.")
    recipe, name, sae, hook = resolve_dictionary(run_dir, args.dictionary, args.hook)
    if args.model is not None:
        recipe = replace(recipe, model=replace(recipe.model, name=args.model))
    model = build_hooked_model(recipe.model)
    edits: dict[str, PositionalEdit]
    if args.feature is not None:
        sae = sae.to(model.device)
        edits = feature_edits(sae, args.feature, args.strength, args.clamp, args.from_pos, hook)
        what = f"{name} feature {args.feature}"
    else:
        if args.strength is None or args.clamp is not None:
            raise SaekitError(
                "--vector and --diffmean steer by addition: give --strength, no --clamp."
            )
        if args.vector is not None:
            v_D, what = unit(load_vector(args.vector)), f"vector {args.vector}"
        else:
            from saekit.steering.concepts import evals_concept_texts

            concepts, neutral = evals_concept_texts((args.diffmean,))
            v_D = diffmean_direction(model, hook, concepts[args.diffmean], neutral)
            what = f"DiffMean {args.diffmean}"
        edits = {hook: AddDirection(v_D, args.strength, args.from_pos)}
    base = steer_generate(model, args.prompt, None, args.tokens, args.temperature, args.seed)
    steered = steer_generate(model, args.prompt, edits, args.tokens, args.temperature, args.seed)
    how = f"strength {args.strength}" if args.clamp is None else f"clamped to {args.clamp}"
    print(f"prompt:    {args.prompt!r}")
    print(f"unsteered: {base!r}")
    at = list(edits)[-1]  # a transcoder's feature is written at its output hook
    print(f"steered:   {steered!r}   ({what} at {at}, {how}, from position {args.from_pos})")


def _compare(args: argparse.Namespace, runs: list[str]) -> None:
    from saekit.steering.concepts import EVALS_CONCEPTS, evals_concept_texts
    from saekit.steering.evaluate import run_steering_eval, steering_table
    from saekit.steering.judge import JudgeConfig
    from saekit.steering.protocol import SteeringConfig
    from saekit.steering.study import study_table

    if not runs:
        raise SaekitError("`saekit steer compare` needs at least one RUN_DIR.")
    if not 1 <= args.concepts <= len(EVALS_CONCEPTS):
        raise SaekitError(f"--concepts must be 1..{len(EVALS_CONCEPTS)}, got {args.concepts}.")
    if args.features < 1:
        raise SaekitError(f"--features must be ≥ 1, got {args.features}.")
    cfg = SteeringConfig()
    changes: dict[str, Any] = {}
    if args.kl is not None:
        try:
            changes["kl_targets"] = tuple(float(x) for x in args.kl.split(","))
        except ValueError as exc:
            raise SaekitError(f"--kl must be comma-separated numbers, got {args.kl!r}.") from exc
    if args.prompts is not None:
        changes["prompts"] = cfg.prompts[: args.prompts]
    if args.gen_tokens is not None:
        changes["gen_tokens"] = args.gen_tokens
    if args.random is not None:
        changes["n_random"] = args.random
    if args.targets is not None:
        changes["targets"] = args.targets
    if args.no_select:
        if args.judge != "none":
            raise SaekitError("--judge rates each feature at its selected κ; drop --no-select.")
        changes["select_kappa"] = False
    cfg = replace(cfg, **changes)
    report = run_steering_eval(
        runs,
        config=cfg,
        n_features=args.features,
        labelled=None
        if args.no_diffmean
        else evals_concept_texts(tuple(EVALS_CONCEPTS)[: args.concepts]),
        out_dir=args.out,
        model_name=args.model,
        model_dtype=args.dtype,
        judge=JudgeConfig(
            backend=args.judge,
            url=args.judge_url,
            model=args.judge_model,
            cache=str(Path(args.out or runs[0]) / "judge-cache.jsonl"),
        ),
    )
    print(steering_table(report))
    print(study_table(report["study"]))
    print(f"report: {args.out or runs[0]}/steering.json, plot: {report['study_plot']}")

"""`saekit attribute`: which features drive a next-token prediction, checked by ablation.

saekit attribute RUN_DIR --prompt TEXT [--target TOKEN] [--contrast TOKEN] [--layer-set A,B]
    attribution.json and index.html (tokens × top features) in RUN_DIR/attribution
saekit attribute validate RUN_DIR [--n-prompts 32] [--n-ablate 10]
    ablate the top-attributed features vs random active ones on held-out prompts
    (validation.json in RUN_DIR/attribution)
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from saekit.attribution.config import AttributeConfig, ValidateConfig
from saekit.config import add_config_flags, flag_overrides, from_dict
from saekit.errors import SaekitError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "attribute",
        help="attribute a next-token logit to every active feature; `attribute validate` "
        "checks attributions by ablation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "run",
        nargs="+",
        metavar="RUN_DIR",
        help="run dir of `saekit train` (or `validate RUN_DIR`)",
    )
    p.add_argument("--out", default=None, help="output dir (default: RUN_DIR/attribution)")
    p.add_argument("--model", default=None, help="override the run's model spec")
    add_config_flags(p, AttributeConfig, "attribution (AttributeConfig)", hyphens=True)
    add_config_flags(p, ValidateConfig, "attribute validate (ValidateConfig)", hyphens=True)
    p.set_defaults(func=cmd_attribute)


def _configs(args: argparse.Namespace) -> tuple[AttributeConfig, ValidateConfig, set[str]]:
    """Both configs from the flags, and the names of the flags given."""
    given = flag_overrides(args)
    layer_set = given.get("layer_set")
    if isinstance(layer_set, str):
        given["layer_set"] = [x.strip() for x in layer_set.split(",") if x.strip()]
    out = []
    for cls in (AttributeConfig, ValidateConfig):
        names = {f.name for f in dataclasses.fields(cls)}
        out.append(from_dict(cls, {k: v for k, v in given.items() if k in names}))
    return out[0], out[1], set(given)  # type: ignore[return-value]


def cmd_attribute(args: argparse.Namespace) -> None:
    attribute_cfg, validate_cfg, given = _configs(args)
    validating = args.run[0] == "validate"
    runs = args.run[1:] if validating else args.run
    if len(runs) != 1:
        raise SaekitError("Give one RUN_DIR (`saekit attribute RUN_DIR --prompt TEXT`).")
    if validating and given & {"prompt", "target", "contrast"}:
        raise SaekitError(
            "`attribute validate` picks its own held-out prompts and targets; drop --prompt, "
            "--target and --contrast (or run `saekit attribute RUN_DIR --prompt ...`)."
        )
    validate_only = {f.name for f in dataclasses.fields(ValidateConfig)}
    if not validating and given & validate_only:
        flag = sorted(given & validate_only)[0].replace("_", "-")
        raise SaekitError(f"--{flag} is an option of `saekit attribute validate RUN_DIR`.")
    if not validating and not attribute_cfg.prompt:
        raise SaekitError('Give the text to explain: --prompt "The capital of France is".')
    _run(runs[0], args, attribute_cfg, validate_cfg if validating else None)


def _run(
    run_dir: str,
    args: argparse.Namespace,
    attribute_cfg: AttributeConfig,
    validate_cfg: ValidateConfig | None,
) -> None:
    from dataclasses import replace

    from saekit.attribution.attribute import attribute_splices
    from saekit.attribution.html import write_view
    from saekit.attribution.splice import load_splices
    from saekit.attribution.validate import validate_attribution, validation_table
    from saekit.models.hooks import build_hooked_model
    from saekit.rundir import RunDir, write_json

    run = RunDir(run_dir)
    recipe, splices = load_splices(run_dir, attribute_cfg.layer_set)
    if args.model is not None:
        recipe = replace(recipe, model=replace(recipe.model, name=args.model))
    model = build_hooked_model(recipe.model)
    splices = [replace(s, dictionary=s.dictionary.to(model.device)) for s in splices]
    out = Path(args.out) if args.out is not None else run.attribution
    if validate_cfg is not None:
        report = validate_attribution(model, recipe, splices, attribute_cfg, validate_cfg)
        path = write_json(out / "validation.json", report)
        print(validation_table(report))
        print(f"report: {path}")
        return
    report = attribute_splices(model, splices, attribute_cfg)
    path = write_json(out / "attribution.json", report)
    index = write_view(report, attribute_cfg.top, run.dashboard, out)
    print(summary(report, attribute_cfg.top))
    print(f"report: {path}\nview:   {index}  (open it in a browser)")


def summary(report: dict[str, Any], top: int) -> str:
    """The identity and the top features of each dictionary, as printed lines."""
    tokens = report["tokens"]
    lines = [f"prompt {report['prompt']!r}: {report['metric']} = {report['metric_clean']:.4g}"]
    for name, d in report["dictionaries"].items():
        met = "" if d["identity_met"] else f"  (tolerance NOT met after {d['steps']} points)"
        skip = "" if d["sum_skip"] is None else f" + skip {d['sum_skip']:.4g}"
        lines.append(
            f"{name}: Δ {d['delta']:.4g} = features {d['sum_features']:.4g}{skip} + error "
            f"{d['sum_error']:.4g} + residual {d['residual']:.2g} ({d['steps']} points; "
            f"activation × gradient alone: residual {d['linear_residual']:.2g}){met}"
        )
        for e in d["features"][: min(top, 10)]:
            lines.append(
                f"  feature {e['feature']:6d} at {e['position']:3d} {tokens[e['position']]!r:14s} "
                f"attribution {e['attribution']:+.4g} (activation {e['activation']:.3g})"
            )
    return "\n".join(lines)

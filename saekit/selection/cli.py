"""`saekit select`: pick the pool samples most relevant to a target task (MoNA), or evaluate
the method against its baselines with `--evaluate`."""

from __future__ import annotations

import argparse
import importlib.util
from dataclasses import replace
from pathlib import Path
from typing import Any

from saekit.errors import SaekitError
from saekit.rundir import RunDir


def register(sub: Any) -> None:
    from saekit.config import field_docs
    from saekit.selection.config import DataFields, SelectConfig

    doc, fdoc = field_docs(SelectConfig), field_docs(DataFields)
    p = sub.add_parser(
        "select",
        help="select fine-tuning data by SAE feature activations (MoNA), or --evaluate it",
        description=(
            "Rank POOL by generalized Jaccard of pooled SAE features to the TARGET exemplars; "
            "write ranking.jsonl, selected.jsonl and report.json. Pool/target: a .jsonl file, "
            "an HF dataset id, 'offline' (the instruction mix from the evals wheel) or "
            "'offline:CAT1,CAT2'."
        ),
    )
    p.add_argument("run_dir", help="run directory of `saekit train`, or an SAE directory")
    p.add_argument("--pool", default="offline", help="candidate pool (default: offline mix)")
    p.add_argument("--target", default=None, help="target exemplars (required unless --evaluate)")
    p.add_argument("--ratio", type=float, default=None, help="fraction to select, in (0, 1]")
    p.add_argument("--out", default=None, help="output dir (default RUN_DIR/selection)")
    p.add_argument("--sae", default=None, help="which dictionary of the run (default: the first)")
    p.add_argument("--model", default=None, help="override the model spec of the run")
    p.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="RUN_DIR",
        help="score MoNA with this run's dictionary too (e.g. an SNMF), as method mona_METHOD",
    )
    p.add_argument("--pooling", choices=["max", "mean"], default="max", help=doc["pooling"])
    p.add_argument(
        "--part", choices=["instruction", "response", "both"], default="both", help=doc["part"]
    )
    p.add_argument("--top-k", type=int, default=128, help="features kept per sample (0: all)")
    p.add_argument("--normalize", choices=["max", "none"], default="max", help=doc["normalize"])
    p.add_argument("--no-idf", action="store_true", help="do not down-weight common features")
    p.add_argument(
        "--aggregation",
        choices=["prototype", "subtask_max"],
        default="prototype",
        help="Jaccard to the mean target vector, or LESS max over target sub-tasks",
    )
    p.add_argument("--max-tokens", type=int, default=128, help="tokens per sample at most")
    p.add_argument("--batch-size", type=int, default=16, help=doc["batch_size"])
    p.add_argument("--no-baselines", action="store_true", help="MoNA only (skips RDS etc.)")
    p.add_argument("--seed", type=int, default=0, help=doc["seed"])
    p.add_argument("--instruction-field", default="instruction", help=fdoc["instruction"])
    p.add_argument("--response-field", default="response", help=fdoc["response"])
    p.add_argument("--category-field", default="category", help=fdoc["category"])
    p.add_argument("--hf-split", default="train", help=fdoc["hf_split"])
    g = p.add_argument_group("evaluation (--evaluate)")
    g.add_argument("--evaluate", action="store_true", help="retrieval + downstream evaluation")
    g.add_argument("--categories", type=int, default=24, help="held-out target categories")
    g.add_argument(
        "--per-category", type=int, default=120, help="pool samples per category at most"
    )
    g.add_argument(
        "--distractors", type=int, default=10, help="lexical distractors per target (offline)"
    )
    g.add_argument("--n-target", type=int, default=5, help="target exemplars per category")
    g.add_argument("--n-heldout", type=int, default=20, help="held-out samples per category")
    g.add_argument("--downstream", type=int, default=6, help="targets fine-tuned (0: none)")
    g.add_argument(
        "--ft-method",
        choices=["last_blocks", "lora", "both"],
        default="both",
        help="fine-tune the last blocks, LoRA adapters (needs saekit[lora]), or both",
    )
    g.add_argument("--ft-steps", type=int, default=32, help="fine-tuning steps per subset")
    g.add_argument("--ft-blocks", type=int, default=2, help="last blocks fine-tuned")
    g.add_argument("--ft-lr", type=float, default=1e-4, help="last-blocks learning rate")
    g.add_argument("--lora-lr", type=float, default=1e-3, help="LoRA learning rate")
    g.add_argument("--lora-rank", type=int, default=8, help="LoRA rank")
    g.add_argument(
        "--ft-precision",
        choices=["bfloat16", "float32"],
        default="bfloat16",
        help="autocast dtype of the fine-tuning steps (held-out losses: always float32)",
    )
    p.set_defaults(func=cmd_select)


def _ft_models(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    """The model each fine-tuning method runs on: LoRA needs the run's model on the HF backend."""
    methods = ["last_blocks", "lora"] if args.ft_method == "both" else [args.ft_method]
    if args.downstream == 0:
        return {}
    out = {m: model for m in methods}
    if "lora" in methods:
        if importlib.util.find_spec("peft") is None:
            raise SaekitError(
                "--ft-method lora needs peft: pip install 'saekit[lora]', or pass "
                "--ft-method last_blocks."
            )
        if model.is_transformer_lens:
            from saekit.models.hooks import build_hooked_model
            from saekit.recipe import load_run

            recipe, _ = load_run(args.run_dir, None)
            model_cfg = (
                recipe.model if args.model is None else replace(recipe.model, name=args.model)
            )
            out["lora"] = build_hooked_model(replace(model_cfg, backend="hf"))
    return out


def cmd_select(args: argparse.Namespace) -> None:
    from saekit.selection.config import DataFields, SelectConfig
    from saekit.selection.data import load_samples
    from saekit.selection.select import load_selector, select_data

    if not args.evaluate and args.target is None:
        raise SaekitError("Give --target TARGET (exemplars of the task), or use --evaluate.")
    ratio = args.ratio if args.ratio is not None else 0.05
    cfg = SelectConfig(
        ratio=ratio,
        pooling=args.pooling,
        part=args.part,
        top_k=args.top_k or None,
        normalize=args.normalize,
        idf=not args.no_idf,
        aggregation=args.aggregation,
        max_tokens=args.max_tokens,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    fields = DataFields(
        args.instruction_field, args.response_field, args.category_field, args.hf_split
    )
    out = Path(args.out) if args.out else RunDir(args.run_dir).selection
    if args.evaluate:
        from saekit.selection.finetune import FinetuneConfig
        from saekit.selection.report import downstream_table, run_selection_eval

        selector = load_selector(args.run_dir, args.sae, args.model)
        for other in args.also:
            selector.also(other)
        ft = FinetuneConfig(
            n_blocks=args.ft_blocks,
            steps=args.ft_steps,
            lr=args.ft_lr,
            lora_lr=args.lora_lr,
            lora_rank=args.lora_rank,
            lora_alpha=2 * args.lora_rank,
            precision=args.ft_precision,
        )
        result = run_selection_eval(
            selector,
            out,
            cfg,
            ft,
            args.pool,
            fields,
            args.categories,
            args.per_category,
            args.n_target,
            args.n_heldout,
            args.downstream,
            args.ratio,
            ft_models=_ft_models(args, selector.model),
            distractors=args.distractors,
        )
        if result["downstream"]:
            print(downstream_table(result["downstream"]))
        print(f"report: {out / 'selection.json'}")
        return
    pool = load_samples(args.pool, fields, "pool")
    target = load_samples(args.target, fields, "target")
    selector = load_selector(args.run_dir, args.sae, args.model)
    for other in args.also:
        selector.also(other)
    report = select_data(selector, pool, target, cfg, out, baselines=not args.no_baselines)
    print(
        f"selected {report['selected']} of {report['pool_after_dedup']} pool samples "
        f"({report['pool_size'] - report['pool_after_dedup']} duplicates dropped) for "
        f"{report['target_size']} target exemplars in {report['seconds_total']:.1f} s"
    )
    overlap = report["overlap_with_mona"]
    if overlap:
        print("overlap with baselines: " + ", ".join(f"{m} {v:.2f}" for m, v in overlap.items()))
    print(f"subset: {out / 'selected.jsonl'}   ranking: {out / 'ranking.jsonl'}")

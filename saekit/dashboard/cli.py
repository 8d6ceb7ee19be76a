"""`saekit dashboard RUN_DIR`: write the static feature dashboard of a run."""

from __future__ import annotations

import argparse
from typing import Any


def cmd_dashboard(args: argparse.Namespace) -> None:
    from saekit.dashboard.build import build_dashboard
    from saekit.interp.config import InterpConfig
    from saekit.interp.run import run_interp_eval

    cfg = InterpConfig(
        n_windows=args.windows,
        llm=args.llm,
        llm_model=args.llm_model,
        llm_features=args.llm_features,
    )
    if args.recompute or args.llm:
        run_interp_eval(args.run_dir, model_name=args.model, hook=args.hook, cfg=cfg)
    index = build_dashboard(args.run_dir, args.out, model_name=args.model, hook=args.hook, cfg=cfg)
    print(f"dashboard: {index}  (open it in a browser; no server needed)")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "dashboard", help="write a static HTML feature dashboard (scores features if needed)"
    )
    p.add_argument("run_dir", help="run directory of `saekit train`, or an SAE directory")
    p.add_argument("--out", default=None, help="site directory (default: RUN_DIR/dashboard)")
    p.add_argument("--model", default=None, help="override the model spec of the run")
    p.add_argument("--hook", default=None, help="hook to read (default: the SAE's own)")
    p.add_argument("--windows", type=int, default=256, help="held-out context windows to score on")
    p.add_argument(
        "--recompute", action="store_true", help="recompute interp.json even if it exists"
    )
    p.add_argument(
        "--llm",
        default="",
        help="also judge features with an LLM: 'local' (the offline SmolLM2-Instruct) or an "
        "OpenAI-compatible base URL, key from OPENAI_API_KEY (implies --recompute)",
    )
    p.add_argument("--llm-model", default="", help="model name for the LLM endpoint")
    p.add_argument("--llm-features", type=int, default=16, help="features the LLM judges")
    p.set_defaults(func=cmd_dashboard)

"""`run_interp_eval(RUN_DIR)`: feature statistics and LLM-free scores for every dictionary of a
run, written as `RUN_DIR/interp.json` (summary) and `RUN_DIR/interp/NAME/` (a feature table and
one JSON per feature, read by the dashboard)."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from saekit.data.text import build_windows
from saekit.dictionaries import Dictionary, load_dictionary
from saekit.errors import SaekitError
from saekit.interp.collect import FeatureCollector, FeatureData
from saekit.interp.config import InterpConfig
from saekit.interp.pages import TokenText, feature_records
from saekit.interp.scores import Scorer, score_features, summarize
from saekit.models.hooks import HookedModel, build_hooked_model
from saekit.recipe import load_run
from saekit.rundir import RunDir, write_json


def random_control(sae: Dictionary, seed: int) -> Dictionary:
    """The dictionary with random directions of the same per-latent norms (a null baseline)."""
    rand = copy.deepcopy(sae)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, dim in (("W_enc", 0), ("W_dec", 1)):
            w = getattr(rand, name)
            r = torch.randn(w.shape, generator=gen).to(w.dtype)
            w.copy_(r / r.norm(dim=dim, keepdim=True) * w.norm(dim=dim, keepdim=True))
    return rand


def _codes(sae: Dictionary, x_BTD: Tensor, mask_BT: Tensor) -> Tensor:
    z_BTS = torch.zeros(*mask_BT.shape, sae.d_sae)
    z_BTS[mask_BT.cpu()] = sae.encode(x_BTD[mask_BT].to(sae.W_enc.dtype)).float().cpu()
    return z_BTS


def _shuffled(z_BTS: Tensor, mask_BT: Tensor, gen: torch.Generator) -> Tensor:
    """Codes permuted across the batch's ordinary tokens: same values, no tie to the text."""
    out = z_BTS.clone()
    rows = out[mask_BT]
    out[mask_BT] = rows[torch.randperm(len(rows), generator=gen)]
    return out


def collect_codes(
    batches: Iterator[tuple[Tensor, Tensor, dict[str, Tensor], int]],
    d_sae: int,
    vocab: int,
    cfg: InterpConfig,
) -> dict[str, FeatureData]:
    """Run one collector per code variant over (tokens, mask, {variant: z}, first_window)."""
    collectors: dict[str, FeatureCollector] = {}
    for tokens_BT, mask_BT, codes, first in batches:
        for name, z_BTS in codes.items():
            if name not in collectors:
                collectors[name] = FeatureCollector(d_sae, vocab, cfg)
            collectors[name].update(tokens_BT, mask_BT, z_BTS, first)
    if not collectors:
        raise SaekitError("No held-out windows to compute feature statistics on.")
    return {name: c.finish() for name, c in collectors.items()}


def _model_batches(
    model: HookedModel,
    sae: Dictionary,
    hook: str,
    windows: Any,
    n: int,
    cfg: InterpConfig,
    progress: bool,
) -> Iterator[tuple[Tensor, Tensor, dict[str, Tensor], int]]:
    gen = torch.Generator().manual_seed(cfg.seed)
    variants = {"dictionary": sae}
    if "random" in cfg.controls:
        variants["random"] = random_control(sae, cfg.seed + 1)
    for start in tqdm(
        range(0, n, cfg.model_batch_size), desc=f"interp {hook}", disable=not progress
    ):
        tokens_BT = windows.get(start, min(cfg.model_batch_size, n - start)).to(model.device)
        mask_BT = windows.token_mask(tokens_BT)
        x_BTD = model.capture(tokens_BT, [hook])[hook].float()
        codes = {name: _codes(d, x_BTD, mask_BT) for name, d in variants.items()}
        if "shuffled" in cfg.controls:
            codes["shuffled"] = _shuffled(codes["dictionary"], mask_BT.cpu(), gen)
        yield tokens_BT.cpu(), mask_BT.cpu(), codes, start


def interp_dictionary(
    model: HookedModel,
    sae: Dictionary,
    hook: str,
    windows: Any,
    cfg: InterpConfig,
    out_dir: Path,
    progress: bool = True,
) -> dict[str, Any]:
    """Collect, score, write `out_dir/table.json` + `out_dir/features/I.json`; the summary."""
    sae = sae.eval().to(model.device)
    width = model.width(hook)
    if width != sae.d_in:
        raise SaekitError(
            f"The dictionary reads d_in={sae.d_in} but hook {hook!r} has width "
            f"{width}; score it on the hook it was trained on."
        )
    n = min(cfg.n_windows, len(windows))
    vocab = int(windows.windows_NT[:n].max()) + 1
    with torch.no_grad():
        data = collect_codes(
            _model_batches(model, sae, hook, windows, n, cfg, progress), sae.d_sae, vocab, cfg
        )
    main = data.pop("dictionary")
    scorer = Scorer(main, cfg, vocab)
    scores = scorer.score(list(range(sae.d_sae)), progress)
    summary: dict[str, Any] = {"hook": hook, "d_sae": sae.d_sae, "n_tokens": main.n_tokens}
    if sae.is_transcoder:  # latents read `hook` and write the MLP output at output_hook
        summary["output_hook"] = sae.cfg.output_hook
    alive = int((main.counts_S > 0).sum())
    summary |= {"alive": alive, "dead_fraction": 1 - alive / sae.d_sae} | summarize(scores)
    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(sae.d_sae, generator=gen).tolist()
    subset = order[: cfg.control_features]
    summary["controls"] = {
        name: summarize(score_features(d, cfg, vocab, subset, progress)) for name, d in data.items()
    }
    summary["dictionary_subset"] = summarize({s: scores[s] for s in subset})
    if cfg.llm:
        from saekit.interp.llm import make_client, score_with_llm

        scorable = [s for s in order if scores[s]["detection"] is not None]
        text = TokenText(model.tokenizer)
        summary["llm"] = score_with_llm(
            scorer,
            scores,
            scorable[: cfg.llm_features],
            make_client(cfg.llm, cfg.llm_model),
            text,
            cfg.llm_examples,
        )
    table = feature_records(model, sae, main, scores, cfg, out_dir / "features")
    write_json(out_dir / "table.json", table, indent=None)
    return summary


def run_interp_eval(
    path: str | Path,
    model_name: str | None = None,
    hook: str | None = None,
    cfg: InterpConfig | None = None,
    model: HookedModel | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score every dictionary of a run (or one SAE dir); write interp.json into `out_dir`."""
    cfg = cfg or InterpConfig()
    run = Path(path)
    recipe, targets = load_run(run, hook)
    if model_name is not None:
        recipe = replace(recipe, model=replace(recipe.model, name=model_name))
    out = RunDir(out_dir if out_dir is not None else run)
    if model is None:
        model = build_hooked_model(recipe.model)
    windows = build_windows(
        recipe.data, model.tokenizer, "eval", max_tokens=cfg.n_windows * recipe.data.context_size
    )
    if recipe.data.context_size < cfg.example_len:
        cfg = replace(cfg, example_len=recipe.data.context_size)
    report: dict[str, Any] = {
        "run": str(run),
        "model": recipe.model.name,
        "config": json.loads(json.dumps(asdict(cfg))),
        "saes": {},
    }
    for name, sae_dir, sae_hook in targets:
        sae = load_dictionary(sae_dir)
        features_dir = out.interp_dir(name)
        summary = interp_dictionary(model, sae, sae_hook, windows, cfg, features_dir, progress)
        report["saes"][name] = summary | {"features_dir": str(features_dir.relative_to(out.path))}
    write_json(out.interp, report, indent=None)
    return report


def load_interp(path: str | Path) -> dict[str, Any] | None:
    """The interp.json of a run dir, or None when it has not been computed."""
    run = RunDir(path)
    return run.read_json(run.interp)

"""`run_interp_eval(RUN_DIR)`: feature statistics and LLM-free scores for every dictionary of a
run, written as `RUN_DIR/interp.json` (summary) and `RUN_DIR/interp/NAME/` (a feature table and
one JSON per feature, read by the dashboard)."""

from __future__ import annotations

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
from saekit.eval.controls import CONTROLS, control_dictionaries
from saekit.interp.collect import FeatureCollector, FeatureData
from saekit.interp.config import InterpConfig
from saekit.interp.embed import MiniLMEmbedder, TokenEmbedder
from saekit.interp.pages import TokenText, feature_records
from saekit.interp.scores import Scorer, feature_scores, score_features, summarize
from saekit.models.hooks import HookedModel, build_hooked_model
from saekit.recipe import load_run
from saekit.rundir import RunDir, write_json


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
    embedder: TokenEmbedder | None = None,
) -> dict[str, FeatureData]:
    """Run one collector per code variant over (tokens, mask, {variant: z}, first_window).

    With an embedder, every batch's tokens are embedded once (shared by the variants): the
    collectors sum them per feature and the examples keep theirs for the embedding scores.
    """
    collectors: dict[str, FeatureCollector] = {}
    ex_emb: list[Tensor] = []
    L = cfg.example_len
    for tokens_BT, mask_BT, codes, first in batches:
        emb_BTE = embedder(tokens_BT, mask_BT) if embedder is not None else None
        if emb_BTE is not None:
            nc = tokens_BT.shape[1] // L
            ex_emb.append(emb_BTE[:, : nc * L].reshape(-1, L, emb_BTE.shape[-1]).half())
        for name, z_BTS in codes.items():
            if name not in collectors:
                collectors[name] = FeatureCollector(d_sae, vocab, cfg)
            collectors[name].update(tokens_BT, mask_BT, z_BTS, first, emb_BTE)
    if not collectors:
        raise SaekitError("No held-out windows to compute feature statistics on.")
    shared = torch.cat(ex_emb) if ex_emb else None
    return {name: replace(c.finish(), ex_emb_CLE=shared) for name, c in collectors.items()}


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
    built = tuple(c for c in CONTROLS if c in cfg.controls)
    variants = {"dictionary": sae, **control_dictionaries(sae, cfg.seed + 1, built)}
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
    embedder = MiniLMEmbedder(model.tokenizer) if cfg.embedding else None
    with torch.no_grad():
        data = collect_codes(
            _model_batches(model, sae, hook, windows, n, cfg, progress),
            sae.d_sae,
            vocab,
            cfg,
            embedder,
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
    control_scores = {
        name: score_features(d, cfg, vocab, subset, progress) for name, d in data.items()
    }
    summary["controls"] = {name: summarize(sc) for name, sc in control_scores.items()}
    summary["dictionary_subset"] = summarize({s: scores[s] for s in subset})
    summary["scores"] = {
        k: v.to_json() for k, v in feature_scores(scores, control_scores, cfg.seed).items()
    }
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

"""Attributions checked against interventions: `saekit attribute validate RUN`.

On each of n held-out prompts (windows of the run's eval split cut to `prompt_tokens`), the
target is the logit difference of the model's top two next-token predictions. Through each
dictionary:
    top     the n_ablate (position, feature) activations with the largest attribution
    random  n_ablate drawn uniformly from every active one, `random_draws` times
are ablated (their codes set to 0, the error and every other code kept: h = y − Σ z W_dec),
and the effect is the target's drop m(clean) − m(ablated). The paired difference
top − mean(random) is averaged over prompts with a percentile-bootstrap interval; attribution
passes when the interval lies above 0. The drop the attributions predict (the sum of the
ablated ones) is reported next to the measured one.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from saekit.attribution.attribute import Metric, attribute_splice
from saekit.attribution.config import AttributeConfig, ValidateConfig
from saekit.attribution.splice import Nodes, Splice, check_splice, decompose, describe, run_spliced
from saekit.data.text import build_windows
from saekit.errors import SaekitError
from saekit.models.hooks import HookedModel
from saekit.recipe import Recipe


def held_out_prompts(model: HookedModel, recipe: Recipe, cfg: ValidateConfig) -> list[Tensor]:
    """n_prompts [1, prompt_tokens] prompts: distinct eval-split windows, seeded choice."""
    if recipe.data.context_size < cfg.prompt_tokens:
        raise SaekitError(
            f"prompt_tokens {cfg.prompt_tokens} exceeds the run's context_size "
            f"{recipe.data.context_size}; pass --prompt-tokens {recipe.data.context_size}."
        )
    windows = build_windows(recipe.data, model.tokenizer, "eval")
    if len(windows) < cfg.n_prompts:
        raise SaekitError(
            f"The eval split holds {len(windows)} windows, fewer than --n-prompts "
            f"{cfg.n_prompts}; pass --n-prompts {len(windows)}."
        )
    gen = torch.Generator().manual_seed(cfg.seed)
    picked = torch.randperm(len(windows), generator=gen)[: cfg.n_prompts]
    return [windows.get(int(i), 1)[:, : cfg.prompt_tokens].to(model.device) for i in picked]


def ablated(nodes: Nodes, W_dec_SD: Tensor, pos_E: Tensor, feat_E: Tensor, sets: Tensor) -> Tensor:
    """[1 + R, T, D]: the clean activation, then y − Σ z W_dec over each set of entries."""
    y_TD = nodes.y_TD
    out = y_TD.expand(1 + len(sets), -1, -1).clone()
    for r, entries in enumerate(sets, start=1):
        t_E, i_E = pos_E[entries], feat_E[entries]
        vec_ED = nodes.z_TS[t_E, i_E, None] * W_dec_SD[i_E]
        out[r].index_add_(0, t_E, -vec_ED.to(out))
    return out


def bootstrap_interval(x_P: Tensor, cfg: ValidateConfig) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of x over prompts."""
    gen = torch.Generator().manual_seed(cfg.seed)
    idx = torch.randint(len(x_P), (cfg.bootstrap, len(x_P)), generator=gen)
    means = x_P.double()[idx].mean(1)
    tail = (1 - cfg.confidence) / 2
    lo, hi = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64))
    return float(lo), float(hi)


@torch.no_grad()
def prompt_effects(
    model: HookedModel,
    s: Splice,
    tokens_1T: Tensor,
    attribute_cfg: AttributeConfig,
    cfg: ValidateConfig,
    gen: torch.Generator,
) -> dict[str, float]:
    """Measured and predicted drops of one prompt through one dictionary."""
    logits_V = model.run(tokens_1T)[0, -1].float()
    top2 = logits_V.topk(2).indices
    metric = Metric(int(top2[0]), int(top2[1]))
    nodes = decompose(model, s, tokens_1T)
    a = attribute_splice(model, s, tokens_1T, metric, attribute_cfg, nodes)
    n_active = len(a.attributions)
    if n_active <= cfg.n_ablate:
        raise SaekitError(
            f"{s.name}: only {n_active} active features on a prompt, not more than --n-ablate "
            f"{cfg.n_ablate}; lower --n-ablate or raise --prompt-tokens."
        )
    top_n = a.attributions.argsort(descending=True)[: cfg.n_ablate]
    rand_RN = torch.stack(
        [torch.randperm(n_active, generator=gen)[: cfg.n_ablate] for _ in range(cfg.random_draws)]
    )
    sets = torch.cat([top_n[None], rand_RN])
    W_dec_SD = s.dictionary.W_dec.detach()
    h_NTD = ablated(nodes, W_dec_SD, a.positions, a.features, sets)
    m_N = metric(run_spliced(model, s, tokens_1T, nodes.mask_T, h_NTD)).double()
    drops = m_N[0] - m_N[1:]
    return {
        "delta": a.delta,
        "relative_residual": a.relative_residual,
        "top": float(drops[0]),
        "random": float(drops[1:].mean()),
        "predicted_top": float(a.attributions[top_n].sum()),
        "predicted_random": float(a.attributions[rand_RN].sum(1).mean()),
    }


def summarize(rows: list[dict[str, float]], cfg: ValidateConfig) -> dict[str, Any]:
    """Means over prompts and the bootstrap interval of the paired difference."""
    col = {k: torch.tensor([r[k] for r in rows], dtype=torch.float64) for k in rows[0]}
    diff_P = col["top"] - col["random"]
    lo, hi = bootstrap_interval(diff_P, cfg)
    return {
        "prompts": len(rows),
        "drop_top": float(col["top"].mean()),
        "drop_random": float(col["random"].mean()),
        "difference": float(diff_P.mean()),
        "interval": [lo, hi],
        "confidence": cfg.confidence,
        "top_wins": float((diff_P > 0).double().mean()),
        "predicted_drop_top": float(col["predicted_top"].mean()),
        "predicted_drop_random": float(col["predicted_random"].mean()),
        "mean_abs_delta": float(col["delta"].abs().mean()),
        "max_relative_residual": float(col["relative_residual"].max()),
        "validated": lo > 0,
    }


def validate_attribution(
    model: HookedModel,
    recipe: Recipe,
    splices: list[Splice],
    attribute_cfg: AttributeConfig,
    cfg: ValidateConfig,
    progress: bool = True,
) -> dict[str, Any]:
    """The validation report of every splice (JSON-able)."""
    for s in splices:
        check_splice(model, s)
    prompts = held_out_prompts(model, recipe, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    rows: dict[str, list[dict[str, float]]] = {s.name: [] for s in splices}
    bar = tqdm(total=len(prompts) * len(splices), desc="attribute validate", disable=not progress)
    for tokens_1T in prompts:
        for s in splices:
            rows[s.name].append(prompt_effects(model, s, tokens_1T, attribute_cfg, cfg, gen))
            bar.update()
    bar.close()
    return {
        "target": "logit(top-1) − logit(top-2) of the model's next-token prediction",
        "n_ablate": cfg.n_ablate,
        "random_draws": cfg.random_draws,
        "prompt_tokens": cfg.prompt_tokens,
        "seed": cfg.seed,
        "dictionaries": {
            s.name: describe(s) | summarize(rows[s.name], cfg) | {"per_prompt": rows[s.name]}
            for s in splices
        },
    }


def validation_table(report: dict[str, Any]) -> str:
    """One line per dictionary: drops, the interval, the verdict."""
    lines = [
        f"{'dictionary':32s} {'drop top':>9s} {'random':>9s} {'diff':>9s} "
        f"{'interval':>19s} {'wins':>5s}  verdict"
    ]
    for name, d in report["dictionaries"].items():
        lo, hi = d["interval"]
        verdict = "top > random" if d["validated"] else "NOT validated (interval reaches 0)"
        lines.append(
            f"{name:32s} {d['drop_top']:9.3f} {d['drop_random']:9.3f} {d['difference']:9.3f} "
            f"[{lo:8.3f}, {hi:8.3f}] {d['top_wins']:5.2f}  {verdict}"
        )
    return "\n".join(lines)

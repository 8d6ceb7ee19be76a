"""Core evaluation of one dictionary on held-out tokens: reconstruction, sparsity, and the
language-model loss with the dictionary spliced into the forward pass.

Per batch of held-out windows, four forwards run: clean (recording the hook's activation),
spliced (activation → SAE reconstruction), zero ablation (→ 0) and mean ablation (→ the mean
activation over the evaluated tokens, estimated on the first batch). Splicing and ablation touch
ordinary tokens only: special positions (BOS) keep their activation, as the dictionary never
saw them in training and their norms are 10-100x the rest (an SAE spliced at BOS would measure
BOS, not the SAE). CE-loss recovered = (CE_zero − CE_sae) / (CE_zero − CE_clean), as in SAELens
(zero ablation); the mean-ablation score is reported next to it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from saekit.dictionaries import Dictionary
from saekit.errors import SaekitError
from saekit.eval.metrics import (
    ReconstructionStats,
    SparsityStats,
    ce_loss_score,
    density_histogram,
    kl_divergence_per_token,
    log10_density,
    next_token_loss,
)
from saekit.models.hooks import HookedModel


def _splice(mask_BT: Tensor, replace_fn: Any) -> Any:
    """An intervention replacing the activation at `mask_BT` positions by replace_fn(act)."""

    def edit(act_BTD: Tensor) -> Tensor:
        new_BTD = replace_fn(act_BTD).to(act_BTD.dtype)
        return torch.where(mask_BT[..., None].to(act_BTD.device), new_BTD, act_BTD)

    return edit


def _constant(value_D: Tensor, act_BTD: Tensor) -> Tensor:
    return value_D.expand_as(act_BTD)


def _run_recording(model: HookedModel, hook: str, tokens_BT: Tensor) -> tuple[Tensor, Tensor]:
    """(logits, activation at `hook`) of one full, unmodified forward."""
    recorded: list[Tensor] = []

    def record(act_BTD: Tensor) -> Tensor:
        recorded.append(act_BTD.detach())
        return act_BTD

    with model.intervene({hook: record}):
        logits = model.run(tokens_BT)
    return logits, recorded[0]


@torch.no_grad()
def evaluate_core(
    model: HookedModel,
    sae: Dictionary,
    hook: str,
    windows: Any,
    n_windows: int = 64,
    model_batch_size: int = 8,
    with_lm: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """All core metrics of `sae` on `n_windows` held-out windows read at `hook`."""
    width = model.width(hook)
    if width != sae.d_in:
        raise SaekitError(
            f"The dictionary reads d_in={sae.d_in} but hook {hook!r} has width "
            f"{width}; evaluate it on the hook it was trained on."
        )
    sae = sae.eval()
    n_windows = min(n_windows, len(windows))
    recon = ReconstructionStats(sae.d_in)
    sparsity = SparsityStats(sae.d_sae)
    sums = {
        "ce_clean": 0.0,
        "ce_sae": 0.0,
        "ce_zero": 0.0,
        "ce_mean": 0.0,
        "kl_sae": 0.0,
        "kl_zero": 0.0,
        "kl_mean": 0.0,
    }
    n_pred = 0
    mean_D: Tensor | None = None
    device = model.device
    starts = range(0, n_windows, model_batch_size)
    for start in tqdm(starts, desc=f"eval {hook}", disable=not progress):
        tokens_BT = windows.get(start, min(model_batch_size, n_windows - start)).to(device)
        mask_BT = windows.token_mask(tokens_BT)
        if with_lm:
            logits_clean, act_BTD = _run_recording(model, hook, tokens_BT)
        else:
            act_BTD = model.capture(tokens_BT, [hook])[hook]
        x_ND = act_BTD[mask_BT].float()
        z_NS = sae.encode(x_ND.to(sae.W_enc.dtype))
        x_hat_ND = sae.decode(z_NS).float()
        recon.update(x_ND, x_hat_ND)
        sparsity.update(z_NS)
        if not with_lm:
            continue
        if mean_D is None:
            mean_D = x_ND.mean(0)
        edits: dict[str, Callable[[Tensor], Tensor]] = {
            "sae": lambda a: sae(a.to(sae.W_enc.dtype)),
            "zero": torch.zeros_like,
            "mean": partial(_constant, mean_D),
        }
        ce_clean_BT = next_token_loss(logits_clean, tokens_BT)
        sums["ce_clean"] += float(ce_clean_BT.sum())
        for name, fn in edits.items():
            with model.intervene({hook: _splice(mask_BT, fn)}):
                logits = model.run(tokens_BT)
            sums[f"ce_{name}"] += float(next_token_loss(logits, tokens_BT).sum())
            kl_N = kl_divergence_per_token(
                logits_clean[:, :-1].flatten(0, 1), logits[:, :-1].flatten(0, 1)
            )
            sums[f"kl_{name}"] += float(kl_N.sum())
        n_pred += int(ce_clean_BT.numel())
    r = recon.compute()
    s = sparsity.compute()
    n_tok = int(r.n_tokens)
    hist = density_histogram(sparsity.counts_S, n_tok)
    out: dict[str, Any] = {
        "hook": hook,
        "method": sae.method,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "n_tokens": n_tok,
        "fvu": float(r.fvu),
        "explained_variance": float(r.explained_variance),
        "mse": float(r.mse),
        "cosine": float(r.cosine),
        "l2_ratio": float(r.l2_ratio),
        "relative_reconstruction_bias": float(r.relative_reconstruction_bias),
        "l0_mean": s.l0.mean,
        "l0_min": s.l0.min,
        "l0_max": s.l0.max,
        "dead_fraction": float(s.dead_fraction),
        "dense_fraction": float(s.dense_fraction),
        "log10_density": log10_density(sparsity.counts_S, n_tok).tolist(),
        "density_histogram": {"counts": hist.counts_N.tolist(), "edges": hist.edges_N1.tolist()},
    }
    if with_lm and n_pred:
        avg = {k: v / n_pred for k, v in sums.items()}
        out.update(avg)
        out["ce_loss_score"] = float(
            ce_loss_score(
                torch.tensor(avg["ce_clean"]),
                torch.tensor(avg["ce_sae"]),
                torch.tensor(avg["ce_zero"]),
            )
        )
        out["ce_loss_score_mean_ablation"] = float(
            ce_loss_score(
                torch.tensor(avg["ce_clean"]),
                torch.tensor(avg["ce_sae"]),
                torch.tensor(avg["ce_mean"]),
            )
        )
    return out

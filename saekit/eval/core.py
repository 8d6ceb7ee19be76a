"""Core evaluation of one dictionary on held-out tokens: reconstruction, sparsity, and the
language-model loss with the dictionary spliced into the forward pass.

Two passes over the held-out windows, in batches of `model_batch_size`:
1. capture the hook's activation (the forward stops at the hook) → reconstruction and sparsity
   statistics, and the dataset mean of the activation;
2. (with_lm) four full forwards per batch: clean, spliced (activation → SAE reconstruction),
   zero ablation (→ 0) and mean ablation (→ the pass-1 mean over every evaluated token).
   A transcoder (eval/splice.py) replaces the activation it writes, the MLP's output, by its
   prediction from the MLP's input: its FVU is the MLP output's, and the baselines zero- and
   mean-ablate the MLP. Pass 1
   costs at most one more forward per batch (~1/4 of pass 2) and makes the mean-ablation
   baseline independent of model_batch_size, which a first-batch estimate is not.

Positions. Splicing and ablation touch ordinary tokens only: special positions (BOS) keep their
activation, as the dictionary never saw them in training and their norms are 10-100x the rest
(an SAE spliced at BOS would measure BOS, not the SAE). CE is averaged over the next-token
predictions made at ordinary positions and KL over every ordinary position (the last included),
as SAELens does with `exclude_special_tokens`: the prediction made at a position-0 BOS sees no
edited activation, so counting it would shrink every CE/KL difference by 1/(T − 1).
CE-loss recovered = (CE_zero − CE_sae) / (CE_zero − CE_clean), as in SAELens (zero ablation);
the mean-ablation score is reported next to it.
"""

from __future__ import annotations

from collections.abc import Iterator
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
from saekit.eval.splice import Rows, splice
from saekit.models.hooks import HookedModel


def _batches(
    windows: Any, n_windows: int, batch_size: int, device: torch.device, bar: tqdm, forwards: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """(tokens, ordinary-token mask) per batch of windows [0, n_windows); `bar` advances by
    the `forwards` the caller runs on each batch once it is done."""
    for start in range(0, n_windows, batch_size):
        n = min(batch_size, n_windows - start)
        tokens_BT = windows.get(start, n).to(device)
        yield tokens_BT, windows.token_mask(tokens_BT).to(device)
        bar.update(n * forwards)


def _lm_metrics(
    model: HookedModel,
    sae: Dictionary,
    hook: str,
    batches: Iterator[tuple[Tensor, Tensor]],
    mean_O: Tensor,
) -> dict[str, float]:
    """Mean CE of clean/spliced/ablated forwards and KL of each to the clean one. A
    transcoder replaces the activation it writes (the MLP's output): the ablations zero it or
    set it to its mean (`mean_O`), the MLP's own zero- and mean-ablation."""
    d_out = sae.d_out
    edits: dict[str, Rows] = {
        "sae": lambda x_ND: sae(x_ND.to(sae.W_enc.dtype)),
        "zero": lambda x_ND: x_ND.new_zeros(x_ND.shape[0], d_out),
        "mean": lambda x_ND: mean_O.to(x_ND.device).expand(x_ND.shape[0], d_out),
    }
    sums = dict.fromkeys(["ce_clean", *(f"{p}_{n}" for n in edits for p in ("ce", "kl"))], 0.0)
    n_pred = n_pos = 0
    for tokens_BT, mask_BT in batches:
        pred_BT = mask_BT[:, :-1]  # the prediction of token t+1 is made at position t
        logits_clean = model.run(tokens_BT)
        sums["ce_clean"] += float(next_token_loss(logits_clean, tokens_BT)[pred_BT].sum())
        for name, fn in edits.items():
            with model.intervene(splice(sae, hook, mask_BT, fn)):
                logits = model.run(tokens_BT)
            sums[f"ce_{name}"] += float(next_token_loss(logits, tokens_BT)[pred_BT].sum())
            kl_N = kl_divergence_per_token(logits_clean[mask_BT], logits[mask_BT])
            sums[f"kl_{name}"] += float(kl_N.sum())
        n_pred += int(pred_BT.sum())
        n_pos += int(mask_BT.sum())
    if not n_pred:
        return {}
    avg = {k: v / (n_pos if k.startswith("kl") else n_pred) for k, v in sums.items()}
    clean, spliced = torch.tensor(avg["ce_clean"]), torch.tensor(avg["ce_sae"])
    avg["ce_loss_score"] = float(ce_loss_score(clean, spliced, torch.tensor(avg["ce_zero"])))
    avg["ce_loss_score_mean_ablation"] = float(
        ce_loss_score(clean, spliced, torch.tensor(avg["ce_mean"]))
    )
    return avg


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
    """All core metrics of `sae` on `n_windows` held-out windows read at `hook`; a
    transcoder's reconstruction metrics are those of its output hook (the MLP's output)."""
    hooks = [hook, sae.cfg.output_hook] if sae.is_transcoder else [hook]
    sides = (("reads d_in", sae.d_in), ("writes d_out", sae.d_out))
    for name, (side, width) in zip(hooks, sides, strict=False):
        if model.width(name) != width:
            raise SaekitError(
                f"The dictionary {side}={width} but hook {name!r} has width "
                f"{model.width(name)}; evaluate it on the hook it was trained on."
            )
    sae = sae.eval()
    n_windows = min(n_windows, len(windows))
    recon = ReconstructionStats(sae.d_out)
    sparsity = SparsityStats(sae.d_sae)
    device = model.device
    # One bar over both passes, in window forwards (1 capture + 4 LM forwards per window), so
    # its ETA is the whole evaluation's.
    forwards = 1 + 4 * with_lm
    bar = tqdm(total=n_windows * forwards, desc=f"eval {hook}", unit="fwd", disable=not progress)
    for tokens_BT, mask_BT in _batches(windows, n_windows, model_batch_size, device, bar, 1):
        acts = model.capture(tokens_BT, hooks)
        x_ND = acts[hook][mask_BT].float()
        z_NS = sae.encode(x_ND.to(sae.W_enc.dtype))
        recon.update(acts[hooks[-1]][mask_BT].float(), sae.reconstruct(x_ND, z_NS).float())
        sparsity.update(z_NS)
    out = {"hook": hook, **summarize(sae, recon, sparsity)}
    if sae.is_transcoder:
        out |= {"output_hook": sae.cfg.output_hook, "d_out": sae.d_out}
    n_tok = out["n_tokens"]
    if with_lm and n_tok:
        bar.set_postfix_str("LM loss with the SAE spliced in")
        batches = _batches(windows, n_windows, model_batch_size, device, bar, 4)
        out.update(_lm_metrics(model, sae, hook, batches, recon.mean_D))
    bar.close()
    return out


def summarize(
    sae: Dictionary, recon: ReconstructionStats, sparsity: SparsityStats
) -> dict[str, Any]:
    """Reconstruction and sparsity metrics of `sae` from accumulated statistics."""
    r = recon.compute()
    s = sparsity.compute()
    n_tok = int(r.n_tokens)
    hist = density_histogram(sparsity.counts_S, n_tok)
    return {
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

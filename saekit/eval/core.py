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

from collections.abc import Iterator, Mapping
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
from saekit.eval.window_units import WindowSums
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
    dictionaries: Mapping[str, Dictionary],
    hook: str,
    batches: Iterator[tuple[Tensor, Tensor]],
    mean_O: Tensor,
    sums: WindowSums,
    model_batch_size: int,
) -> dict[str, float]:
    """Mean CE of clean/spliced/ablated forwards and KL of each to the clean one.

    `dictionaries` maps "sae" (and any controls) to the dictionaries spliced in turn; the
    clean and ablated forwards are shared. Per-window sums go into `sums`. A transcoder
    replaces the activation it writes (the MLP's output): the ablations zero it or set it to
    its mean (`mean_O`), the MLP's own zero- and mean-ablation.
    """
    sae = dictionaries["sae"]
    d_out = sae.d_out
    edits: dict[str, Rows] = {
        **{name: _reconstruct(d) for name, d in dictionaries.items()},
        "zero": lambda x_ND: x_ND.new_zeros(x_ND.shape[0], d_out),
        "mean": lambda x_ND: mean_O.to(x_ND.device).expand(x_ND.shape[0], d_out),
    }
    for i, (tokens_BT, mask_BT) in enumerate(batches):
        first = i * model_batch_size
        pred_BT = mask_BT[:, :-1]  # the prediction of token t+1 is made at position t
        logits_clean = model.run(tokens_BT)
        nll_BT = next_token_loss(logits_clean, tokens_BT) * pred_BT
        sums.add_lm("ce_clean", first, nll_BT.sum(dim=1))
        sums.add_lm("n_pred", first, pred_BT.sum(dim=1))
        sums.add_lm("n_pos", first, mask_BT.sum(dim=1))
        for name, fn in edits.items():
            with model.intervene(splice(sae, hook, mask_BT, fn)):
                logits = model.run(tokens_BT)
            nll_BT = next_token_loss(logits, tokens_BT) * pred_BT
            sums.add_lm(f"ce_{name}", first, nll_BT.sum(dim=1))
            kl_BT = kl_divergence_per_token(logits_clean, logits) * mask_BT
            sums.add_lm(f"kl_{name}", first, kl_BT.sum(dim=1))
    n_pred, n_pos = sums.lm["n_pred"].sum(), sums.lm["n_pos"].sum()
    if not n_pred:
        return {}
    avg = {k: float(v.sum() / (n_pos if k.startswith("kl") else n_pred))
           for k, v in sums.lm.items() if k.startswith(("ce_", "kl_"))}  # fmt: skip
    clean, zero = torch.tensor(avg["ce_clean"]), torch.tensor(avg["ce_zero"])
    for name in dictionaries:
        spliced = torch.tensor(avg[f"ce_{name}"])
        avg[f"ce_loss_score_{name}"] = float(ce_loss_score(clean, spliced, zero))
    avg["ce_loss_score_mean_ablation"] = float(
        ce_loss_score(clean, torch.tensor(avg["ce_sae"]), torch.tensor(avg["ce_mean"]))
    )
    avg["ce_loss_score"] = avg.pop("ce_loss_score_sae")
    return avg


def _reconstruct(sae: Dictionary) -> Rows:
    return lambda x_ND: sae(x_ND.to(sae.W_enc.dtype))


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
    controls: Mapping[str, Dictionary] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """All core metrics of `sae` on `n_windows` held-out windows read at `hook`; a
    transcoder's reconstruction metrics are those of its output hook (the MLP's output).

    With `controls` ({name: dictionary}, e.g. eval/controls.py's), each control is evaluated
    on the same windows and batches (one more spliced forward per batch each): their
    metrics land under "controls" and every score under "scores", with a 95% interval over
    the held-out windows and the margin over the strongest control (eval/window_units.py).
    """
    hooks = [hook, sae.cfg.output_hook] if sae.is_transcoder else [hook]
    sides = (("reads d_in", sae.d_in), ("writes d_out", sae.d_out))
    for name, (side, width) in zip(hooks, sides, strict=False):
        if model.width(name) != width:
            raise SaekitError(
                f"The dictionary {side}={width} but hook {name!r} has width "
                f"{model.width(name)}; evaluate it on the hook it was trained on."
            )
    variants = {"sae": sae.eval(), **{n: d.eval() for n, d in (controls or {}).items()}}
    n_windows = min(n_windows, len(windows))
    recon = {v: ReconstructionStats(sae.d_out) for v in variants}
    sparsity = {v: SparsityStats(sae.d_sae) for v in variants}
    sums = WindowSums(n_windows, sae.d_out, variants)
    device = model.device
    # One bar over both passes, in window forwards (1 capture, then per window a clean forward,
    # one per spliced dictionary and two ablations), so its ETA is the whole evaluation's.
    lm_forwards = 3 + len(variants)
    forwards = 1 + lm_forwards * with_lm
    bar = tqdm(total=n_windows * forwards, desc=f"eval {hook}", unit="fwd", disable=not progress)
    for i, (tokens_BT, mask_BT) in enumerate(
        _batches(windows, n_windows, model_batch_size, device, bar, 1)
    ):
        first = i * model_batch_size
        acts = model.capture(tokens_BT, hooks)
        x_ND = acts[hook][mask_BT].float()
        y_NO = acts[hooks[-1]][mask_BT].float()  # the target: x itself for an SAE
        sums.add_windows(tokens_BT, mask_BT, first, y_NO)
        for name, d in variants.items():
            z_NS = d.encode(x_ND.to(d.W_enc.dtype))
            y_hat_NO = d.reconstruct(x_ND, z_NS).float()
            recon[name].update(y_NO, y_hat_NO)
            sparsity[name].update(z_NS)
            sums.add_reconstruction(name, mask_BT, first, y_NO, y_hat_NO, z_NS)
    out = {"hook": hook, **summarize(sae, recon["sae"], sparsity["sae"])}
    if sae.is_transcoder:
        out |= {"output_hook": sae.cfg.output_hook, "d_out": sae.d_out}
    if with_lm and out["n_tokens"]:
        bar.set_postfix_str("LM loss with the SAE spliced in")
        batches = _batches(windows, n_windows, model_batch_size, device, bar, lm_forwards)
        lm = _lm_metrics(
            model, variants, hook, batches, recon["sae"].mean_D, sums, model_batch_size
        )
        out.update({k: v for k, v in lm.items() if not _of_control(k, variants)})
    else:
        lm = {}
    bar.close()
    if controls:
        out["controls"] = {
            name: _control_metrics(name, recon[name], sparsity[name], lm) for name in controls
        }
    if out["n_tokens"]:
        out["scores"] = {k: s.to_json() for k, s in sums.scores("sae", seed).items()}
    return out


def _of_control(key: str, variants: Mapping[str, Dictionary]) -> bool:
    return any(key.endswith(f"_{v}") for v in variants if v != "sae")


def _control_metrics(
    name: str, recon: ReconstructionStats, sparsity: SparsityStats, lm: dict[str, float]
) -> dict[str, float]:
    r, s = recon.compute(), sparsity.compute()
    out = {
        "fvu": r.fvu,
        "explained_variance": r.explained_variance,
        "mse": r.mse,
        "cosine": r.cosine,
        "l2_ratio": r.l2_ratio,
        "l0_mean": s.l0.mean,
        "dead_fraction": s.dead_fraction,
    }
    for key in ("ce", "kl", "ce_loss_score"):
        if f"{key}_{name}" in lm:
            out[f"{key}_sae"] = lm[f"{key}_{name}"]
    if "ce_loss_score_sae" in out:
        out["ce_loss_score"] = out.pop("ce_loss_score_sae")
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

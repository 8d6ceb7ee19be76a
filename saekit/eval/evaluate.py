"""`saekit.evaluate`: the core metrics of one dictionary, on tensors or on a model's text.

    saekit.evaluate(sae, held_out_ND)                    # activations you hold: no model
    saekit.evaluate(sae, model=hooked, hook="blocks.6.hook_resid_post")   # + CE/KL spliced

On activations: reconstruction (FVU, explained variance, MSE, cosine, shrinkage) and sparsity
(L0, dead and dense fractions, firing density). With a model: the same on held-out text
windows, plus the language-model loss with the dictionary spliced in (`evaluate_core`). Each
metric is defined once in `metrics.py`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from saekit.data.text import DataConfig, build_windows
from saekit.dictionaries import Dictionary
from saekit.errors import SaekitError
from saekit.eval.core import evaluate_core, summarize
from saekit.eval.metrics import ReconstructionStats, SparsityStats
from saekit.models.hooks import HookedModel


@torch.no_grad()
def evaluate_activations(
    sae: Dictionary,
    acts_ND: Tensor,
    batch_size: int = 4096,
    progress: bool = False,
    target_NO: Tensor | None = None,
) -> dict[str, Any]:
    """Reconstruction and sparsity metrics of `sae` on activations [tokens, d_in]; a
    transcoder's against `target_NO`, the output hook's rows for the same tokens."""
    if acts_ND.ndim != 2 or acts_ND.shape[1] != sae.d_in:
        raise SaekitError(
            f"The dictionary reads d_in={sae.d_in}, got activations of shape "
            f"{tuple(acts_ND.shape)}; pass [tokens, {sae.d_in}] from the hook it was trained on."
        )
    if sae.is_transcoder and (target_NO is None or target_NO.shape != (len(acts_ND), sae.d_out)):
        raise SaekitError(
            f"A transcoder is scored on what it predicts: pass {{{sae.cfg.hook!r}: inputs, "
            f"{sae.cfg.output_hook!r}: outputs}}, [tokens, {sae.d_in}] and [tokens, "
            f"{sae.d_out}] for the same tokens."
        )
    sae = sae.eval()
    recon, sparsity = ReconstructionStats(sae.d_out), SparsityStats(sae.d_sae)
    device = sae.W_dec.device
    for start in tqdm(range(0, acts_ND.shape[0], batch_size), desc="eval", disable=not progress):
        x_ND = acts_ND[start : start + batch_size].to(device).float()
        y_NO = x_ND if target_NO is None else target_NO[start : start + batch_size].to(x_ND)
        z_NS = sae.encode(x_ND.to(sae.W_dec.dtype))
        recon.update(y_NO, sae.reconstruct(x_ND, z_NS).float())
        sparsity.update(z_NS)
    return summarize(sae, recon, sparsity)


def evaluate(
    sae: Dictionary,
    acts: Tensor | Mapping[str, Tensor] | None = None,
    *,
    model: HookedModel | None = None,
    hook: str | None = None,
    data: DataConfig | None = None,
    n_windows: int = 64,
    progress: bool = True,
) -> dict[str, Any]:
    """Core metrics of `sae` on `acts` [tokens, d_in] (a transcoder: {hook: inputs,
    output_hook: outputs}), or on `n_windows` held-out windows of
    `data` (default: the offline corpus) read at `hook` of `model` (default: the hook the
    dictionary was trained on), with CE/KL."""
    if (acts is None) == (model is None):
        raise SaekitError(
            "Give evaluate() either activations (a [tokens, d_in] tensor) or model=... "
            "(a HookedModel, e.g. saekit.load_model('smollm2-135m'))."
        )
    if isinstance(acts, Mapping):  # a transcoder's {hook: inputs, output_hook: outputs}
        x, y = acts.get(sae.cfg.hook), acts.get(sae.cfg.output_hook)
        if x is None or y is None or not sae.is_transcoder:
            raise SaekitError(
                f"Got activations of hooks {sorted(acts)}; pass this dictionary's input hook "
                f"{sae.cfg.hook!r} and output hook {sae.cfg.output_hook!r} (transcoders), or "
                "one [tokens, d_in] tensor (SAEs)."
            )
        return evaluate_activations(sae, x, progress=progress, target_NO=y)
    if acts is not None:
        return evaluate_activations(sae, acts, progress=progress)
    assert model is not None
    hook = hook or sae.cfg.hook
    if not hook:
        raise SaekitError("This dictionary records no hook; pass hook=... to evaluate().")
    data = data or DataConfig()
    windows = build_windows(data, model.tokenizer, "eval", max_tokens=n_windows * data.context_size)
    sae = sae.to(model.device)
    return evaluate_core(model, sae, hook, windows, n_windows=n_windows, progress=progress)

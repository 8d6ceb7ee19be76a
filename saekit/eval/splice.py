"""Splicing a dictionary into a model's forward: the activation it writes is replaced by its
output, computed from the activation it reads in the same forward.

An SAE reads and writes one hook: its edit maps the activation to sae(activation). A transcoder
(dictionaries/transcoder.py) reads `cfg.hook` and writes `cfg.output_hook`, later in the same
forward (an MLP's input, then its output): the edit at the read hook records the activation and
passes it on untouched, and the edit at the write hook replaces that hook's activation by
transcoder(recorded input) — the MLP is replaced by the transcoder, its own output dropped.

    with model.intervene(splice(sae, hook)):      # hook: the one it reads (default cfg.hook)
        logits = model.run(tokens_BT)

`mask_BT` limits the replacement to some positions (evaluation keeps BOS); `replace` substitutes
another function of the recorded input (ablations, or attribution's error-keeping variant);
its rows are those of the masked positions, [N, d_in] → [N, d_out]. The edits keep autograd
(no torch.no_grad here), so gradients flow through the dictionary when the caller allows it.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from saekit.dictionaries import Dictionary
from saekit.errors import SaekitError
from saekit.models.hooks import Intervention

Rows = Callable[[Tensor], Tensor]
"""Maps the input rows [N, d_in] read at the masked positions to their replacement [N, d_out]."""


def replace_rows(mask_BT: Tensor | None, source_BTD: Tensor, act_BTO: Tensor, fn: Rows) -> Tensor:
    """act with its rows at `mask_BT` (all rows if None) replaced by fn(the same rows of
    source): source is act itself for an SAE, the recorded input for a transcoder."""
    if mask_BT is None:
        return fn(source_BTD).to(act_BTO.dtype)
    mask = mask_BT.to(act_BTO.device)
    out_BTO = act_BTO.clone()
    out_BTO[mask] = fn(source_BTD[mask]).to(act_BTO.dtype)
    return out_BTO


def splice(
    sae: Dictionary,
    hook: str | None = None,
    mask_BT: Tensor | None = None,
    replace: Rows | None = None,
) -> dict[str, Intervention]:
    """Interventions for `HookedModel.intervene` splicing `sae` (or `replace`) in: {hook:
    edit} for an SAE, {input hook: record, output hook: replace} for a transcoder."""
    fn: Rows = replace if replace is not None else (lambda x: sae(x.to(sae.W_enc.dtype)))
    read = hook or sae.cfg.hook
    if not read:
        raise SaekitError("This dictionary records no hook; pass the hook it reads.")
    if not sae.is_transcoder:
        return {read: lambda act: replace_rows(mask_BT, act, act, fn)}
    recorded: list[Tensor] = []

    def record(act_BTD: Tensor) -> Tensor:
        recorded.append(act_BTD)
        return act_BTD

    def write(act_BTO: Tensor) -> Tensor:
        if not recorded:
            raise SaekitError(
                f"The transcoder writes {sae.cfg.output_hook!r} before its input {read!r} was "
                "seen in this forward: the input hook must come first (an MLP's input, then "
                "its output)."
            )
        return replace_rows(mask_BT, recorded.pop(), act_BTO, fn)

    return {read: record, sae.cfg.output_hook: write}

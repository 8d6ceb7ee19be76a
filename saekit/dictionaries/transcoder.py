"""Transcoders: a sparse dictionary that reads one hook and predicts another.

An SAE reconstructs the activation it reads. A transcoder (Dunefsky, Chlenski, Nanda 2024,
arXiv 2406.11944) reads an MLP's input and predicts the MLP's output, so its latents describe
what the MLP computes. Any of relu, topk, batchtopk, jumprelu and matryoshka becomes one by
setting `output_hook` (SAEConfig); `skip_connection` adds a linear path (a skip transcoder,
Paulo, Shabalin, Belrose 2025, arXiv 2501.18823):

    pre_BS  = x W_enc + b_enc                      no pre-bias centering: b_dec lives in the
    z_BS    = act(pre_BS)                          output space (d_out), not the input's (d_in)
    ŷ_BO    = z W_dec + b_dec  [+ x W_skipᵀ]       W_dec (S, d_out), W_skip (d_out, d_in), zero init

The activation and its sparse kernels are the method's own: after the encoder GEMM the decoder,
its backward and the encoder backward touch only the active latents, as for an SAE (the CSR
decode writes d_out columns, the encoder backward reads d_in ones). The loss is the method's,
with the output activation y as the target: mse = Σ_o (ŷ − y)², AuxK fits dead latents to
y − ŷ. At step 0 the trainer sets b_dec to the geometric median of y and b_enc to −median(x)
W_enc, which centres the pre-activations as an SAE's pre-bias does.

Splicing into a model (eval/splice.py: evaluation uses it, attribution can): the activation
at `output_hook` is replaced by the prediction from the activation at `hook`, captured earlier
in the same forward; steering adds a feature's W_dec row at `output_hook`. MLP input → output
of block L is, in TransformerLens names, `blocks.L.ln2.hook_normalized` →
`blocks.L.hook_mlp_out`; in HF module paths, `model.layers.L.mlp:in` → `model.layers.L.mlp`.

SAELens (>= 6) has inference classes for ReLU and JumpReLU transcoders, with or without skip;
saves use them (`SAELENS_TRANSCODERS`). BatchTopK and Matryoshka save as JumpReLU transcoders
with their global threshold, as their SAEs save as JumpReLU. SAELens has no TopK transcoder:
a TopK transcoder without skip whose d_out equals d_in (an MLP's input and output both have
width d_model) is saved as SAELens `topk` with apply_b_dec_to_input = false, which computes
exactly the transcoder, and metadata.hook_name_out, where SAELens' HookedSAETransformer splices
it; otherwise it is saved for saekit only ("saekit-topk").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from saekit.errors import SaekitError

if TYPE_CHECKING:
    from saekit.dictionaries.config import SAEConfig

TRANSCODER_METHODS = ("relu", "topk", "batchtopk", "jumprelu", "matryoshka")
"""Methods that train as transcoders (mp and snmf pursue or factor the activation they read)."""

SAELENS_TRANSCODERS = {
    "transcoder": ("relu", False),
    "skip_transcoder": ("relu", True),
    "jumprelu_transcoder": ("jumprelu", False),
    "jumprelu_skip_transcoder": ("jumprelu", True),
}
"""SAELens transcoder architecture → (saekit method, skip connection)."""


def check_transcoder(cfg: SAEConfig) -> None:
    """Refuse transcoder settings that cannot train (called by SAEConfig)."""
    if not cfg.output_hook:
        if cfg.skip_connection:
            raise SaekitError(
                "skip_connection adds a linear path from hook to output_hook, so it needs a "
                "transcoder: set output_hook (e.g. blocks.6.hook_mlp_out) or drop skip_connection."
            )
        return
    if cfg.method not in TRANSCODER_METHODS:
        raise SaekitError(
            f"Method {cfg.method} cannot be a transcoder (output_hook is set); use one of "
            f"{', '.join(TRANSCODER_METHODS)}, or leave output_hook empty."
        )
    if cfg.output_hook == cfg.hook:
        raise SaekitError(
            f"output_hook equals hook ({cfg.hook!r}): reconstructing the hook it reads is an "
            "SAE. Leave output_hook empty, or name the hook to predict."
        )


def saelens_architecture(sae_architecture: str, skip: bool, d_in: int, d_out: int) -> str:
    """The SAELens architecture a transcoder is saved as ("" = saekit only), given the one its
    method's SAE is saved as."""
    if sae_architecture == "standard":
        return "skip_transcoder" if skip else "transcoder"
    if sae_architecture == "jumprelu":
        return "jumprelu_skip_transcoder" if skip else "jumprelu_transcoder"
    if sae_architecture == "topk" and not skip and d_in == d_out:
        return "topk"
    return ""

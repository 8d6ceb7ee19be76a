"""TransformerLens hook names as HF module paths, for Llama-style models (SmolLM2, Llama, Qwen2).

A dictionary trained on `blocks.12.mlp.hook_post` can then read the same activation from the
plain HF model (`model.layers.12.mlp.down_proj:in`), which is what libraries that wrap HF
modules (peft's LoRA) need. TransformerLens is loaded without weight processing (no folded
norms, no centring), so both names carry the same tensor (within 1e-4 on SmolLM2).
"""

from __future__ import annotations

import re

from saekit.errors import SaekitError

_LAYER_RULES = {
    "hook_resid_pre": "model.layers.{L}:in",
    "hook_resid_mid": "model.layers.{L}.post_attention_layernorm:in",
    "hook_resid_post": "model.layers.{L}",
    "hook_attn_out": "model.layers.{L}.self_attn",
    "hook_mlp_out": "model.layers.{L}.mlp",
    "ln1.hook_normalized": "model.layers.{L}.input_layernorm",
    "ln2.hook_normalized": "model.layers.{L}.post_attention_layernorm",
    "mlp.hook_pre": "model.layers.{L}.mlp.gate_proj",
    "mlp.hook_post": "model.layers.{L}.mlp.down_proj:in",
}
_GLOBAL_RULES = {"ln_final.hook_normalized": "model.norm", "hook_embed": "model.embed_tokens"}
_LAYER = re.compile(r"blocks\.(\d+)\.(.+)")


def hf_hook_name(name: str) -> str:
    """The HF module path (`:in` for a module's input) of a TransformerLens hook name."""
    if name in _GLOBAL_RULES:
        return _GLOBAL_RULES[name]
    found = _LAYER.fullmatch(name)
    if found is not None and found.group(2) in _LAYER_RULES:
        return _LAYER_RULES[found.group(2)].format(L=found.group(1))
    known = ", ".join(["blocks.L." + k for k in _LAYER_RULES] + list(_GLOBAL_RULES))
    raise SaekitError(
        f"No HF module path is known for hook {name!r} (known: {known}); load the model with "
        "the transformer_lens backend, or give the HF module path yourself."
    )

"""LoRA adapters for the downstream check (Hu et al. 2021), through PyPI `peft`.

`peft` adapts `nn.Linear` modules, so LoRA needs the plain HF model (backend "hf"):
TransformerLens keeps its weights as raw parameters used in einsums. Adapters go on every
block's attention and MLP projections (the usual LoRA placement for Llama-style models); the
base weights are frozen throughout. The adapters are initialized once with a fixed seed and
reset to that initialization before each subset, so every subset starts from the same model,
and they are removed afterwards (`unload`), leaving the model's modules and flags as they were.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from saekit.errors import SaekitError
from saekit.models.hooks import HookedModel

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""Module names adapted in each Llama-style block (attention and SwiGLU MLP projections)."""


@dataclass
class LoraAdapters:
    """The trainable adapter weights of a model, and their initial values."""

    params: dict[str, nn.Parameter]
    initial: dict[str, torch.Tensor]

    def reset(self) -> list[nn.Parameter]:
        """Back to the initial adapters (B = 0: the model equals the base); the parameters."""
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(self.initial[name])
        return list(self.params.values())


@contextmanager
def lora_adapters(
    model: HookedModel, rank: int = 8, alpha: int = 16, seed: int = 0
) -> Iterator[LoraAdapters]:
    """LoRA adapters injected into `model` inside the block; removed (and flags restored) after."""
    if model.is_transformer_lens:
        raise SaekitError(
            "LoRA fine-tuning needs the plain HF model (peft adapts nn.Linear modules, which "
            "TransformerLens does not use); load the model with backend 'hf', or use "
            "--ft-method last_blocks."
        )
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise SaekitError(
            "LoRA fine-tuning needs peft: pip install 'saekit[lora]' (or use --ft-method "
            "last_blocks)."
        ) from None
    present = {name.rsplit(".", 1)[-1] for name, _ in model.model.named_modules()}
    targets = [t for t in LORA_TARGETS if t in present]
    if not targets:
        raise SaekitError(
            f"The model has none of the LoRA target modules ({', '.join(LORA_TARGETS)}); "
            "use --ft-method last_blocks."
        )
    flags = {id(p): p.requires_grad for p in model.model.parameters()}
    config = LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0, bias="none"
    )
    torch.manual_seed(seed)  # the random A matrices: the same start on every run
    peft_model = get_peft_model(model.model, config)
    params = {n: p for n, p in peft_model.named_parameters() if "lora_" in n}
    for p in params.values():
        p.requires_grad_(True)
    try:
        yield LoraAdapters(params, {n: p.detach().clone() for n, p in params.items()})
    finally:
        peft_model.unload()
        if "peft_config" in vars(model.model):
            del model.model.peft_config  # else a later injection warns of a second adapter
        for p in model.model.parameters():
            p.requires_grad_(flags.get(id(p), False))

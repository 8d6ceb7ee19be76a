"""Write a dictionary in the SAELens (>= 6) disk format; `saelens_format.py` reads it back.

A saved dictionary is a directory that `sae_lens.SAE.load_from_disk(dir)` loads as is:

    cfg.json                 SAELens keys (architecture, d_in, d_sae, dtype, k, metadata, ...)
                             + a "saekit" section SAELens ignores (it keeps only its own fields):
                               method, full SAEConfig, folded norm factor, state, provenance
    sae_weights.safetensors  W_enc (D,S), b_enc (S), W_dec (S,D), b_dec (D) [+ threshold (S)]
    sparsity.safetensors     optional: "sparsity" = log10 firing density per latent (S)

Methods SAELens lacks (snmf) are written the same way under architecture "saekit-METHOD",
which only saekit's `load_dictionary` reads (it dispatches on the saved method).

Weights are always written with apply_b_dec_to_input = True, normalize_activations = "none"
(the trainer folds its input scale first) and, for topk, rescale_acts_by_decoder_norm = False,
which are exactly saekit's forward semantics. Transcoders (transcoder.py) are written as
SAELens' transcoder classes: apply_b_dec_to_input = False, d_out, W_skip for skip
transcoders, and metadata.hook_name_out, the hook SAELens splices their output into.

Writes go to a temporary directory next to the target and are renamed into place, cfg.json
last, so a crash never leaves a cfg.json describing weights that were not written.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors.torch import save_file
from torch import Tensor

from saekit.config import to_dict
from saekit.errors import SaekitError
from saekit.files import follow_umask

if TYPE_CHECKING:
    from saekit.dictionaries.base import Dictionary

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SPARSITY_FILE = "sparsity.safetensors"
FORMAT_VERSION = 2
"""Version of the "saekit" cfg.json section; bump on incompatible changes.
2: each method's options in its own section of the config (1: flat keys, still read)."""

METADATA_FROM_PROVENANCE = ("model_name", "context_size", "prepend_bos", "dataset_path")
"""Provenance keys SAELens also records in its cfg.json metadata."""


def _saelens_version() -> str:
    # SAELens rewrites configs it believes older than 6.0.0, so never claim less than that.
    try:
        return importlib_metadata.version("sae-lens")
    except importlib_metadata.PackageNotFoundError:
        return "6.0.0"


def save_dictionary(d: Dictionary, path: str | Path, log10_density_S: Tensor | None = None) -> Path:
    """Write `d` to directory `path` (created or updated atomically); returns the path."""
    root = Path(path)
    tensors = {n: t.detach().cpu().contiguous() for n, t in d.export_tensors().items()}
    dtype_name = str(d.W_enc.dtype).removeprefix("torch.")
    meta = {k: d.provenance[k] for k in METADATA_FROM_PROVENANCE if k in d.provenance}
    transcoder = {"d_out": d.d_out} if d.is_transcoder else {}
    if d.is_transcoder:
        meta["hook_name_out"] = d.cfg.output_hook
    cfg_json: dict[str, Any] = {
        # No SAELens equivalent (snmf): same layout, an architecture only saekit loads.
        "architecture": d.saelens_name() or f"saekit-{d.method}",
        "d_in": d.d_in,
        **transcoder,
        "d_sae": d.d_sae,
        "dtype": dtype_name,
        "device": "cpu",
        "apply_b_dec_to_input": not d.is_transcoder,
        "normalize_activations": "none",
        "reshape_activations": "none",
        **d.saelens_config(),
        "metadata": {
            "sae_lens_version": _saelens_version(),
            "sae_lens_training_version": None,
            "hook_name": d.cfg.hook or None,
            "training_architecture": d.method,
            **meta,
        },
        "saekit": {
            "format": FORMAT_VERSION,
            "method": d.method,
            "d_in": d.d_in,
            **transcoder,
            "config": {**to_dict(d.cfg), "method": d.method},
            "folded_norm_factor": d.folded_norm_factor,
            **({"folded_out_norm_factor": d.folded_out_norm_factor} if d.is_transcoder else {}),
            "state": d.export_state(),
            "provenance": d.provenance,
        },
    }
    try:
        cfg_text = json.dumps(cfg_json, indent=2, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SaekitError(
            f"Cannot save to {root}: provenance/state must be JSON-serializable and finite "
            f"({exc}). Store plain numbers and strings in dictionary.provenance."
        ) from None
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
    try:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        if log10_density_S is not None:
            density = {"sparsity": log10_density_S.detach().float().cpu().contiguous()}
            save_file(density, str(tmp / SPARSITY_FILE))
        (tmp / CFG_FILE).write_text(cfg_text)
        follow_umask(tmp)  # mkdtemp made it 0700 and safetensors writes 0600
        if not root.exists():
            os.rename(tmp, root)
            return root
        if not root.is_dir():
            raise SaekitError(f"Cannot save to {root}: it exists and is not a directory.")
        if log10_density_S is None:
            (root / SPARSITY_FILE).unlink(missing_ok=True)  # stale from an earlier save
        for name in (WEIGHTS_FILE, SPARSITY_FILE, CFG_FILE):  # cfg.json last
            if (tmp / name).exists():
                os.replace(tmp / name, root / name)
        return root
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

"""Save and load dictionaries in the SAELens (>= 6) disk format; import SAELens-saved SAEs.

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
which are exactly saekit's forward semantics. Importing a SAELens directory converts the other
settings into the same semantics (folding decoder norms, moving b_dec into b_enc).

Writes go to a temporary directory next to the target and are renamed into place, cfg.json
last, so a crash never leaves a cfg.json describing weights that were not written.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, fields, replace
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from saekit.dictionaries.base import Dictionary, SAEConfig
from saekit.errors import SaekitError
from saekit.files import follow_umask

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SPARSITY_FILE = "sparsity.safetensors"
FORMAT_VERSION = 1
"""Version of the "saekit" cfg.json section; bump on incompatible changes."""

SAELENS_METHODS = {
    "standard": "relu",
    "topk": "topk",
    "jumprelu": "jumprelu",
    # SAELens training classes; their inference saves are already "jumprelu".
    "batchtopk": "jumprelu",
    "matryoshka_batchtopk": "jumprelu",
}
"""SAELens architecture → saekit method used to import it."""

_METADATA_FROM_PROVENANCE = ("model_name", "context_size", "prepend_bos", "dataset_path")
_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_DTYPES |= {"float16": torch.float16, "bfloat16": torch.bfloat16}


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
    meta = {k: d.provenance[k] for k in _METADATA_FROM_PROVENANCE if k in d.provenance}
    cfg_json: dict[str, Any] = {
        # No SAELens equivalent (snmf): same layout, an architecture only saekit loads.
        "architecture": d.saelens_architecture or f"saekit-{d.method}",
        "d_in": d.d_in,
        "d_sae": d.d_sae,
        "dtype": dtype_name,
        "device": "cpu",
        "apply_b_dec_to_input": True,
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
            "config": asdict(replace(d.cfg, method=d.method)),  # type: ignore[arg-type]
            "folded_norm_factor": d.folded_norm_factor,
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


def _read_cfg(root: Path) -> dict[str, Any]:
    cfg_path, weights_path = root / CFG_FILE, root / WEIGHTS_FILE
    if not (cfg_path.is_file() and weights_path.is_file()):
        raise SaekitError(
            f"No dictionary at {root}: expected a directory with {CFG_FILE} and {WEIGHTS_FILE} "
            "(written by saekit's Dictionary.save or SAELens' save_model). Check the path."
        )
    try:
        cfg_json = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SaekitError(
            f"{cfg_path} is not valid JSON ({exc}). Re-save the dictionary."
        ) from None
    if not isinstance(cfg_json, dict):
        raise SaekitError(f"{cfg_path} must hold a JSON object. Re-save the dictionary.")
    return cfg_json


def _read_tensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise SaekitError(
            f"{path} is not a readable safetensors file ({exc}). The save was interrupted or "
            "the file is corrupt: re-save or re-download the dictionary."
        ) from None


def load_log10_density(path: str | Path) -> Tensor | None:
    """The per-latent log10 firing density saved next to the weights, if any."""
    file = Path(path) / SPARSITY_FILE
    return _read_tensors(file)["sparsity"] if file.is_file() else None


def load_dictionary(path: str | Path) -> Dictionary:
    """Load a saekit save, or import a SAELens-saved SAE (standard, topk, jumprelu, batchtopk,
    matryoshka_batchtopk) into the saekit dictionary with identical encode/decode."""
    root = Path(path)
    cfg_json = _read_cfg(root)
    tensors = _read_tensors(root / WEIGHTS_FILE)
    try:
        if isinstance(cfg_json.get("saekit"), dict):
            return _load_saekit(cfg_json, tensors, root)
        return _import_saelens(cfg_json, tensors, root)
    except (KeyError, TypeError, ValueError) as exc:
        raise SaekitError(
            f"{root / CFG_FILE} is malformed ({type(exc).__name__}: {exc}). Re-save the dictionary."
        ) from None


def _build(cfg: SAEConfig, d_in: int, dtype_name: str, root: Path) -> Dictionary:
    from saekit.dictionaries import build_dictionary

    if dtype_name not in _DTYPES:
        raise SaekitError(f"{root / CFG_FILE}: unknown dtype {dtype_name!r}; use {list(_DTYPES)}.")
    return build_dictionary(cfg, d_in).to(_DTYPES[dtype_name])


def _check_shapes(d: Dictionary, tensors: dict[str, Tensor], root: Path) -> None:
    for name, want in d.export_tensors().items():
        got = tensors.get(name)
        if got is None or tuple(got.shape) != tuple(want.shape):
            found = "missing" if got is None else f"shape {tuple(got.shape)}"
            raise SaekitError(
                f"{root / WEIGHTS_FILE}: {name} is {found}, but {CFG_FILE} implies shape "
                f"{tuple(want.shape)} (d_in={d.d_in}, d_sae={d.d_sae}). The two files come "
                "from different saves: re-save the dictionary."
            )


def _load_saekit(cfg_json: dict[str, Any], tensors: dict[str, Tensor], root: Path) -> Dictionary:
    sk = cfg_json["saekit"]
    if int(sk.get("format", 0)) > FORMAT_VERSION:
        raise SaekitError(
            f"{root} was written by a newer saekit (format {sk['format']} > {FORMAT_VERSION}). "
            "Upgrade saekit to load it."
        )
    known = {f.name for f in fields(SAEConfig)}
    raw = {k: v for k, v in dict(sk["config"]).items() if k in known}
    raw = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}  # JSON lists
    cfg = replace(SAEConfig(**raw), method=sk["method"])
    d = _build(cfg, int(sk["d_in"]), str(cfg_json.get("dtype", "float32")), root)
    _check_shapes(d, tensors, root)
    for key in ("d_in", "d_sae"):  # the fields SAELens builds from: they must agree too
        width = getattr(d, key)
        if key in cfg_json and cfg_json[key] != width:
            raise SaekitError(
                f'{root / CFG_FILE}: "{key}" is {cfg_json[key]!r}, but the weights have {width} '
                f'(as its "saekit" section says), and SAELens reads "{key}". Set "{key}": '
                f"{width} in {CFG_FILE}, or re-save the dictionary."
            )
    d.import_tensors(tensors, dict(sk.get("state") or {}))
    d.folded_norm_factor = float(sk.get("folded_norm_factor", 1.0))
    d.provenance = dict(sk.get("provenance") or {})
    return d


def _import_saelens(cfg_json: dict[str, Any], tensors: dict[str, Tensor], root: Path) -> Dictionary:
    arch = cfg_json.get("architecture")
    if arch is None:  # SAELens < 6 configs: standard unless activation_fn says topk
        arch = "topk" if cfg_json.get("activation_fn") == "topk" else "standard"
        cfg_json.setdefault("k", (cfg_json.get("activation_fn_kwargs") or {}).get("k"))
    if arch not in SAELENS_METHODS:
        raise SaekitError(
            f"{root}: SAELens architecture {arch!r} has no saekit equivalent (saekit imports "
            f"{', '.join(SAELENS_METHODS)}). Load it with sae_lens.SAE.load_from_disk instead."
        )
    norm = cfg_json.get("normalize_activations") or "none"
    # SAELens applies "expected_average_only_in" only while training (folded at save).
    if norm not in ("none", "expected_average_only_in", True):
        raise SaekitError(
            f"{root}: normalize_activations={norm!r} rescales every input at run time, which "
            "saekit dictionaries do not do. Only 'none' and 'expected_average_only_in' import."
        )
    f64 = {n: t.double() for n, t in tensors.items()}
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        if name not in f64:
            raise SaekitError(f"{root / WEIGHTS_FILE} has no {name}: not an SAE save.")
    scaling = f64.pop("scaling_factor", None)
    if scaling is not None and not torch.allclose(scaling, torch.ones_like(scaling)):
        raise SaekitError(f"{root}: finetuning scaling factors are not supported by saekit.")
    W_enc, b_enc, W_dec, b_dec = f64["W_enc"], f64["b_enc"], f64["W_dec"], f64["b_dec"]
    if cfg_json.get("rescale_acts_by_decoder_norm"):
        # SAELens ranks pre·‖W_dec‖ and decodes z/‖W_dec‖; folding the norms into the encoder
        # gives the same codes with a plain decoder (SAELens does this at inference save).
        n_S = W_dec.norm(dim=1).clamp_min(1e-8)
        W_enc, b_enc, W_dec = W_enc * n_S, b_enc * n_S, W_dec / n_S[:, None]
    if not cfg_json.get("apply_b_dec_to_input", True):
        # x W_enc + b_enc = (x − b_dec) W_enc + (b_enc + b_dec W_enc)
        b_enc = b_enc + b_dec @ W_enc
    method = SAELENS_METHODS[arch]
    imported = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    if method == "jumprelu":
        imported["threshold"] = _saelens_threshold(f64, int(cfg_json["d_sae"]), root)
    metadata = cfg_json.get("metadata") or {}
    hook = metadata.get("hook_name") or cfg_json.get("hook_name") or cfg_json.get("hook_point")
    k = int(cfg_json["k"]) if method == "topk" else SAEConfig.k
    d_sae = int(cfg_json["d_sae"])
    cfg = SAEConfig(method=method, hook=hook or "", d_sae=d_sae, k=k)  # type: ignore[arg-type]
    d = _build(cfg, int(cfg_json["d_in"]), str(cfg_json.get("dtype", "float32")), root)
    _check_shapes(d, imported, root)
    d.import_tensors(imported, {})
    d.provenance = {
        "source": "sae_lens",
        "path": str(root),
        "architecture": arch,
        # "hook_z" SAEs read (n_heads·d_head)-flattened inputs; saekit expects them flattened.
        "reshape_activations": cfg_json.get("reshape_activations", "none"),
        **{key: metadata[key] for key in _METADATA_FROM_PROVENANCE if key in metadata},
    }
    return d


def _saelens_threshold(f64: dict[str, Tensor], d_sae: int, root: Path) -> Tensor:
    if "threshold" in f64:
        theta = f64["threshold"]
    elif "log_threshold" in f64:  # SAELens < 6.48 JumpReLU training checkpoints
        theta = f64["log_threshold"].exp()
    elif "topk_threshold" in f64:  # BatchTopK training checkpoint: one global scalar
        theta = f64["topk_threshold"].reshape(()).expand(d_sae)
    else:
        raise SaekitError(f"{root / WEIGHTS_FILE} has no threshold for its JumpReLU gate.")
    if not bool(torch.isfinite(theta).all()):
        raise SaekitError(f"{root / WEIGHTS_FILE}: threshold holds non-finite values.")
    # SAELens gates relu(pre)·[pre > θ]; with θ ≥ 0 that equals saekit's pre·[pre > θ].
    return theta.clamp(min=0.0)

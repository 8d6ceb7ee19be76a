"""Load saekit saves, and import SAELens-saved SAEs, into saekit dictionaries.

The format is described in save.py. A directory whose cfg.json holds a "saekit" section is
rebuilt from it (any method); otherwise it is a SAELens save, whose settings are converted
into saekit's forward semantics (folding decoder norms, moving b_dec into b_enc) so encode and
decode match SAELens'.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from saekit.config import from_dict
from saekit.dictionaries.base import Dictionary
from saekit.dictionaries.config import SAEConfig
from saekit.dictionaries.registry import build_dictionary, dictionary_class
from saekit.dictionaries.save import (
    CFG_FILE,
    FORMAT_VERSION,
    METADATA_FROM_PROVENANCE,
    SPARSITY_FILE,
    WEIGHTS_FILE,
)
from saekit.dictionaries.transcoder import SAELENS_TRANSCODERS
from saekit.errors import SaekitError

SAELENS_METHODS = {
    "standard": "relu",
    "topk": "topk",
    "jumprelu": "jumprelu",
    # SAELens training classes; their inference saves are already "jumprelu".
    "batchtopk": "jumprelu",
    "matryoshka_batchtopk": "jumprelu",
}
"""SAELens architecture → saekit method used to import it."""

_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_DTYPES |= {"float16": torch.float16, "bfloat16": torch.bfloat16}


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


def saved_hook(path: str | Path) -> str | None:
    """The hook a saved dictionary was trained on (cfg.json metadata), if it names one."""
    meta = _read_cfg(Path(path)).get("metadata") or {}
    hook = meta.get("hook_name") if isinstance(meta, dict) else None
    return str(hook) if hook else None


def load_log10_density(path: str | Path) -> Tensor | None:
    """The per-latent log10 firing density saved next to the weights, if any."""
    file = Path(path) / SPARSITY_FILE
    return _read_tensors(file)["sparsity"] if file.is_file() else None


def load_dictionary(path: str | Path) -> Dictionary:
    """Load a saekit save, or import a SAELens-saved SAE (standard, topk, jumprelu, batchtopk,
    matryoshka_batchtopk) or transcoder (transcoder, skip_transcoder, jumprelu_transcoder,
    jumprelu_skip_transcoder) into the saekit dictionary with identical encode/decode."""
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


def _build(
    cfg: SAEConfig, d_in: int, dtype_name: str, root: Path, d_out: int | None = None
) -> Dictionary:
    if dtype_name not in _DTYPES:
        raise SaekitError(f"{root / CFG_FILE}: unknown dtype {dtype_name!r}; use {list(_DTYPES)}.")
    return build_dictionary(cfg, d_in, d_out).to(_DTYPES[dtype_name])


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
    cfg = saved_config(dict(sk["config"]), str(sk["method"]), int(sk.get("format", 1)))
    d_out = int(sk["d_out"]) if "d_out" in sk else None
    d = _build(cfg, int(sk["d_in"]), str(cfg_json.get("dtype", "float32")), root, d_out)
    _check_shapes(d, tensors, root)
    widths = ("d_in", "d_out", "d_sae") if d.is_transcoder else ("d_in", "d_sae")
    for key in widths:  # the fields SAELens builds from: they must agree too
        width = getattr(d, key)
        if key in cfg_json and cfg_json[key] != width:
            raise SaekitError(
                f'{root / CFG_FILE}: "{key}" is {cfg_json[key]!r}, but the weights have {width} '
                f'(as its "saekit" section says), and SAELens reads "{key}". Set "{key}": '
                f"{width} in {CFG_FILE}, or re-save the dictionary."
            )
    d.import_tensors(tensors, dict(sk.get("state") or {}))
    d.folded_norm_factor = float(sk.get("folded_norm_factor", 1.0))
    d.folded_out_norm_factor = float(sk.get("folded_out_norm_factor", 1.0))
    d.provenance = dict(sk.get("provenance") or {})
    return d


def _import_saelens(cfg_json: dict[str, Any], tensors: dict[str, Tensor], root: Path) -> Dictionary:
    arch = cfg_json.get("architecture")
    if arch is None:  # SAELens < 6 configs: standard unless activation_fn says topk
        arch = "topk" if cfg_json.get("activation_fn") == "topk" else "standard"
        cfg_json.setdefault("k", (cfg_json.get("activation_fn_kwargs") or {}).get("k"))
    if arch not in SAELENS_METHODS and arch not in SAELENS_TRANSCODERS:
        known = ", ".join([*SAELENS_METHODS, *SAELENS_TRANSCODERS])
        raise SaekitError(
            f"{root}: SAELens architecture {arch!r} has no saekit equivalent (saekit imports "
            f"{known}). Load it with sae_lens.SAE.load_from_disk instead."
        )
    metadata = cfg_json.get("metadata") or {}
    hook = metadata.get("hook_name") or cfg_json.get("hook_name") or cfg_json.get("hook_point")
    hook_out = metadata.get("hook_name_out") or cfg_json.get("hook_name_out")
    if arch in SAELENS_TRANSCODERS and not hook_out:
        raise SaekitError(
            f"{root / CFG_FILE}: this {arch} names no output hook; add "
            '"hook_name_out": "HOOK" (e.g. blocks.L.hook_mlp_out) to its "metadata".'
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
    # A transcoder: SAELens' own classes, or a topk save that names an output hook (saekit
    # writes TopK transcoders so; transcoder.py). Transcoders never centre their input.
    transcoder = arch in SAELENS_TRANSCODERS or (bool(hook_out) and hook_out != hook)
    method, skip = SAELENS_TRANSCODERS.get(arch, (SAELENS_METHODS.get(arch, ""), False))
    if not transcoder and not cfg_json.get("apply_b_dec_to_input", True):
        # x W_enc + b_enc = (x − b_dec) W_enc + (b_enc + b_dec W_enc)
        b_enc = b_enc + b_dec @ W_enc
    imported = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    if skip:
        if "W_skip" not in f64:
            raise SaekitError(f"{root / WEIGHTS_FILE} has no W_skip for its skip connection.")
        imported["W_skip"] = f64["W_skip"]
    if method == "jumprelu":
        imported["threshold"] = _saelens_threshold(f64, int(cfg_json["d_sae"]), root)
    k = int(cfg_json["k"]) if method == "topk" else SAEConfig.k
    d_sae = int(cfg_json["d_sae"])
    cfg = SAEConfig(
        method=method,  # type: ignore[arg-type]
        hook=hook or "",
        d_sae=d_sae,
        k=k,
        output_hook=str(hook_out) if transcoder else "",
        skip_connection=skip,
    )
    d_out = int(W_dec.shape[1]) if transcoder else None
    d = _build(cfg, int(cfg_json["d_in"]), str(cfg_json.get("dtype", "float32")), root, d_out)
    _check_shapes(d, imported, root)
    d.import_tensors(imported, {})
    d.provenance = {
        "source": "sae_lens",
        "path": str(root),
        "architecture": arch,
        # "hook_z" SAEs read (n_heads·d_head)-flattened inputs; saekit expects them flattened.
        "reshape_activations": cfg_json.get("reshape_activations", "none"),
        **{key: metadata[key] for key in METADATA_FROM_PROVENANCE if key in metadata},
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


def saved_config(raw: dict[str, Any], method: str, version: int) -> SAEConfig:
    """The SAEConfig of a save: keys this saekit does not know are dropped (a newer minor
    version's fields); format-1 saves hold flat method keys, mapped without a warning (the
    user cannot rewrite a save, and re-saving upgrades it)."""
    dictionary_class(method)  # an unknown method names the known ones
    raw = {**raw, "method": method}
    if version < 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = SAEConfig.upgrade_legacy(raw, "")
    known = set(SAEConfig.__dataclass_fields__)
    return from_dict(SAEConfig, {k: v for k, v in raw.items() if k in known})

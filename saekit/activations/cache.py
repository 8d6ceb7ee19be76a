"""Disk cache of activations: memory-mapped shards + a manifest with checksums.

Layout of a cache directory:
    manifest.json                       hooks, widths, dtype, shard list with rows and sha256
    <hook>/shard_00000.bin              raw row-major [rows, d_in] in the cache dtype
Shards are written to a temp name and renamed once complete; the manifest is written last, so a
directory without a manifest is an unfinished cache and one whose shard size or checksum
disagrees with the manifest is reported as truncated or corrupt, never silently read.
bf16 rows are stored as their uint16 bit patterns (numpy has no bfloat16).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from saekit.activations.progress import TokenProgress
from saekit.activations.stream import BaseStream
from saekit.errors import SaekitError
from saekit.files import follow_umask

MANIFEST = "manifest.json"
_NP_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}


@dataclass(frozen=True)
class CacheConfig:
    """Where and how much to cache."""

    output_dir: str = "activations/smollm2-l12"
    """Directory of the cache (one of the same recipe is verified and reused; a different one
    is refused unless overwrite)."""
    n_tokens: int = 1_000_000
    """Tokens to cache per hook."""
    split: Literal["train", "eval"] = "train"
    """Documents to read: train, or eval for a held-out set (the held-out documents, as
    `saekit eval` reads them)."""
    shard_tokens: int = 262_144
    """Rows per shard file (262k rows × 576 × fp32 = 604 MB)."""
    dtype: str = "float32"
    """Storage dtype: float32, float16 or bfloat16."""
    verify: bool = True
    """Check every shard's sha256 when a cache is opened: by `saekit cache` before it reuses
    one, and by `saekit train` (cost: docs/benchmarks.md)."""
    overwrite: bool = False
    """Rebuild output_dir even if it holds a cache (a different or damaged one). The new cache
    is written next to it and swapped in when complete: a failed rebuild changes nothing."""

    def __post_init__(self) -> None:
        if self.dtype not in _NP_DTYPES:
            raise SaekitError(f"cache.dtype must be one of {list(_NP_DTYPES)}, got {self.dtype!r}.")
        if self.n_tokens < 1 or self.shard_tokens < 1:
            raise SaekitError("cache.n_tokens and cache.shard_tokens must be ≥ 1.")


def _dir_name(hook: str) -> str:
    return hook.replace("/", "_").replace(":", "__")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _stored(x: Tensor, dtype: str, hook: str) -> np.ndarray:
    """Rows in the storage dtype; refuses a cast that turns finite values into inf."""
    cast = x.to(getattr(torch, dtype))
    overflow = torch.isfinite(x) & ~torch.isfinite(cast)
    if bool(overflow.any()):
        n, top = int(overflow.sum()), float(x[overflow].abs().max())
        raise SaekitError(
            f"cache.dtype={dtype} turns {n} activation{'s' * (n > 1)} of hook {hook!r} into inf "
            f"(|x| up to {top:.3g}; {dtype} holds at most {torch.finfo(cast.dtype).max:.6g}). "
            "Nothing was written: rerun `saekit cache RECIPE --cache.dtype bfloat16` (the "
            "range of float32) or float32."
        )
    return (cast.view(torch.uint16) if dtype == "bfloat16" else cast).numpy()


def _write_shard(path: Path, rows: np.ndarray, out: Path) -> str:
    """Write under a temp name, fsync, rename: a failed write never leaves `path` behind."""
    partial = path.with_suffix(".partial")
    try:
        with partial.open("wb") as fh:
            fh.write(rows.tobytes())
            fh.flush()
            os.fsync(fh.fileno())
        partial.replace(path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise _write_error(out, path.name, rows.nbytes, exc) from None
    return _sha256(path)


def _write_error(out: Path, name: str, n_bytes: int, exc: OSError) -> SaekitError:
    """One clear message for a failed cache write (ENOSPC above all)."""
    if exc.errno == errno.ENOSPC:
        return SaekitError(
            f"The disk is full: writing {name} ({n_bytes / 1e6:.3g} MB) of the cache for {out} "
            "failed; the unfinished cache was removed and nothing in "
            f"{out} changed (a rebuild needs room for both caches until it swaps them). Free "
            "space or set cache.output_dir elsewhere, then rerun `saekit cache RECIPE`."
        )
    return SaekitError(
        f"Writing {name} of the cache for {out} failed ({exc.strerror or exc}); the unfinished "
        f"cache was removed and nothing in {out} changed. Fix the directory, then rerun "
        "`saekit cache RECIPE`."
    )


REBUILD = "rebuild the cache: `saekit cache RECIPE --cache.overwrite true`"
"""The advice every damaged-cache message ends with (RECIPE: the recipe that wrote it)."""


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        if not isinstance(manifest, dict) or manifest.get("dtype") not in _NP_DTYPES:
            raise ValueError
        if not isinstance(manifest.get("hooks"), dict) or not manifest["hooks"]:
            raise ValueError
    except (ValueError, UnicodeDecodeError):
        raise SaekitError(f"{path / MANIFEST} is corrupt (not a manifest); {REBUILD}.") from None
    return manifest


def _cache_files_only(out: Path) -> None:
    """Refuse to replace a directory holding anything but a (possibly unfinished) cache."""
    for entry in out.iterdir():
        names = [p.name for p in entry.iterdir()] if entry.is_dir() else [entry.name]
        for name in names:
            if not (
                (entry.is_dir() and re.fullmatch(r"shard_\d+\.(bin|partial)", name))
                or (not entry.is_dir() and name in (MANIFEST, MANIFEST + ".partial"))
            ):
                raise SaekitError(
                    f"{out} holds {entry.name}{'/' + name if entry.is_dir() else ''}, which is "
                    "not part of an activation cache; choose another cache.output_dir. "
                    "Nothing was changed."
                )


def reuse_cache(cfg: CacheConfig, provenance: dict[str, Any]) -> bool:
    """True when `cfg.output_dir` holds this cache and it verifies; False when it must be
    (re)built: absent, unfinished, or `cfg.overwrite`. Raises on a cache that is different
    or damaged, and on a directory holding other files."""
    out = Path(cfg.output_dir)
    if not out.exists():
        return False
    if not out.is_dir():
        raise SaekitError(f"cache.output_dir {out} is a file; choose another cache.output_dir.")
    if cfg.overwrite or not (out / MANIFEST).is_file():
        _cache_files_only(out)
        return False
    old = _read_manifest(out)
    if (old.get("provenance"), old.get("n_tokens"), old.get("dtype")) != (
        provenance,
        cfg.n_tokens,
        cfg.dtype,
    ):
        raise SaekitError(
            f"{out} already holds a different activation cache; choose another "
            "cache.output_dir, or replace it with --cache.overwrite true."
        )
    ActivationCache(out, verify=cfg.verify)  # a damaged cache raises with the rebuild command
    return True


def write_cache(stream: BaseStream, cfg: CacheConfig, provenance: dict[str, Any]) -> Path:
    """Pull `n_tokens` rows per hook from `stream` into shards; returns the cache dir.

    An existing cache of the same recipe is verified and reused. Otherwise the cache is built
    in a temporary directory next to `output_dir` and swapped in when complete, so a failure
    (or Ctrl-C) leaves `output_dir` as it was and no partial cache behind.
    """
    out = Path(cfg.output_dir)
    if reuse_cache(cfg, provenance):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        _fill(tmp, stream, cfg, provenance, out)
        follow_umask(tmp)  # mkdtemp made it 0700
        if out.exists():
            # Two renames: a crash between them leaves both complete copies under their names.
            aside = tmp.with_suffix(".old")
            os.rename(out, aside)
            os.rename(tmp, out)
            shutil.rmtree(aside)
        else:
            os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful swap
    return out


def _fill(
    tmp: Path, stream: BaseStream, cfg: CacheConfig, provenance: dict[str, Any], out: Path
) -> None:
    hooks = list(stream.d_in)
    manifest: dict[str, Any] = {
        "format": "saekit-activations-v1",
        "dtype": cfg.dtype,
        "n_tokens": cfg.n_tokens,
        "provenance": provenance,
        "hooks": {h: {"d_in": stream.d_in[h], "dir": _dir_name(h), "shards": []} for h in hooks},
    }
    for h in hooks:
        (tmp / _dir_name(h)).mkdir()
    pending: dict[str, list[Tensor]] = {h: [] for h in hooks}
    n_pending = 0
    written = 0
    progress = TokenProgress(cfg.n_tokens, "caching activations")
    progress.watch(stream)
    try:
        while written < cfg.n_tokens:
            batch = stream.next_batch()
            for h in hooks:
                pending[h].append(batch[h])
            n_rows = next(iter(batch.values())).shape[0]
            n_pending += n_rows
            progress.consume(n_rows)
            while n_pending >= cfg.shard_tokens or (
                n_pending and written + n_pending >= cfg.n_tokens
            ):
                rows = min(cfg.shard_tokens, n_pending, cfg.n_tokens - written)
                index = len(manifest["hooks"][hooks[0]]["shards"])
                for h in hooks:
                    joined = torch.cat(pending[h])
                    shard = tmp / _dir_name(h) / f"shard_{index:05d}.bin"
                    digest = _write_shard(shard, _stored(joined[:rows], cfg.dtype, h), out)
                    manifest["hooks"][h]["shards"].append(
                        {"file": shard.name, "rows": rows, "sha256": digest}
                    )
                    pending[h] = [joined[rows:]]
                n_pending -= rows
                written += rows
                if written >= cfg.n_tokens:
                    n_pending = 0
                    break
    finally:
        progress.close()
    manifest["norm_factors"] = stream.norm_factors
    text = json.dumps(manifest, indent=1)
    try:
        (tmp / MANIFEST).write_text(text)
    except OSError as exc:
        raise _write_error(out, MANIFEST, len(text), exc) from None


class ActivationCache:
    """A verified, read-only view of a cache directory: rows of each hook as memmaps."""

    def __init__(self, path: str | Path, verify: bool = True) -> None:
        self.path = Path(path)
        mpath = self.path / MANIFEST
        if not mpath.is_file():
            raise SaekitError(
                f"{self.path} is not an activation cache (no {MANIFEST}); build one "
                "with `saekit cache RECIPE`, or it was interrupted before finishing."
            )
        self.manifest = _read_manifest(self.path)
        self.dtype = self.manifest["dtype"]
        self.arrays: dict[str, list[np.ndarray]] = {}
        for hook, info in self.manifest["hooks"].items():
            self.arrays[hook] = [self._open(hook, info, s, verify) for s in info["shards"]]
        self.rows = sum(s["rows"] for s in next(iter(self.manifest["hooks"].values()))["shards"])

    def _open(
        self, hook: str, info: dict[str, Any], shard: dict[str, Any], verify: bool
    ) -> np.ndarray:
        path = self.path / info["dir"] / shard["file"]
        np_dtype = _NP_DTYPES[self.dtype]
        expected = shard["rows"] * info["d_in"] * np.dtype(np_dtype).itemsize
        if not path.is_file():
            raise SaekitError(f"Cache shard {path} of hook {hook!r} is missing; {REBUILD}.")
        if path.stat().st_size != expected:
            raise SaekitError(
                f"Cache shard {path} is truncated or padded ({path.stat().st_size} "
                f"bytes, manifest says {expected}); {REBUILD}."
            )
        if verify and _sha256(path) != shard["sha256"]:
            raise SaekitError(f"Cache shard {path} is corrupt (sha256 mismatch); {REBUILD}.")
        return np.memmap(path, dtype=np_dtype, mode="r", shape=(shard["rows"], info["d_in"]))

    def read(self, hook: str, start: int, count: int) -> Tensor:
        """Rows [start, start+count) of one hook as a float tensor (may span shards)."""
        out, shard_start = [], 0
        for arr in self.arrays[hook]:
            lo, hi = max(start, shard_start), min(start + count, shard_start + arr.shape[0])
            if lo < hi:
                out.append(torch.from_numpy(np.array(arr[lo - shard_start : hi - shard_start])))
            shard_start += arr.shape[0]
        x = torch.cat(out)
        return x.view(torch.bfloat16) if self.dtype == "bfloat16" else x

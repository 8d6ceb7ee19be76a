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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from saekit.activations.stream import BaseStream, StreamConfig
from saekit.errors import SaekitError

MANIFEST = "manifest.json"
_NP_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}


@dataclass(frozen=True)
class CacheConfig:
    """Where and how much to cache."""

    output_dir: str = "activations/smollm2-l12"
    """Directory to write the cache into (refused if it holds a different cache)."""
    n_tokens: int = 1_000_000
    """Tokens to cache per hook."""
    shard_tokens: int = 262_144
    """Rows per shard file (262k rows × 576 × fp32 = 604 MB)."""
    dtype: str = "float32"
    """Storage dtype: float32, float16 or bfloat16."""
    verify: bool = True
    """Check every shard's sha256 when a cache is opened (cost: docs/benchmarks.md)."""

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


def _to_numpy(x: Tensor, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return x.to(torch.bfloat16).view(torch.uint16).numpy()
    return x.to(getattr(torch, dtype)).numpy()


def _write_shard(path: Path, rows: np.ndarray) -> str:
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
        raise _write_error(path, rows.nbytes, exc) from None
    return _sha256(path)


def _write_error(path: Path, n_bytes: int, exc: OSError) -> SaekitError:
    """One clear message for a failed cache write (ENOSPC above all)."""
    if exc.errno == errno.ENOSPC:
        return SaekitError(
            f"The disk is full: writing {path.name} ({n_bytes / 1e6:.3g} MB) into {path.parent} "
            "failed and was removed; the cache is unfinished (no manifest). Free space or set "
            "cache.output_dir elsewhere, then rerun `saekit cache`."
        )
    return SaekitError(
        f"Writing {path} failed ({exc.strerror or exc}); it was removed and the cache is "
        "unfinished (no manifest). Fix the directory, then rerun `saekit cache`."
    )


def write_cache(stream: BaseStream, cfg: CacheConfig, provenance: dict[str, Any]) -> Path:
    """Pull `n_tokens` rows per hook from `stream` into shards; returns the cache dir."""
    out = Path(cfg.output_dir)
    if (out / MANIFEST).exists():
        old = json.loads((out / MANIFEST).read_text())
        same = (old.get("provenance"), old.get("n_tokens"), old.get("dtype"))
        if same != (provenance, cfg.n_tokens, cfg.dtype):
            raise SaekitError(
                f"{out} already holds a different activation cache; choose another "
                "cache.output_dir or delete it yourself."
            )
        return out
    hooks = list(stream.d_in)
    manifest: dict[str, Any] = {
        "format": "saekit-activations-v1",
        "dtype": cfg.dtype,
        "n_tokens": cfg.n_tokens,
        "provenance": provenance,
        "hooks": {h: {"d_in": stream.d_in[h], "dir": _dir_name(h), "shards": []} for h in hooks},
    }
    for h in hooks:
        (out / _dir_name(h)).mkdir(parents=True, exist_ok=True)
    pending: dict[str, list[Tensor]] = {h: [] for h in hooks}
    n_pending = 0
    written = 0
    with tqdm(total=cfg.n_tokens, desc="caching activations", unit="tok") as bar:
        while written < cfg.n_tokens:
            batch = stream.next_batch()
            for h in hooks:
                pending[h].append(batch[h])
            n_pending += next(iter(batch.values())).shape[0]
            while n_pending >= cfg.shard_tokens or (
                n_pending and written + n_pending >= cfg.n_tokens
            ):
                rows = min(cfg.shard_tokens, n_pending, cfg.n_tokens - written)
                index = len(manifest["hooks"][hooks[0]]["shards"])
                for h in hooks:
                    joined = torch.cat(pending[h])
                    shard = out / _dir_name(h) / f"shard_{index:05d}.bin"
                    digest = _write_shard(shard, _to_numpy(joined[:rows], cfg.dtype))
                    manifest["hooks"][h]["shards"].append(
                        {"file": shard.name, "rows": rows, "sha256": digest}
                    )
                    pending[h] = [joined[rows:]]
                n_pending -= rows
                written += rows
                bar.update(rows)
                if written >= cfg.n_tokens:
                    n_pending = 0
                    break
    manifest["norm_factors"] = stream.norm_factors
    text = json.dumps(manifest, indent=1)
    partial = out / (MANIFEST + ".partial")
    try:
        partial.write_text(text)
        partial.replace(out / MANIFEST)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise _write_error(out / MANIFEST, len(text), exc) from None
    return out


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
        try:
            self.manifest = json.loads(mpath.read_text())
        except json.JSONDecodeError:
            raise SaekitError(f"{mpath} is corrupt (not JSON); rebuild the cache.") from None
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
            raise SaekitError(f"Cache shard {path} of hook {hook!r} is missing; rebuild the cache.")
        if path.stat().st_size != expected:
            raise SaekitError(
                f"Cache shard {path} is truncated or padded ({path.stat().st_size} "
                f"bytes, manifest says {expected}); rebuild the cache."
            )
        if verify and _sha256(path) != shard["sha256"]:
            raise SaekitError(
                f"Cache shard {path} is corrupt (sha256 mismatch); rebuild the cache."
            )
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


class CachedActivationStream(BaseStream):
    """Serves a cache like the live stream: chunks of rows permuted by (seed, chunk index)."""

    def __init__(self, cfg: StreamConfig, verify: bool = True) -> None:
        assert cfg.cache_dir is not None
        self.cfg = cfg
        self.cache = ActivationCache(cfg.cache_dir, verify=verify)
        missing = [h for h in cfg.hooks if h not in self.cache.arrays]
        if missing:
            raise SaekitError(
                f"Cache {cfg.cache_dir} has no hook {missing[0]!r}; it holds "
                f"{sorted(self.cache.arrays)}."
            )
        self.d_in = {h: self.cache.manifest["hooks"][h]["d_in"] for h in cfg.hooks}
        self.norm_factors = {}
        self.n_tokens_served = 0
        # Same shuffle granularity as the live stream: ~buffer_sequences × 127 rows per chunk.
        self.chunk_rows = min(cfg.buffer_sequences * 127, self.cache.rows)
        self._position = 0
        self._chunk_id: int | None = None
        self._rows: dict[str, Tensor] = {}
        self.rank, self.world = 0, 1

    def shard(self, rank: int, world: int) -> None:
        """Serve data-parallel rank `rank` of `world`: its batch_size rows of each global batch
        of world·batch_size rows, so the ranks' batches concatenate to a 1-process batch."""
        self.rank, self.world = rank, world

    def _chunk(self, c: int) -> dict[str, Tensor]:
        start = c * self.chunk_rows
        count = min(self.chunk_rows, self.cache.rows - start)
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + c)
        perm = torch.randperm(count, generator=gen)
        dtype = getattr(torch, self.cfg.dtype)
        rows = {h: self.cache.read(h, start, count)[perm].to(dtype) for h in self.cfg.hooks}
        self._estimate_norm_factors(rows)
        return rows

    def next_batch(self) -> dict[str, Tensor]:
        pieces: dict[str, list[Tensor]] = {h: [] for h in self.cfg.hooks}
        need = self.cfg.batch_size
        # Every rank reads the same chunks (shared through the page cache) and keeps its slice.
        position = self._position + self.rank * need
        self._position += self.world * need
        while need > 0:
            pos = position % self.cache.rows  # endless epochs over the cache
            c, off = divmod(pos, self.chunk_rows)
            if self._chunk_id != c:
                self._rows, self._chunk_id = self._chunk(c), c
            rows = self._rows
            n_rows = next(iter(rows.values())).shape[0]
            take = min(need, n_rows - off)
            for h in self.cfg.hooks:
                pieces[h].append(rows[h][off : off + take])
            position += take
            need -= take
        self.n_tokens_served += self.cfg.batch_size
        return self._scaled({h: torch.cat(p) for h, p in pieces.items()})

    def state_dict(self) -> dict[str, Any]:
        return {
            "position": self._position,
            "norm_factors": dict(self.norm_factors),
            "n_tokens_served": self.n_tokens_served,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._position = int(state["position"])
        self.norm_factors = {k: float(v) for k, v in state["norm_factors"].items()}
        self.n_tokens_served = int(state["n_tokens_served"])
        self._chunk_id = None

"""Rows and caches shared by the activation-cache tests. Imported by name (unique across tests/)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saekit.activations.cache import CacheConfig, write_cache
from saekit.activations.tensors import TensorStream

HOOKS = ("blocks.0.hook_resid_post", "model.layers.1.mlp.down_proj:in")
PROVENANCE = {"model": "tiny", "data": "synthetic"}
INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


def in_order(rows: dict[str, Tensor], batch_size: int) -> TensorStream:
    """The rows in order, `batch_size` at a time, looping; special values served as they are."""
    return TensorStream(rows, batch_size, shuffle=False, check_finite=False)


def source_rows(n: int, dtype: torch.dtype, specials: bool = True) -> dict[str, Tensor]:
    """Random rows per hook; with `specials`, values whose bits are easy to lose (-0, inf, tiny)."""
    gen = torch.Generator().manual_seed(0)
    out = {}
    for i, h in enumerate(HOOKS):
        x = torch.randn(n, 8 + 4 * i, generator=gen) * 3
        if specials:
            x[0, :4] = torch.tensor([-0.0, float("inf"), -float("inf"), 1e-40])
        out[h] = x.to(dtype)
    return out


def bits(x: Tensor) -> Tensor:
    return x.view(INT_VIEW[x.dtype])


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def build(
    tmp_path: Path, n_tokens: int = 100, dtype: str = "float32", specials: bool = True, **kw: Any
) -> Path:
    rows = source_rows(n_tokens, getattr(torch, dtype), specials)
    cfg = CacheConfig(
        output_dir=str(tmp_path / "cache"), n_tokens=n_tokens, shard_tokens=32, dtype=dtype
    )
    return write_cache(in_order(rows, batch_size=24), cfg, kw.get("provenance", PROVENANCE))

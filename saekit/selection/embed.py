"""Samples → pooled vectors, several representations from one model forward.

A `Probe` reads one hook, maps each content token's activation to a nonnegative code (an SAE's
`encode`, the signed split of raw MLP neurons) or keeps it raw (RDS hidden states), and pools the
tokens of the chosen part by max or mean. Sparse probes keep each sample's top-K features.
Samples are batched by length (sorted) so padding stays small; the order is restored after.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm import tqdm

from saekit.errors import SaekitError
from saekit.eval.metrics import fvu
from saekit.models.hooks import HookedModel
from saekit.selection.config import SelectConfig
from saekit.selection.data import Sample
from saekit.selection.sparse import SparseVectors
from saekit.selection.tokens import SampleTokenizer, batch_tensors, content_mask

Encoder = Callable[[Tensor], Tensor]
"""Token activations [M, D] → nonnegative codes [M, F]."""


class FVUMeter:
    """The SAE's FVU on the first `max_tokens` content tokens it encodes (shortest samples
    first). docs/selection.md, pitfall 4: an SAE trained on other text or on another model may
    reconstruct this text badly, which the selection report should show."""

    def __init__(self, max_tokens: int = 8192) -> None:
        self.max_tokens = max_tokens
        self.x: list[Tensor] = []
        self.x_hat: list[Tensor] = []
        self.n = 0

    def wants_more(self) -> bool:
        return self.n < self.max_tokens

    def add(self, x_MD: Tensor, x_hat_MD: Tensor) -> None:
        self.x.append(x_MD.detach().float().cpu())
        self.x_hat.append(x_hat_MD.detach().float().cpu())
        self.n += len(x_MD)

    def fvu(self) -> float | None:
        if self.n < 2:
            return None
        return float(fvu(torch.cat(self.x), torch.cat(self.x_hat)))


@dataclass(frozen=True)
class Probe:
    """One representation: which hook, how tokens are coded and pooled."""

    name: str
    hook: str
    encode: Encoder | None
    """None: raw activations pooled into a dense vector (cosine baselines)."""
    pooling: str = "max"
    top_k: int | None = None
    meter: FVUMeter | None = None
    """Optional FVUMeter the encoder feeds (reported as the SAE's FVU on this text)."""


@dataclass
class Embedded:
    """Per-probe vectors for a list of samples, in the samples' order."""

    sparse: dict[str, SparseVectors]
    dense: dict[str, Tensor]
    content_tokens_N: Tensor
    """Pooled tokens per sample (for length-bias checks)."""


def signed_split(x_MD: Tensor) -> Tensor:
    """[relu(x), relu(−x)]: raw neurons as a nonnegative vector of width 2D (SwiGLU outputs
    are signed; Jaccard needs ≥ 0, and dropping the negative half would lose half the code)."""
    return torch.cat([x_MD.clamp_min(0), (-x_MD).clamp_min(0)], dim=-1)


def neuron_hook(hook: str, transformer_lens: bool) -> str:
    """The MLP hidden activation of the block an SAE hook sits in."""
    found = re.match(r"(blocks|model\.layers)\.(\d+)\.", hook + ".")
    if found is None:
        raise SaekitError(f"Cannot tell the layer of hook {hook!r}; pass --neuron-hook.")
    layer = int(found.group(2))
    return (
        f"blocks.{layer}.mlp.hook_post"
        if transformer_lens
        else f"model.layers.{layer}.mlp.down_proj:in"
    )


def final_hook(transformer_lens: bool) -> str:
    """The final normalized hidden state (what RDS mean-pools)."""
    return "ln_final.hook_normalized" if transformer_lens else "model.norm"


def pool_tokens(z_MF: Tensor, owner_M: Tensor, n: int, pooling: str) -> Tensor:
    """[n, F]: the max or mean of the rows of z_MF that belong to each sample (owner_M)."""
    out_NF = torch.zeros(n, z_MF.shape[1], dtype=torch.float32)
    if pooling == "max":
        # Sparse codes are ≥ 0, so zeros are a neutral start; raw vectors are mean-pooled.
        index_MF = owner_M[:, None].expand(-1, z_MF.shape[1])
        return out_NF.scatter_reduce_(0, index_MF, z_MF.float(), "amax", include_self=True)
    counts_N = torch.bincount(owner_M, minlength=n).clamp_min(1).unsqueeze(1)
    return out_NF.index_add_(0, owner_M, z_MF.float()) / counts_N


def embed(
    model: HookedModel,
    samples: Sequence[Sample],
    probes: Sequence[Probe],
    cfg: SelectConfig,
    progress: bool = True,
    desc: str = "embed",
) -> Embedded:
    """Vectors of every probe for `samples`, from one forward per batch (stopped early)."""
    if not samples:
        raise SaekitError("No samples to embed; give a non-empty pool and target.")
    tok = SampleTokenizer(model.tokenizer, cfg.max_tokens)
    items = [tok(s) for s in samples]
    order = sorted(range(len(items)), key=lambda i: (len(items[i].ids), i))
    hooks = list(dict.fromkeys(p.hook for p in probes))
    sparse_parts: dict[str, list[SparseVectors]] = {p.name: [] for p in probes if p.encode}
    dense_parts: dict[str, list[Tensor]] = {p.name: [] for p in probes if not p.encode}
    lengths: list[Tensor] = []
    batches = range(0, len(order), cfg.batch_size)
    for start in tqdm(batches, desc=desc, disable=not progress, unit="batch"):
        rows = order[start : start + cfg.batch_size]
        ids_BT, roles_BT = batch_tensors([items[i] for i in rows], tok.pad_id)
        acts = model.capture(ids_BT.to(model.device), hooks)
        mask_BT = content_mask(roles_BT, cfg.part)
        owner_M = mask_BT.nonzero()[:, 0]
        lengths.append(mask_BT.sum(dim=1))
        for p in probes:
            x_MD = acts[p.hook][mask_BT.to(acts[p.hook].device)].float().cpu()
            if p.encode is None:
                dense_parts[p.name].append(pool_tokens(x_MD, owner_M, len(rows), "mean"))
                continue
            with torch.no_grad():
                z_MF = p.encode(x_MD)
            pooled_BF = pool_tokens(z_MF.clamp_min(0).cpu(), owner_M, len(rows), p.pooling)
            sparse_parts[p.name].append(SparseVectors.from_dense(pooled_BF, p.top_k))
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    sparse = {n: _concat(parts).select(inverse) for n, parts in sparse_parts.items()}
    dense = {n: torch.cat(parts)[inverse] for n, parts in dense_parts.items()}
    return Embedded(sparse, dense, torch.cat(lengths)[inverse])


def _concat(parts: list[SparseVectors]) -> SparseVectors:
    """Rows of several batches; narrower K are padded with zero-valued slots."""
    k = max(p.indices_NK.shape[1] for p in parts)

    def pad(t: Tensor) -> Tensor:
        return torch.nn.functional.pad(t, (0, k - t.shape[1]))

    return SparseVectors(
        torch.cat([pad(p.indices_NK) for p in parts]),
        torch.cat([pad(p.values_NK) for p in parts]),
        parts[0].dim,
    )

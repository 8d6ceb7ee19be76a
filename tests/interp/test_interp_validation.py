"""Validation (docs/interpretability.md): on a generated corpus with planted token-triggered
features, the LLM-free scores separate the true features from random ones and from the same
codes shuffled across positions. No model: the codes are generated directly from the tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from planted_corpus import N_WINDOWS, PLANTED, VOCAB, S, batches, planted_codes

from saekit.interp import InterpConfig, score_features, summarize
from saekit.interp.run import collect_codes


@pytest.fixture(scope="module")
def scored():
    cfg = InterpConfig(example_len=8, reservoir=48, controls=())
    tokens, mask, z = planted_codes()
    out = {}
    for shuffle in (False, True):
        data = collect_codes(batches(tokens, mask, z, shuffle), S, VOCAB, cfg)["codes"]
        out[shuffle] = (data, score_features(data, cfg, VOCAB, progress=False))
    return out


def test_planted_features_score_high_and_get_their_trigger(scored):
    data, scores = scored[False]
    for j in range(PLANTED):
        s = scores[j]
        assert s["explanation"][0] == j + 1, s  # the trigger token is the first n-gram chosen
        # measured: 1.0, 1.0 and 0.961-0.996
        assert s["detection"] >= 0.99 and s["fuzzing"] >= 0.99 and s["simulation"] >= 0.95, s
    bigram = scores[PLANTED]
    assert VOCAB + 11 * VOCAB + 12 in bigram["explanation"]
    assert bigram["detection"] >= 0.92 and bigram["fuzzing"] >= 0.92  # 0.948, 0.934
    # density is per ordinary token: ~1/39 for a single-token trigger
    density = data.counts_S[:PLANTED].float() / data.n_tokens
    assert torch.allclose(density, torch.full((PLANTED,), 1 / 39), rtol=0.2)


def test_scores_separate_planted_from_random_and_shuffled(scored):
    """The README's validation figures (detection / fuzzing / simulation means): planted
    0.994 / 0.993 / 0.981, random 0.497 / 0.506 / 0.043, shuffled 0.470 / 0.496 / −0.016."""
    _, scores = scored[False]
    _, shuffled = scored[True]
    true = summarize({j: scores[j] for j in range(PLANTED + 1)})
    rand = summarize({j: scores[j] for j in range(PLANTED + 1, S)})
    shuf = summarize({j: shuffled[j] for j in range(PLANTED + 1)})
    assert true["scored"] == rand["scored"] == shuf["scored"] == PLANTED + 1
    for name in ("detection", "fuzzing"):
        assert true[f"{name}_mean"] >= 0.985
        for null in (rand, shuf):  # chance is 0.5
            assert abs(null[f"{name}_mean"] - 0.5) <= 0.05, (name, rand, shuf)
    assert true["simulation_mean"] >= 0.97
    assert abs(rand["simulation_mean"]) <= 0.08 and abs(shuf["simulation_mean"]) <= 0.08


def test_streaming_top_examples_match_a_full_sort(scored):
    data, _ = scored[False]
    tokens, mask, z = planted_codes()
    ex_max_ES = z.reshape(N_WINDOWS * 4, 8, S).amax(1)  # 4 examples of 8 tokens per window
    for s in (0, PLANTED, S - 1):
        expected = ex_max_ES[:, s].sort(descending=True).values[: data.top_max_SK.shape[1]]
        assert torch.allclose(data.top_max_SK[s], expected)
        for i, ex in enumerate(data.top_ex_SK[s].tolist()):
            assert torch.allclose(data.top_acts_SKL[s, i], z.reshape(-1, 8, S)[ex, :, s])
    assert np.array_equal(data.ex_max_CS.float().numpy(), ex_max_ES.half().float().numpy())

"""Sparse probing on planted features, and the results' shape (controls included).

SAEBench agreement is in test_probing_saebench.py, the controls' own tests in test_controls.py;
here the probe must find a planted latent (and fail on noise).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saekit.data.tasks import ProbingTask
from saekit.dictionaries import SAEConfig, build_dictionary
from saekit.errors import SaekitError
from saekit.eval.probing import RESIDUAL, ProbingConfig, evaluate_probing, task_scores
from saekit.models.hooks import HookedModel

HOOK = "blocks.1.hook_resid_post"


def test_top_k_probe_finds_a_planted_latent_and_not_noise():
    gen = torch.Generator().manual_seed(0)
    labels = np.array([0, 1] * 100)
    noise = torch.rand(200, 64, generator=gen)
    planted = noise.clone()
    planted[:, 7] += 1.5 * torch.from_numpy(labels).float()  # separable along one latent
    train, test = np.arange(120), np.arange(120, 200)
    scores = task_scores({"planted": planted, "noise": noise}, labels, train, test, (1, 5))
    assert scores["planted"]["k=1"] >= 0.95 and scores["planted"]["k=5"] >= 0.9
    assert abs(scores["noise"]["k=1"] - 0.5) < 0.2 and abs(scores["noise"]["k=5"] - 0.5) < 0.2


def test_results_hold_every_input_per_task(tl_model, tokenizer):
    rng = np.random.default_rng(1)
    tasks = [
        ProbingTask(
            f"t{i}",
            "test",
            tuple("".join(rng.choice(list("abcdef"), 6)) for _ in range(40)),
            np.array([0, 1] * 20),
        )  # fmt: skip
        for i in range(2)
    ]
    sae = build_dictionary(SAEConfig(method="topk", d_sae=32, k=4, seed=0), 16)
    cfg = ProbingConfig(n_train=24, n_test=12, ks=(1, 2), context_size=10, batch_size=8)
    out = evaluate_probing(HookedModel(tl_model, tokenizer), {"s": sae}, HOOK, cfg, tasks, False)
    assert set(out["per_task"]) == {RESIDUAL, "s", "s/random", "s/init"}
    assert out["per_task"][RESIDUAL].keys() == {"k=1", "k=2", "all"}
    assert all(len(v) == 2 for v in out["per_task"]["s"].values())
    assert out["mean"]["s"]["k=2"] == pytest.approx(np.mean(out["per_task"]["s"]["k=2"]))
    assert [t["n_train"] for t in out["tasks"]] == [24, 24]


def test_wrong_width_is_refused(tl_model, tokenizer):
    sae = build_dictionary(SAEConfig(method="topk", d_sae=32, k=4), 8)
    with pytest.raises(SaekitError, match="d_in=8.*width 16"):
        evaluate_probing(HookedModel(tl_model, tokenizer), {"s": sae}, HOOK, tasks=[])

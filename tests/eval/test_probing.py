"""Sparse probing on planted features, the null controls, and the results' shape.

SAEBench agreement is in test_probing_saebench.py; here the probe must find a planted latent
(and fail on noise), and the controls must be what their docstrings say.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saekit.data.tasks import ProbingTask
from saekit.dictionaries import SAEConfig, build_dictionary
from saekit.errors import SaekitError
from saekit.eval.controls import initialization, random_directions
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


def test_random_directions_keep_norms_and_biases_not_directions():
    sae = build_dictionary(SAEConfig(method="topk", d_sae=64, k=4, seed=1), 16)
    with torch.no_grad():
        sae.W_dec.mul_(torch.linspace(0.5, 2.0, 64)[:, None])
        sae.b_enc.uniform_(-0.1, 0.1)
    control = random_directions(sae, seed=0)
    torch.testing.assert_close(control.W_enc.norm(dim=0), sae.W_enc.norm(dim=0))
    torch.testing.assert_close(control.W_dec.norm(dim=1), sae.W_dec.norm(dim=1))
    assert torch.equal(control.b_enc, sae.b_enc) and torch.equal(control.b_dec, sae.b_dec)
    cos = torch.nn.functional.cosine_similarity(control.W_dec, sae.W_dec, dim=1)
    assert cos.abs().mean() < 0.35  # random in 16 dimensions: E|cos| ≈ 0.2
    unit = control.W_dec / control.W_dec.norm(dim=1, keepdim=True)
    torch.testing.assert_close(control.W_enc.T / control.W_enc.norm(dim=0)[:, None], unit)
    assert not torch.equal(random_directions(sae, seed=1).W_dec, control.W_dec)


def test_untrained_control_is_the_initialization():
    cfg = SAEConfig(method="jumprelu", d_sae=32, seed=5)
    sae = build_dictionary(cfg, 16)
    fresh = build_dictionary(cfg, 16)
    with torch.no_grad():
        sae.W_enc.add_(1.0)
        sae.b_dec.normal_()  # training starts b_dec at the data's median: the control keeps it
    control = initialization(sae)
    assert torch.equal(control.W_enc, fresh.W_enc) and torch.equal(control.W_dec, fresh.W_dec)
    assert torch.equal(control.b_dec, sae.b_dec) and not torch.equal(control.b_dec, fresh.b_dec)


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

"""Null controls (eval/controls.py) and the core scores' intervals and margins (eval/core.py
with eval/window_units.py), checked against direct computations on the tiny eval model."""

from __future__ import annotations

import pytest
import torch

from saekit.dictionaries import SAEConfig, build_dictionary
from saekit.dictionaries.snmf import SNMFConfig
from saekit.eval.controls import control_dictionaries, initialization, random_directions
from saekit.eval.core import evaluate_core
from saekit.eval.metrics import fvu
from saekit.eval.scorecard import Score

HOOK = "blocks.0.hook_resid_post"
METHODS = ("relu", "topk", "batchtopk", "jumprelu", "matryoshka", "mp")


def trained_like(method: str, d_in: int = 64, d_sae: int = 96):
    """A dictionary whose weights are not its initialization (so controls differ from it)."""
    cfg = SAEConfig(method=method, d_sae=d_sae, k=4, seed=3)  # type: ignore[arg-type]
    d = build_dictionary(cfg, d_in)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        d.W_dec.mul_(1 + torch.rand(d_sae, 1, generator=gen))  # varied row norms
        d.W_dec.add_(0.3 * torch.randn(d.W_dec.shape, generator=gen))
        d.b_dec.copy_(torch.randn(d_in, generator=gen))
    d.fold_normalization(2.5)
    return d


@pytest.mark.parametrize("method", METHODS)
def test_random_directions_keep_norms_and_biases(method):
    d = trained_like(method)
    r = random_directions(d, seed=0)
    assert torch.allclose(r.W_dec.norm(dim=1), d.W_dec.norm(dim=1), rtol=1e-5)
    assert torch.allclose(r.W_enc.norm(dim=0), d.W_enc.norm(dim=0), rtol=1e-5)
    assert torch.equal(r.b_dec, d.b_dec) and torch.equal(r.b_enc, d.b_enc)
    cos = torch.nn.functional.cosine_similarity(r.W_dec, d.W_dec, dim=1)
    assert cos.abs().mean() < 0.15  # random cosines in 64 dimensions: E|cos| = 0.10
    assert torch.equal(random_directions(d, seed=0).W_dec, r.W_dec)  # seeded
    x = torch.randn(32, 64)
    assert r.encode(x).shape == (32, 96) and torch.isfinite(r(x)).all()


@pytest.mark.parametrize("method", METHODS)
def test_initialization_is_the_seeded_untrained_dictionary(method):
    d = trained_like(method)
    init = initialization(d)
    fresh = build_dictionary(d.cfg, 64)
    fresh.fold_normalization(2.5)
    assert init.folded_norm_factor == pytest.approx(d.folded_norm_factor)
    assert torch.allclose(init.W_dec, fresh.W_dec) and torch.allclose(init.W_enc, fresh.W_enc)
    assert torch.equal(init.b_dec, d.b_dec)  # centred like the trained one


def test_snmf_random_control_keeps_its_least_squares_encoder():
    cfg = SAEConfig(method="snmf", d_sae=6, snmf=SNMFConfig())
    d = build_dictionary(cfg, 20)
    r = random_directions(d, seed=1)
    W = r.W_dec.double()
    expected = torch.linalg.solve(W @ W.T + 1e-6 * torch.eye(6, dtype=W.dtype), W).T
    assert torch.allclose(r.W_enc.double(), expected, atol=1e-4)
    assert not torch.allclose(r.W_dec, d.W_dec)
    z = r.encode(torch.randn(8, 20).abs())
    assert (z >= 0).all()


def test_core_controls_equal_evaluating_each_control_alone(eval_model, eval_windows, pm_identity):
    sae = pm_identity("topk", k=4)
    controls = control_dictionaries(sae, seed=0)
    out = evaluate_core(eval_model, sae, HOOK, eval_windows, n_windows=11, model_batch_size=4,
                        progress=False, controls=controls)  # fmt: skip
    alone = evaluate_core(eval_model, sae, HOOK, eval_windows, n_windows=11,
                          model_batch_size=4, progress=False)  # fmt: skip
    for key in ("fvu", "ce_sae", "kl_sae", "ce_loss_score", "l0_mean"):
        assert out[key] == pytest.approx(alone[key], rel=1e-6), key
    for name, ctrl in controls.items():
        single = evaluate_core(eval_model, ctrl, HOOK, eval_windows, n_windows=11,
                               model_batch_size=4, progress=False)  # fmt: skip
        for key in ("fvu", "ce_sae", "kl_sae", "ce_loss_score", "l0_mean"):
            assert out["controls"][name][key] == pytest.approx(single[key], rel=1e-6), (name, key)


def test_core_scores_are_the_point_metrics_with_window_intervals(
    eval_model, eval_windows, pm_identity
):
    sae = pm_identity("topk", k=4)
    out = evaluate_core(eval_model, sae, HOOK, eval_windows, n_windows=11, model_batch_size=4,
                        progress=False, controls=control_dictionaries(sae))  # fmt: skip
    scores = {k: Score.from_json(v) for k, v in out["scores"].items()}
    for key in ("fvu", "explained_variance", "mse", "cosine", "ce_loss_score", "kl_sae",
                "l0_mean"):  # fmt: skip
        s = scores[key]
        assert s.value == pytest.approx(out[key], rel=1e-6), key  # point values: fp32 ratios
        assert s.ci[0] <= s.value <= s.ci[1] and s.resampled == "11 held-out windows"
    assert scores["ce_increase"].value == pytest.approx(out["ce_sae"] - out["ce_clean"], rel=1e-9)
    # the window columns reproduce FVU by hand from the captured activations
    tokens = eval_windows.get(0, 11)
    mask = eval_windows.token_mask(tokens)
    x = eval_model.capture(tokens, [HOOK])[HOOK][mask].float()
    assert scores["fvu"].value == pytest.approx(float(fvu(x, sae(x))), rel=1e-5)
    # controls: lower FVU is better, so the margin is the best control's FVU minus ours
    fvu_s = scores["fvu"]
    best = min(out["controls"][c]["fvu"] for c in ("random", "init"))
    assert fvu_s.margin == pytest.approx(best - out["fvu"], rel=1e-9)
    assert fvu_s.margin_ci is not None and fvu_s.margin_ci[0] > 0  # topk beats both nulls
    assert "controls" not in scores["l0_mean"].to_json() or not scores["l0_mean"].controls


def test_transcoder_controls_keep_both_widths():
    cfg = SAEConfig(method="topk", d_sae=48, k=4, seed=2, hook="blocks.0.ln2.hook_normalized",
                    output_hook="blocks.0.hook_mlp_out", skip_connection=True)  # fmt: skip
    d = build_dictionary(cfg, 16, 24)
    with torch.no_grad():
        d.W_dec.mul_(1 + torch.rand(48, 1))
    d.fold_normalization(2.0, 3.0)
    r = random_directions(d, seed=0)
    assert r.W_enc.shape == (16, 48) and r.W_dec.shape == (48, 24)
    assert torch.allclose(r.W_dec.norm(dim=1), d.W_dec.norm(dim=1), rtol=1e-5)
    assert torch.allclose(r.W_enc.norm(dim=0), d.W_enc.norm(dim=0), rtol=1e-5)
    assert r.W_skip is not None and torch.equal(r.W_skip, d.W_skip)  # the linear path stays
    init = initialization(d)
    fresh = build_dictionary(cfg, 16, 24)
    fresh.fold_normalization(2.0, 3.0)
    assert init.d_out == 24 and torch.allclose(init.W_enc, fresh.W_enc)
    assert torch.allclose(init.W_dec, fresh.W_dec) and torch.equal(init.b_dec, d.b_dec)

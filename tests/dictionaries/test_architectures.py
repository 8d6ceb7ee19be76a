"""Forward semantics of each dictionary: shapes, sparsity, named losses, gradients, folding."""

from __future__ import annotations

import copy

import pytest
import torch
from dictionary_helpers import D_IN, D_SAE, METHODS, K, randomize, small_cfg

from saekit.dictionaries import DICTIONARIES, SAEConfig, TrainContext, build_dictionary
from saekit.errors import SaekitError
from saekit.kernels.aux_k import aux_k_loss

LOSS_NAMES = {
    "relu": {"mse", "l1"},
    "topk": {"mse", "aux_k"},
    "batchtopk": {"mse", "aux_k"},
    "jumprelu": {"mse", "l0"},
    "matryoshka": {"mse_4", "mse_16", "mse", "aux_k"},
}


def x_BD(batch: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, D_IN, generator=torch.Generator().manual_seed(seed))


def test_registry_holds_every_method():
    assert set(METHODS) <= set(DICTIONARIES)
    assert all(cls.method == name for name, cls in DICTIONARIES.items())


@pytest.mark.parametrize("method", METHODS)
def test_init_is_tied_unit_norm_and_seeded(method):
    d = build_dictionary(small_cfg(method), D_IN)
    assert d.W_enc.shape == (D_IN, D_SAE) and d.W_dec.shape == (D_SAE, D_IN)
    assert d.b_enc.shape == (D_SAE,) and d.b_dec.shape == (D_IN,)
    torch.testing.assert_close(d.W_dec.norm(dim=1), torch.ones(D_SAE))
    assert torch.equal(d.W_enc, d.W_dec.T)
    assert not d.b_enc.any() and not d.b_dec.any()
    same = build_dictionary(small_cfg(method), D_IN)
    other = build_dictionary(small_cfg(method, seed=1), D_IN)
    assert torch.equal(d.W_dec, same.W_dec) and not torch.equal(d.W_dec, other.W_dec)


@pytest.mark.parametrize("method", METHODS)
def test_shapes_and_named_finite_losses(method):
    d = build_dictionary(small_cfg(method), D_IN)
    x = x_BD()
    assert d.encode(x).shape == (32, D_SAE)
    assert d(x).shape == (32, D_IN)
    out = d.training_forward(x, TrainContext(dead_mask_S=torch.arange(D_SAE) % 2 == 0))
    assert out.x_hat_BD.shape == (32, D_IN) and out.z_BS.shape == (32, D_SAE)
    assert set(out.losses) == LOSS_NAMES[method]
    for name, value in out.losses.items():
        assert value.shape == () and torch.isfinite(value), name


def test_topk_keeps_exactly_k_per_row():
    d = build_dictionary(small_cfg("topk"), D_IN)
    randomize(d)
    x = x_BD(64)
    assert ((d.encode(x) != 0).sum(dim=-1) == K).all()
    out = d.training_forward(x, TrainContext())
    assert ((out.z_BS != 0).sum(dim=-1) == K).all()
    assert (out.z_BS >= 0).all()


@pytest.mark.parametrize("method", ["batchtopk", "matryoshka"])
def test_batchtopk_keeps_k_times_batch_in_training(method):
    d = build_dictionary(small_cfg(method), D_IN)
    randomize(d)
    out = d.training_forward(x_BD(64), TrainContext())
    assert int((out.z_BS != 0).sum()) == K * 64
    assert (out.z_BS != 0).sum(dim=-1).float().std() > 0  # tokens share the budget unevenly


def test_batchtopk_threshold_starts_at_first_min_then_ema():
    d = build_dictionary(small_cfg("batchtopk"), D_IN)
    assert d.threshold.dtype == torch.float64 and float(d.threshold) == 0.0
    randomize(d)
    d.threshold.zero_()
    out = d.training_forward(x_BD(64), TrainContext())
    first = float(out.z_BS.detach()[out.z_BS > 0].min())
    assert float(d.threshold) == pytest.approx(first, rel=1e-6)
    out = d.training_forward(x_BD(64, seed=2), TrainContext())
    second = float(out.z_BS.detach()[out.z_BS > 0].min())
    assert float(d.threshold) == pytest.approx(0.99 * first + 0.01 * second, rel=1e-6)
    # Inference is JumpReLU with that threshold.
    pre = d.pre_acts(x_BD())
    torch.testing.assert_close(d.encode(x_BD()), pre * (pre > float(d.threshold)))


@pytest.mark.parametrize("method", ["topk", "batchtopk"])
def test_sparse_training_decode_equals_dense_decode(method):
    d = build_dictionary(small_cfg(method), D_IN)
    randomize(d)
    out = d.training_forward(x_BD(), TrainContext())
    torch.testing.assert_close(out.x_hat_BD, d.decode(out.z_BS), atol=1e-5, rtol=1e-5)


def test_matryoshka_prefix_losses_match_hand_computation():
    d = build_dictionary(small_cfg("matryoshka"), D_IN)
    randomize(d)
    x = x_BD()
    out = d.training_forward(x, TrainContext())
    z = out.z_BS.detach()
    for w, name in ((4, "mse_4"), (16, "mse_16"), (D_SAE, "mse")):
        x_hat = z[:, :w] @ d.W_dec[:w] + d.b_dec
        expected = (x_hat - x).pow(2).sum(dim=-1).mean()
        torch.testing.assert_close(out.losses[name], expected, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_gradients_reach_every_parameter(method):
    d = build_dictionary(small_cfg(method), D_IN)
    randomize(d)
    out = d.training_forward(x_BD(), TrainContext(dead_mask_S=torch.arange(D_SAE) < 8))
    sum(out.losses.values()).backward()
    for name, p in d.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_l0_term_trains_only_the_threshold():
    d = build_dictionary(small_cfg("jumprelu"), D_IN)
    d.training_forward(x_BD(256), TrainContext()).losses["l0"].backward()
    assert d.threshold.grad is not None and (d.threshold.grad < 0).any()  # pushes θ up
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        grad = getattr(d, name).grad
        assert grad is None or not grad.any(), name


def test_relu_l1_is_decoder_norm_weighted_and_mutable():
    d = build_dictionary(small_cfg("relu", relu={"l1_coefficient": 2.0}), D_IN)
    randomize(d)
    with torch.no_grad():
        d.W_dec.mul_(3.0)
    x = x_BD()
    z = d.encode(x)
    expected = 2.0 * 0.5 * (z * 3.0).sum(dim=-1).mean()
    ctx = TrainContext(sparsity_scale=0.5)
    torch.testing.assert_close(d.training_forward(x, ctx).losses["l1"], expected)
    d.sparsity_coefficient = 0.0
    assert float(d.training_forward(x, ctx).losses["l1"].detach()) == 0.0


def test_aux_k_matches_hand_computation_and_is_zero_without_dead():
    gen = torch.Generator().manual_seed(3)
    x, x_hat = torch.randn(8, 6, generator=gen), torch.randn(8, 6, generator=gen)
    pre = torch.randn(8, 10, generator=gen)
    W_dec = torch.randn(10, 6, generator=gen)
    dead = torch.zeros(10, dtype=torch.bool)
    assert float(aux_k_loss(x, x_hat, pre, W_dec, dead, 3, 0.5)) == 0.0
    assert float(aux_k_loss(x, x_hat, pre, W_dec, None, 3, 0.5)) == 0.0
    dead[[1, 4]] = True
    e = x - x_hat
    z = torch.zeros_like(pre)
    z[:, [1, 4]] = pre[:, [1, 4]].relu()  # 2 dead < k_aux = 3: both used
    expected = 0.5 * (2 / 3) * (e - z @ W_dec).pow(2).sum() / (e - e.mean(0)).pow(2).sum()
    torch.testing.assert_close(aux_k_loss(x, x_hat, pre, W_dec, dead, 3, 0.5), expected)


def test_aux_k_only_trains_dead_latents_decoder_rows():
    d = build_dictionary(small_cfg("topk"), D_IN)
    randomize(d)
    dead = torch.arange(D_SAE) >= 48
    d.training_forward(x_BD(), TrainContext(dead_mask_S=dead)).losses["aux_k"].backward()
    assert not d.W_dec.grad[~dead].any() and d.W_dec.grad[dead].any()


@pytest.mark.parametrize("method", METHODS)
def test_fold_normalization_takes_raw_inputs_with_identical_codes(method):
    trained = build_dictionary(small_cfg(method), D_IN)
    randomize(trained)
    factor = 4.0  # √d_in / mean‖x‖ for activations of norm 1
    folded = copy.deepcopy(trained)
    folded.fold_normalization(factor)
    x_raw = x_BD(64) / factor
    torch.testing.assert_close(folded.encode(x_raw), trained.encode(x_raw * factor))
    torch.testing.assert_close(folded(x_raw), trained(x_raw * factor) / factor)
    assert folded.folded_norm_factor == factor


@pytest.mark.parametrize("method", ["jumprelu", "batchtopk"])
def test_thresholds_keep_their_dtype_under_bf16(method):
    d = build_dictionary(small_cfg(method), D_IN)
    randomize(d)
    before = d.threshold.detach().clone()
    d = d.to(torch.bfloat16)
    assert d.W_enc.dtype == torch.bfloat16
    assert d.threshold.dtype == before.dtype and torch.equal(d.threshold, before)
    assert d.encode(x_BD()).dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("method", "overrides", "match"),
    [
        ("topk", {"k": D_SAE}, "smaller than d_sae"),
        ("batchtopk", {"k": 0}, "k must be >= 1"),
        ("topk", {"d_sae": 0}, "d_sae must be >= 1"),
        ("matryoshka", {"matryoshka": {"widths": (16, 8, 64)}}, "strictly increasing"),
        ("matryoshka", {"matryoshka": {"widths": (8, 32)}}, "must end at d_sae"),
        ("jumprelu", {"jumprelu": {"bandwidth": 0.0}}, "bandwidth"),
        ("relu", {"relu": {"l1_coefficient": -1.0}}, "l1_coefficient"),
        ("topk", {"aux_k": 0}, "aux_k"),
    ],
)
def test_bad_configs_raise_saekit_error(method, overrides, match):
    with pytest.raises(SaekitError, match=match):
        build_dictionary(small_cfg(method, **overrides), D_IN)


def test_unknown_method_and_bad_d_in_and_bad_factor_raise():
    with pytest.raises(SaekitError, match="Unknown dictionary method 'topkk'.*'topk'"):
        build_dictionary(SAEConfig(method="topkk", d_sae=8, k=2), D_IN)  # type: ignore[arg-type]
    with pytest.raises(SaekitError, match="d_in must be >= 1"):
        build_dictionary(small_cfg("topk"), 0)
    with pytest.raises(SaekitError, match="factor must be > 0"):
        build_dictionary(small_cfg("relu"), D_IN).fold_normalization(0.0)

"""TopK trains through the k-sparse kernel: same losses and gradients as plain autograd."""

from __future__ import annotations

import pytest
import torch
from dictionary_helpers import D_IN, D_SAE, K, randomize, small_cfg

from saekit.dictionaries import TrainContext, TrainOutput, build_dictionary


def x_BD(batch: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, D_IN, generator=torch.Generator().manual_seed(seed))


DEAD_MASKS = {
    "aux_off": None,
    "none_dead": torch.zeros(D_SAE, dtype=torch.bool),
    "few_dead": torch.arange(D_SAE) % 16 == 3,  # 4 dead < k_aux = 8
    "many_dead": torch.arange(D_SAE) % 3 != 0,  # 42 dead > k_aux
}


@pytest.mark.parametrize("dead", list(DEAD_MASKS))
def test_sparse_path_equals_dense_autograd(dead):
    d = build_dictionary(small_cfg("topk"), D_IN)
    randomize(d)
    ctx = TrainContext(dead_mask_S=DEAD_MASKS[dead])
    x = x_BD()
    results = []
    for forward in (d.training_forward, d.training_forward_dense):
        d.zero_grad(set_to_none=True)
        out = forward(x, ctx)
        sum(out.losses.values()).backward()
        grads = {n: p.grad.clone() for n, p in d.named_parameters()}
        results.append((out, grads))
    (fast, fast_grads), (ref, ref_grads) = results
    assert set(fast.losses) == set(ref.losses) == {"mse", "aux_k"}
    for name in fast.losses:
        torch.testing.assert_close(fast.losses[name], ref.losses[name], atol=1e-5, rtol=1e-5)
    if dead in ("few_dead", "many_dead"):
        assert float(fast.losses["aux_k"].detach()) > 0
    torch.testing.assert_close(fast.x_hat_BD, ref.x_hat_BD, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.z_BS, ref.z_BS)
    for name, grad in fast_grads.items():
        torch.testing.assert_close(grad, ref_grads[name], atol=1e-5, rtol=1e-5, msg=name)


def test_codes_are_sparse_and_dense_view_is_lazy():
    d = build_dictionary(small_cfg("topk"), D_IN)
    randomize(d)
    out = d.training_forward(x_BD(), TrainContext())
    assert out.codes is not None and out.codes.indices_BK.shape == (64, K)
    assert out._z_BS is None  # nothing built until read
    z = out.z_BS
    assert z.shape == (64, D_SAE) and out.z_BS is z
    torch.testing.assert_close(out.firing_counts_S(), (z != 0).sum(dim=0))
    torch.testing.assert_close(d.encode(x_BD()), z.detach())


def test_dense_train_output_counts_firing_from_z():
    z = torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.0, 3.0]])
    out = TrainOutput(torch.zeros(2, 4), z, {})
    assert out.codes is None and out.z_BS is z
    assert out.firing_counts_S().tolist() == [0, 1, 2]


def test_bf16_falls_back_to_dense_autograd():
    d = build_dictionary(small_cfg("topk"), D_IN)
    randomize(d)
    d = d.to(torch.bfloat16)
    dead = torch.arange(D_SAE) % 16 == 3
    out = d.training_forward(x_BD().bfloat16(), TrainContext(dead_mask_S=dead))
    sum(out.losses.values()).backward()
    assert out.x_hat_BD.dtype == torch.bfloat16 and out.codes is not None
    assert all(p.grad is not None for p in d.parameters())


def test_remove_parallel_grad_projects_out_the_row_direction():
    d = build_dictionary(small_cfg("topk"), D_IN)
    g = torch.randn(D_SAE, D_IN, generator=torch.Generator().manual_seed(0))
    d.W_dec.grad = g.clone()
    d.remove_parallel_grad()
    W = d.W_dec.detach()
    expected = g - (g * W).sum(dim=1, keepdim=True) * W
    torch.testing.assert_close(d.W_dec.grad, expected, atol=1e-6, rtol=1e-6)
    assert (d.W_dec.grad * W).sum(dim=1).abs().max() < 1e-5


@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("dead", ["aux_off", "many_dead"])
def test_transcoder_sparse_path_equals_dense_autograd(dead, skip):
    """The CSR decode writes d_out columns and the encoder backward reads d_in ones."""
    d_out = 12
    cfg = small_cfg("topk", hook="in", output_hook="out", skip_connection=skip)
    d = build_dictionary(cfg, D_IN, d_out)
    randomize(d)
    if skip:
        with torch.no_grad():
            d.W_skip.copy_(0.1 * torch.randn(d.W_skip.shape))
    y = torch.randn(64, d_out, generator=torch.Generator().manual_seed(5))
    ctx = TrainContext(dead_mask_S=DEAD_MASKS[dead], target_BO=y)
    x = x_BD()
    results = []
    for forward in (d.training_forward, d.training_forward_dense):
        d.zero_grad(set_to_none=True)
        out = forward(x, ctx)
        sum(out.losses.values()).backward()
        results.append((out, {n: p.grad.clone() for n, p in d.named_parameters()}))
    (fast, fast_grads), (ref, ref_grads) = results
    assert fast.x_hat_BD.shape == (64, d_out)
    if dead == "many_dead":
        assert float(fast.losses["aux_k"].detach()) > 0
    for name in fast.losses:
        torch.testing.assert_close(fast.losses[name], ref.losses[name], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.x_hat_BD, ref.x_hat_BD, atol=1e-5, rtol=1e-5)
    assert set(fast_grads) == {"W_enc", "b_enc", "W_dec", "b_dec", *(("W_skip",) * skip)}
    for name, grad in fast_grads.items():
        torch.testing.assert_close(grad, ref_grads[name], atol=1e-5, rtol=1e-5, msg=name)

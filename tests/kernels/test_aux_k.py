"""AuxK over the dead latents' columns equals the dense, sync-free AuxK: loss and gradients."""

from __future__ import annotations

import pytest
import torch

from saekit.kernels.aux_k import aux_k_loss, aux_k_loss_dead

B, D, S = 16, 6, 30


def case(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=gen)
    x_hat = torch.randn(B, D, generator=gen)
    pre = torch.randn(B, S, generator=gen).requires_grad_()
    W_dec = torch.randn(S, D, generator=gen).requires_grad_()
    return x, x_hat, pre, W_dec


@pytest.mark.parametrize("n_dead", [0, 1, 3, 12, S])
@pytest.mark.parametrize("k_aux", [4, 8])
def test_dead_columns_form_equals_dense_form(n_dead, k_aux):
    x, x_hat, pre, W_dec = case()
    dead_N = torch.randperm(S, generator=torch.Generator().manual_seed(1))[:n_dead].sort()[0]
    dead_S = torch.zeros(S, dtype=torch.bool)
    dead_S[dead_N] = True
    dense = aux_k_loss(x, x_hat, pre, W_dec, dead_S, k_aux, 0.5)
    g_dense = torch.autograd.grad(dense, (pre, W_dec), allow_unused=True, materialize_grads=True)
    sparse = aux_k_loss_dead(x, x_hat, pre[:, dead_N], dead_N, W_dec, k_aux, 0.5)
    if n_dead == 0:
        assert not sparse.requires_grad and float(sparse) == 0.0 == float(dense.detach())
        return
    g_sparse = torch.autograd.grad(sparse, (pre, W_dec))
    torch.testing.assert_close(sparse, dense, atol=1e-6, rtol=1e-6)
    for a, b in zip(g_sparse, g_dense):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    # Only dead decoder rows learn from AuxK.
    assert not g_sparse[1][~dead_S].any()


def test_zero_coefficient_is_zero_without_work():
    x, x_hat, pre, W_dec = case()
    dead_N = torch.arange(5)
    assert float(aux_k_loss_dead(x, x_hat, pre[:, dead_N], dead_N, W_dec, 4, 0.0)) == 0.0

"""The k-sparse TopK autoencoder against plain autograd on the dense formula, and gradcheck."""

from __future__ import annotations

import pytest
import torch

from saekit.kernels.sparse_topk import (
    SparseCodes,
    TopKAutoencoder,
    sorted_topk,
    stable_argsort,
    topk_autoencoder,
)

B, D, S, K = 24, 10, 40, 4


def weights(dtype: torch.dtype = torch.float32, seed: int = 0) -> list[torch.Tensor]:
    """W_enc, b_enc, W_dec, b_dec (leaves that require grad). Pre-activations have std ~1.8 and
    mean −2, so ~5 of 40 are positive per row and some rows have fewer than K."""
    gen = torch.Generator().manual_seed(seed)
    W_enc = 0.4 * torch.randn(D, S, generator=gen, dtype=dtype)
    b_enc = 0.3 * torch.randn(S, generator=gen, dtype=dtype) - 2.0
    W_dec = torch.randn(S, D, generator=gen, dtype=dtype) / D**0.5
    b_dec = torch.randn(D, generator=gen, dtype=dtype)
    return [t.requires_grad_() for t in (W_enc, b_enc, W_dec, b_dec)]


def inputs(dtype: torch.dtype = torch.float32, seed: int = 1, batch: int = B) -> torch.Tensor:
    return torch.randn(batch, D, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def dense_reference(x, W_enc, b_enc, W_dec, b_dec, k, dead_N):
    """The textbook forward: dense pre-activations, dense codes, dense decode."""
    pre = (x - b_dec) @ W_enc + b_enc
    vals, idx = pre.topk(k, dim=-1)
    z = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
    return z @ W_dec + b_dec, z, pre[:, dead_N]


def some_loss(x_hat, z_or_vals, pre_dead, x):
    """Uses all three outputs, each with its own weighting, so every gradient path counts."""
    gen = torch.Generator().manual_seed(5)
    w = torch.rand(pre_dead.shape, generator=gen, dtype=pre_dead.dtype)
    mse = (x_hat - x).pow(2).sum(dim=-1).mean()
    return mse + 0.3 * z_or_vals.sum(dim=-1).mean() + (w * pre_dead).pow(2).sum(dim=-1).mean()


@pytest.mark.parametrize("dead", [[], [3], [0, 5, 9, 17, 33, 39]])
def test_gradients_equal_dense_autograd_fp32(dead):
    x = inputs()
    dead_N = torch.tensor(dead, dtype=torch.long)
    grads = []
    for fast in (True, False):
        params = weights()
        if fast:
            x_hat, codes, pre_dead = topk_autoencoder(x, *params, K, dead_N)
            loss = some_loss(x_hat, codes.values_BK, pre_dead, x)
        else:
            x_hat, z, pre_dead = dense_reference(x, *params, K, dead_N)
            loss = some_loss(x_hat, z, pre_dead, x)
        grads.append(torch.autograd.grad(loss, params))
    for name, fast_g, dense_g in zip(("W_enc", "b_enc", "W_dec", "b_dec"), *grads):
        assert fast_g.shape == dense_g.shape
        torch.testing.assert_close(fast_g, dense_g, atol=1e-5, rtol=1e-5, msg=name)


def test_forward_equals_dense_and_codes_are_sorted_and_relu():
    x, params = inputs(), weights()
    x_hat, codes, _ = topk_autoencoder(x, *params, K)
    ref_x_hat, ref_z, _ = dense_reference(x, *params, K, torch.zeros(0, dtype=torch.long))
    torch.testing.assert_close(x_hat, ref_x_hat, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(codes.dense(), ref_z)
    assert (codes.indices_BK.diff(dim=1) > 0).all()
    # Rows with fewer than K positive pre-activations pad their codes with zeros.
    assert (codes.values_BK == 0).any() and (codes.values_BK >= 0).all()
    torch.testing.assert_close(codes.firing_counts_S(), (ref_z != 0).sum(dim=0))


def test_gradcheck_float64_all_inputs_and_outputs():
    gen = torch.Generator().manual_seed(3)
    # Well-separated pre-activations keep the top-k set fixed under gradcheck's 1e-6 steps.
    x = torch.randn(5, 4, generator=gen, dtype=torch.float64).requires_grad_()
    W_enc = (torch.randn(4, 9, generator=gen, dtype=torch.float64)).requires_grad_()
    b_enc = (torch.randn(9, generator=gen, dtype=torch.float64)).requires_grad_()
    W_dec = torch.randn(9, 4, generator=gen, dtype=torch.float64).requires_grad_()
    b_dec = torch.randn(4, generator=gen, dtype=torch.float64).requires_grad_()
    dead_N = torch.tensor([1, 4, 8])

    def f(x, W_enc, b_enc, W_dec, b_dec):
        x_hat, vals, _, pre_dead = TopKAutoencoder.apply(x, W_enc, b_enc, W_dec, b_dec, 3, dead_N)
        return x_hat, vals, pre_dead

    assert torch.autograd.gradcheck(f, (x, W_enc, b_enc, W_dec, b_dec))


def test_unused_outputs_and_no_grad():
    x, params = inputs(torch.float64), weights(torch.float64)
    x_hat, codes, _ = topk_autoencoder(x, *params, K)
    x_hat.sum().backward()  # vals and pre_dead unused: their gradients arrive as None
    assert all(p.grad is not None for p in params)
    with torch.no_grad():
        x_hat2, _, _ = topk_autoencoder(x, *params, K)
    torch.testing.assert_close(x_hat2, x_hat.detach())


def test_sparse_codes_nd_dense_and_sorted_topk():
    pre = torch.randn(2, 3, 12, generator=torch.Generator().manual_seed(0))
    vals, idx = sorted_topk(pre, 4)
    z = SparseCodes(vals, idx, 12).dense()
    ref_vals, ref_idx = pre.topk(4, dim=-1)
    ref = torch.zeros_like(pre).scatter(-1, ref_idx, ref_vals.relu())
    torch.testing.assert_close(z, ref)


def test_row_blocks_give_the_same_result(monkeypatch):
    import saekit.kernels.sparse_topk as sparse_topk

    x, dead_N = inputs(batch=200), torch.tensor([2, 11, 30])
    outs = []
    for chunk_bytes in (sparse_topk.CHUNK_BYTES, 1):  # 1 → blocks of 64 rows: 64+64+64+8
        monkeypatch.setattr(sparse_topk, "CHUNK_BYTES", chunk_bytes)
        params = weights()
        x_hat, codes, pre_dead = topk_autoencoder(x, *params, K, dead_N)
        grads = torch.autograd.grad(some_loss(x_hat, codes.values_BK, pre_dead, x), params)
        outs.append((x_hat, codes.values_BK, codes.indices_BK, pre_dead, *grads))
    for one_block, blocks in zip(*outs):
        torch.testing.assert_close(blocks, one_block, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("n_keys", [40, 1 << 16, 100_000])
def test_stable_argsort_equals_torch(n_keys):
    keys = torch.randint(n_keys, (5000,), generator=torch.Generator().manual_seed(0))
    keys[:100] = n_keys - 1  # ties, to check stability
    assert torch.equal(stable_argsort(keys, n_keys), keys.argsort(stable=True))


def _sorted_desc(t: torch.Tensor) -> torch.Tensor:
    return t.sort(dim=-1, descending=True).values


@pytest.mark.parametrize(
    ("S", "k", "grouped"), [(1024, 1, True), (1024, 16, True), (4096, 32, True), (40, 4, False)]
)
def test_row_topk_equals_torch_topk(S, k, grouped):
    from saekit.kernels import sparse_topk

    gen = torch.Generator().manual_seed(S + k)
    G = S // sparse_topk.TOPK_GROUP
    assert (S % sparse_topk.TOPK_GROUP == 0 and 4 * k <= G) == grouped  # which path runs
    rows = [
        torch.randn(64, S, generator=gen),
        torch.randn(64, S, generator=gen) - 3 + 6 * (torch.arange(S) % 97 == 0),  # few winners
        torch.randn(64, S, generator=gen) * torch.rand(64, 1, generator=gen) ** 4,  # scales
    ]
    # The largest entries of a row all in one strided group (j, j+G, j+2G, ...).
    packed = torch.randn(8, S, generator=gen)
    packed[:, 5::G] += 100.0
    rows.append(packed)
    for pre in rows:
        vals, idx = sparse_topk.row_topk(pre, k)
        ref_vals, ref_idx = pre.topk(k, dim=-1)
        assert torch.equal(_sorted_desc(vals), _sorted_desc(ref_vals))
        assert torch.equal(pre.gather(1, idx), vals)
        # Continuous values have no ties: the same latents, not only the same values.
        assert torch.equal(idx.sort(dim=-1).values, ref_idx.sort(dim=-1).values)


def test_row_topk_ties_nan_and_inf_keep_torch_values():
    from saekit.kernels.sparse_topk import row_topk

    pre = torch.zeros(6, 1024)
    pre[1] = -float("inf")
    pre[2, ::3] = 1.0  # many equal maxima
    pre[3, 17] = float("nan")  # topk ranks NaN above everything
    pre[4] = torch.arange(1024.0) % 7
    pre[5, 1000:] = float("inf")
    vals, idx = row_topk(pre, 8)
    ref_vals, _ = pre.topk(8, dim=-1)
    assert torch.equal(_sorted_desc(vals).nan_to_num(), _sorted_desc(ref_vals).nan_to_num())
    assert torch.equal(pre.gather(1, idx).nan_to_num(), vals.nan_to_num())
    assert (idx.sort(dim=-1).values.diff(dim=-1) > 0).all()  # k distinct latents per row


@pytest.mark.parametrize("dead", [[], [3, 700]])
def test_gradients_equal_dense_autograd_on_the_grouped_topk_path(dead):
    """At d_sae 1024 the encoder's row top-k runs grouped (the tests above use d_sae 40)."""
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(96, D, generator=gen)
    dead_N = torch.tensor(dead, dtype=torch.long)
    init = [
        0.4 * torch.randn(D, 1024, generator=gen),
        0.3 * torch.randn(1024, generator=gen) - 0.5,
        torch.randn(1024, D, generator=gen) / D**0.5,
        torch.randn(D, generator=gen),
    ]
    grads = []
    for fast in (True, False):
        params = [t.clone().requires_grad_() for t in init]
        if fast:
            x_hat, codes, pre_dead = topk_autoencoder(x, *params, 16, dead_N)
            loss = some_loss(x_hat, codes.values_BK, pre_dead, x)
        else:
            x_hat, z, pre_dead = dense_reference(x, *params, 16, dead_N)
            loss = some_loss(x_hat, z, pre_dead, x)
        grads.append(torch.autograd.grad(loss, params))
    for name, fast_g, dense_g in zip(("W_enc", "b_enc", "W_dec", "b_dec"), *grads):
        torch.testing.assert_close(fast_g, dense_g, atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("layout", ["row-major", "transposed"])
def test_encoder_gradient_arrives_in_the_parameters_layout(layout):
    """The optimizer's fused step copies a gradient (and moments) whose strides differ from its
    parameter's; the backward hands W_enc's gradient over in W_enc's own layout."""
    x, (W_enc, b_enc, W_dec, b_dec) = inputs(), weights()
    if layout == "transposed":
        W_enc = W_enc.detach().t().contiguous().t().requires_grad_()
    x_hat, _, _ = topk_autoencoder(x, W_enc, b_enc, W_dec, b_dec, K)
    # autograd.grad returns the backward's own tensor (.backward() would let AccumulateGrad
    # copy it into the parameter's layout, hiding the difference).
    (g_W_enc,) = torch.autograd.grad(x_hat.pow(2).sum(), W_enc)
    assert g_W_enc.stride() == W_enc.stride()
    x_ref = dense_reference(x, W_enc, b_enc, W_dec, b_dec, K, [])[0]
    (ref,) = torch.autograd.grad(x_ref.pow(2).sum(), W_enc)
    torch.testing.assert_close(g_W_enc, ref, atol=1e-5, rtol=1e-5)

"""CPU path of the CSR kernels: every product, the sparse decode and the sparse encoder
backward against dense torch (fp32, bf16), gradcheck in float64, and the dispatch rule."""

from __future__ import annotations

import pytest
import torch
from csr_cases import B, D, S, check_autograd, check_products, pattern, rand

from saekit.errors import SaekitError
from saekit.kernels import csr
from saekit.kernels.csr import CsrPattern, TorchCsrOps, select_ops
from saekit.kernels.sparse_ops import CsrCodes, csr_decode, csr_pre_acts

DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("kind", ["fixed", "variable"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_products_equal_dense(kind, dtype):
    check_products(TorchCsrOps(), kind, dtype)


@pytest.mark.parametrize("kind", ["fixed", "variable"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_and_encoder_backward_equal_dense_autograd(kind, dtype):
    check_autograd(TorchCsrOps(), kind, dtype)


@pytest.mark.parametrize("kind", ["fixed", "variable"])
def test_gradcheck_float64(kind):
    p, ops = pattern(kind), TorchCsrOps()
    v_N = rand(p.N, dtype=torch.float64, seed=1).requires_grad_()
    W_dec = rand(S, D, dtype=torch.float64, seed=2).requires_grad_()
    b_dec = rand(D, dtype=torch.float64, seed=3).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda v, W, b: csr_decode(v, W, b, p, ops), (v_N, W_dec, b_dec)
    )
    x = rand(B, D, dtype=torch.float64, seed=4).requires_grad_()
    W_enc = rand(D, S, dtype=torch.float64, seed=5).requires_grad_()
    b_enc = rand(S, dtype=torch.float64, seed=6).requires_grad_()

    def pre_at_entries(x, W_enc, b_enc, b_dec):
        # The forward takes the values as given: feed the true ones so gradcheck's finite
        # differences see the function the backward differentiates.
        pre_BS = (x - b_dec) @ W_enc + b_enc
        pre_N = pre_BS[p.row_N.long(), p.col_N.long()]
        return csr_pre_acts(pre_N.detach(), x, W_enc, b_enc, b_dec, p, ops)

    assert torch.autograd.gradcheck(pre_at_entries, (x, W_enc, b_enc, b_dec))


def test_empty_pattern_and_empty_rows():
    p = CsrPattern.from_flat(torch.zeros(0, dtype=torch.long), (3, S))
    ops, W_dec = TorchCsrOps(), rand(S, D, dtype=torch.float32, seed=1).requires_grad_()
    v_N = torch.zeros(0, requires_grad=True)
    x_hat = csr_decode(v_N, W_dec, None, p, ops)
    assert x_hat.shape == (3, D) and not x_hat.any()
    x_hat.sum().backward()
    assert W_dec.grad is not None and not W_dec.grad.any()


def test_csr_codes_dense_and_firing_counts():
    p = pattern("variable")
    values_N = rand(p.N, dtype=torch.float32, seed=1)
    values_N[::3] = 0  # a JumpReLU gate leaves zeros at window-only entries
    codes = CsrCodes(p, values_N)
    z_BS = codes.dense()
    assert int((z_BS != 0).sum()) == int((values_N != 0).sum())
    torch.testing.assert_close(codes.firing_counts_S(), (z_BS != 0).sum(dim=0))
    torch.testing.assert_close(z_BS[p.row_N.long(), p.col_N.long()], values_N)


def test_dispatch(monkeypatch):
    cpu = torch.device("cpu")
    assert select_ops(cpu, "dense") is None
    ops = select_ops(cpu, "auto")
    assert ops is not None and ops.name == "torch"
    monkeypatch.setattr(csr, "triton_installed", lambda: False)
    # CUDA without triton falls back to torch's kernels; forcing triton names the fix.
    ops = select_ops(torch.device("cuda"), "auto")
    assert ops is not None and ops.name == "torch"
    with pytest.raises(SaekitError, match=r"saekit\[triton\]"):
        select_ops(cpu, "triton")


def test_select_keeps_a_valid_sub_pattern():
    p = pattern("variable")
    keep_N = p.col_N % 3 == 0
    sub = CsrPattern.from_flat((p.row_N.long() * S + p.col_N.long())[keep_N], (B, S))
    got = p.select(keep_N)
    assert torch.equal(got.crow_B1, sub.crow_B1) and torch.equal(got.col_N, sub.col_N)

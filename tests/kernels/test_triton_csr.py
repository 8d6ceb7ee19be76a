"""The Triton kernels against dense torch: on CUDA when present, otherwise on CPU tensors
under TRITON_INTERPRET=1 (set here before triton compiles anything; tiny shapes, as the
interpreter runs each program in Python)."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton", reason="triton is not installed (pip install 'saekit[triton]')")

from csr_cases import check_autograd, check_products  # noqa: E402

from saekit.dictionaries import (  # noqa: E402
    JumpReLUConfig,
    SAEConfig,
    TrainContext,
    build_dictionary,
)
from saekit.kernels.csr import select_ops  # noqa: E402
from saekit.kernels.triton_csr import TritonCsrOps  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("kind", ["fixed", "variable"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_products_equal_dense(kind, dtype):
    check_products(TritonCsrOps(), kind, dtype)


@pytest.mark.parametrize("kind", ["fixed", "variable"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_and_encoder_backward_equal_dense_autograd(kind, dtype):
    check_autograd(TritonCsrOps(), kind, dtype)


def test_forced_triton_is_selected():
    ops = select_ops(torch.device(DEVICE), "triton")
    assert ops is not None and ops.name == "triton"


@pytest.mark.parametrize("method", ["topk", "batchtopk", "jumprelu"])
def test_dictionary_trains_through_triton_like_dense(method):
    """A whole training forward + backward on kernels='triton' equals kernels='dense'."""
    x_BD = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
    results = []
    for kernels in ("triton", "dense"):
        jumprelu = JumpReLUConfig(bandwidth=0.5) if method == "jumprelu" else None
        cfg = SAEConfig(method=method, d_sae=24, k=3, kernels=kernels, jumprelu=jumprelu)
        d = build_dictionary(cfg, 8)
        with torch.no_grad():
            d.b_enc.fill_(0.1)
        out = d.training_forward(x_BD, TrainContext())
        sum(out.losses.values()).backward()
        grads = {n: p.grad for n, p in d.named_parameters() if p.grad is not None}
        results.append((out, grads))
    (fast, fast_grads), (ref, ref_grads) = results
    torch.testing.assert_close(fast.x_hat_BD, ref.x_hat_BD, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.z_BS, ref.z_BS.detach(), atol=1e-5, rtol=1e-5)
    assert fast_grads.keys() == ref_grads.keys()
    for name, grad in ref_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, atol=1e-5, rtol=1e-5, msg=name)

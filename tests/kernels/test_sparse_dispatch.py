"""Every sparse SAE trains through the CSR kernels by default, with the dense path's results."""

from __future__ import annotations

import pytest
import torch

from saekit.dictionaries import (
    JumpReLUConfig,
    SAEConfig,
    TrainContext,
    TrainOutput,
    build_dictionary,
)
from saekit.kernels.csr import TorchCsrOps
from saekit.kernels.sparse_ops import CsrCodes

D_IN, D_SAE, K, BATCH = 16, 64, 4, 48
DEAD = {"no_aux": None, "many_dead": torch.arange(D_SAE) % 3 != 0}


def build(method: str, kernels: str, dtype: torch.dtype):
    jumprelu = JumpReLUConfig(bandwidth=0.2) if method == "jumprelu" else None
    cfg = SAEConfig(method=method, d_sae=D_SAE, k=K, kernels=kernels, jumprelu=jumprelu)
    d = build_dictionary(cfg, D_IN)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        d.W_enc.add_(0.3 * torch.randn(d.W_enc.shape, generator=gen))
        d.b_enc.copy_(0.2 * torch.randn(d.b_enc.shape, generator=gen))
        d.b_dec.copy_(torch.randn(d.b_dec.shape, generator=gen))
        if method == "jumprelu":
            d.threshold.copy_(0.5 * torch.rand(d.threshold.shape, generator=gen))
    return d.to(dtype)


def inputs() -> torch.Tensor:
    # Seed 4: in bf16 (8-bit mantissa) the k·B-th and next-largest pre-activations of the batch
    # differ, so BatchTopK's kept set is unique (a tie there may be broken either way).
    return torch.randn(BATCH, D_IN, generator=torch.Generator().manual_seed(4))


def step(d, dead, forward=None) -> tuple[TrainOutput, dict[str, torch.Tensor]]:
    x_BD = inputs()
    ctx = TrainContext(dead_mask_S=dead, sparsity_scale=0.7)
    out = (forward or d.training_forward)(x_BD.to(d.W_enc.dtype), ctx)
    sum(out.losses.values()).backward()
    return out, {n: p.grad.clone() for n, p in d.named_parameters() if p.grad is not None}


def assert_same(got: tuple, want: tuple, dtype: torch.dtype) -> None:
    (out, grads), (ref, ref_grads) = got, want
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 3e-2, "rtol": 3e-2}
    assert out.losses.keys() == ref.losses.keys()
    for name, loss in ref.losses.items():
        torch.testing.assert_close(out.losses[name], loss, **tol, msg=name)
    torch.testing.assert_close(out.x_hat_BD, ref.x_hat_BD, **tol)
    torch.testing.assert_close(out.z_BS, ref.z_BS.detach(), **tol)
    torch.testing.assert_close(out.firing_counts_S(), ref.firing_counts_S())
    assert grads.keys() == ref_grads.keys()
    for name, g in ref_grads.items():
        scale = 1.0 if dtype == torch.float32 else max(float(g.float().abs().max()), 1.0)
        torch.testing.assert_close(
            grads[name].float(),
            g.float(),
            atol=tol["atol"] * scale,
            rtol=tol["rtol"],
            msg=name,
        )


CASES = [(m, dead) for m in ("topk", "batchtopk", "matryoshka") for dead in DEAD]
CASES.append(("jumprelu", "no_aux"))  # JumpReLU has no AuxK term


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("method", "dead"), CASES)
def test_auto_kernels_equal_dense(method, dead, dtype):
    if method in ("batchtopk", "matryoshka"):
        with torch.no_grad():
            pre_N = build(method, "dense", dtype).pre_acts(inputs().to(dtype)).flatten()
        top = pre_N.topk(K * BATCH + 1).values
        assert top[-1] < top[-2], "a tie at BatchTopK's boundary: pick another seed"
    got = step(build(method, "auto", dtype), DEAD[dead])
    want = step(build(method, "dense", dtype), DEAD[dead])
    assert_same(got, want, dtype)
    if method != "topk":
        assert isinstance(got[0].codes, CsrCodes)  # no dense codes were built
    if DEAD[dead] is not None:
        assert float(got[0].losses["aux_k"].detach()) > 0


@pytest.mark.parametrize("dead", list(DEAD))
def test_topk_csr_path_equals_fused_path(dead):
    """The generic CSR path (what Triton runs) against the fused CPU path, in fp32."""
    d_csr, d_fused = build("topk", "auto", torch.float32), build("topk", "auto", torch.float32)

    def csr_forward(x, ctx):
        return d_csr.training_forward_csr(x, ctx, TorchCsrOps())

    assert_same(step(d_csr, DEAD[dead], csr_forward), step(d_fused, DEAD[dead]), torch.float32)


def test_jumprelu_threshold_gradient_comes_from_the_window():
    """Entries just below θ (inside the STE window) carry θ's gradient in the sparse path."""
    d = build("jumprelu", "auto", torch.float32)
    out, grads = step(d, None)
    assert isinstance(out.codes, CsrCodes)
    window_only = int((out.codes.values_N == 0).sum())
    assert window_only > 0 and grads["threshold"].abs().sum() > 0

"""BatchTopK's blocked two-stage selection equals one topk over the flattened batch."""

from __future__ import annotations

import pytest
import torch

from saekit.kernels import sparse_topk
from saekit.kernels.sparse_topk import batch_topk_entries


def reference(pre_BS: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    vals_N, flat_N = pre_BS.flatten().topk(k * pre_BS.shape[0], sorted=False)
    flat_N, order_N = flat_N.sort()
    return flat_N, vals_N[order_N].relu()


@pytest.mark.parametrize("skew", [0.0, 6.0])
@pytest.mark.parametrize("chunk_bytes", [1 << 24, 1 << 10])
def test_equals_flat_topk(skew, chunk_bytes, monkeypatch):
    """skew > 0 gives rows 0 and 5 a large norm, so they win more than 4k entries and take
    the recompute-in-full branch; a tiny chunk forces several GEMM blocks."""
    monkeypatch.setattr(sparse_topk, "CHUNK_BYTES", chunk_bytes)
    gen = torch.Generator().manual_seed(0)
    B, D, S, k = 70, 12, 200, 3
    x_BD = torch.randn(B, D, generator=gen)
    x_BD[[0, 5]] *= 1 + skew
    W_DS, b_S = torch.randn(D, S, generator=gen), 0.5 * torch.randn(S, generator=gen)
    pre_BS = torch.addmm(b_S, x_BD, W_DS)
    if skew:
        assert (pre_BS.flatten().topk(k * B).indices // S == 0).sum() > 4 * k
    flat_N, vals_N = batch_topk_entries(x_BD, W_DS, b_S, k)
    want_flat, want_vals = reference(pre_BS, k)
    assert torch.equal(flat_N, want_flat)
    torch.testing.assert_close(vals_N, want_vals)

"""TensorStream: in-memory activations served like the live stream (epochs, resume, scale)."""

from __future__ import annotations

import math

import pytest
import torch

from saekit.activations import TensorStream
from saekit.errors import SaekitError


def rows(n: int = 100, d: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) * 3 + 1


def drain(stream: TensorStream, n_batches: int, hook: str = "x") -> torch.Tensor:
    return torch.cat([stream.next_batch()[hook] for _ in range(n_batches)])


def test_each_epoch_serves_every_row_once_in_a_seeded_order() -> None:
    x = rows()
    stream = TensorStream(x, batch_size=30, seed=4)
    served = drain(stream, 10)  # 300 rows: three epochs of 100
    for epoch in range(3):
        part = served[100 * epoch : 100 * (epoch + 1)]
        # The same multiset of rows, each exactly once (rows are distinct with probability 1).
        assert torch.equal(part.sort(dim=0).values, x.sort(dim=0).values)
    assert not torch.equal(served[:100], x) and not torch.equal(served[:100], served[100:200])
    assert torch.equal(drain(TensorStream(x, batch_size=30, seed=4), 10), served)
    assert not torch.equal(drain(TensorStream(x, batch_size=30, seed=5), 10), served)
    assert stream.n_tokens_served == 300


def test_in_order_wraps_around_and_hooks_stay_aligned() -> None:
    a, b = rows(10, 3), rows(10, 5, seed=1)
    stream = TensorStream({"a": a, "b": b}, batch_size=4, shuffle=False)
    assert stream.d_in == {"a": 3, "b": 5} and stream.cfg.hooks == ("a", "b")
    batches = [stream.next_batch() for _ in range(3)]
    idx = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert torch.equal(torch.cat([x["a"] for x in batches]), a[idx])
    assert torch.equal(torch.cat([x["b"] for x in batches]), b[idx])


def test_a_restored_stream_continues_on_exactly_the_next_rows() -> None:
    x = rows(50)
    straight = TensorStream(x, batch_size=16, seed=2, normalize=True)
    first = drain(straight, 4)
    state = straight.state_dict()
    rest = drain(straight, 5)
    resumed = TensorStream(x, batch_size=16, seed=2, normalize=True)
    resumed.load_state_dict(state)
    assert torch.equal(drain(resumed, 5), rest)
    assert resumed.norm_factors == straight.norm_factors and first.shape == (64, 6)


def test_normalize_scales_to_mean_norm_sqrt_d() -> None:
    x = rows(200, 9)
    stream = TensorStream(x, batch_size=200, normalize=True)
    served = stream.next_batch()["x"]
    factor = math.sqrt(9) / float(x.norm(dim=1).mean())
    assert stream.norm_factors["x"] == pytest.approx(factor, rel=1e-6)
    assert float(served.norm(dim=1).mean()) == pytest.approx(3.0, rel=1e-5)


@pytest.mark.parametrize(
    ("acts", "match"),
    [
        (torch.zeros(5), "2-D tensor"),
        ({"a": torch.zeros(4, 2), "b": torch.zeros(5, 2)}, "same number of rows"),
        ({}, "at least one"),
        (torch.tensor([[1.0, float("nan")], [1.0, 2.0]]), "NaN/inf in 1 of 2 rows"),
    ],
)
def test_bad_activations_are_one_clear_error(acts, match) -> None:
    with pytest.raises(SaekitError, match=match):
        TensorStream(acts)

"""MP kernels: the symmetric Gram build, its cache, and a backward that is bit-for-bit
reproducible however the worker threads are scheduled (CPU, ~5 s)."""

from __future__ import annotations

import pytest
import torch

from saekit.activations.synthetic import FlatSuperposition
from saekit.dictionaries import SAEConfig
from saekit.kernels import gram, native, pursuit
from saekit.kernels.gram import GramCache, gram_matrix
from saekit.kernels.pursuit import MatchingPursuit, padded_width
from saekit.train.trainer import TrainConfig, Trainer


def unit_rows(S: int, D: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    W = torch.randn(S, D, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return W / W.norm(dim=1, keepdim=True)


@pytest.mark.parametrize("S", [300, 256, 97])  # a partial last block, whole blocks, one block
def test_symmetric_gram_equals_the_full_product(S, monkeypatch):
    monkeypatch.setattr(gram, "GRAM_BLOCK", 64)
    W, E = unit_rows(S, 24, 0, torch.float64), unit_rows(S, 24, 1, torch.float64)
    P = padded_width(S)
    G = gram_matrix(W, W, P, tied=True)
    assert G.shape == (S, P) and not G[:, S:].any()  # padding columns stay zero
    torch.testing.assert_close(G[:, :S], W @ W.T, rtol=0, atol=1e-13)
    block = torch.arange(S) // 64
    mirrored = block[:, None] != block[None, :]  # outside the diagonal blocks: copies
    assert torch.equal(G[:, :S][mirrored], G[:, :S].T[mirrored])
    torch.testing.assert_close(gram_matrix(E, W, P, tied=False)[:, :S], W @ E.T)


def test_gram_cache_reuses_only_for_equal_weights():
    W = unit_rows(200, 16, 0)
    cache = GramCache()
    G = cache.get(W, W, 256, reuse=True)
    before = G.clone()
    assert cache.get(W, W, 256, reuse=True) is G and torch.equal(G, before)
    W2 = W.clone()
    W2[3] *= -1  # changed weights, same shapes: rebuilt in the same buffer
    G2 = cache.get(W2, W2, 256, reuse=True)
    assert G2.data_ptr() == G.data_ptr()
    torch.testing.assert_close(G2[:, :200], W2 @ W2.T)
    # A training call (reuse=False) rebuilds and forgets the weights, so the next reusable call
    # cannot mistake the buffer for the Gram matrix of weights it was not built from.
    cache.get(W, W, 256, reuse=False)
    torch.testing.assert_close(cache.get(W2, W2, 256, reuse=True)[:, :200], W2 @ W2.T)


def _mp_grads(x, W, E, k, order):
    """Gradients of one MP loss with the backward's worker spans run in `order`."""
    real = pursuit.map_rows

    def scheduled(fn, n, per_chunk, device):
        found: list[tuple[int, int]] = []
        real(lambda lo, hi: found.append((lo, hi)), n, per_chunk, device)  # the real spans
        spans = sorted(found)
        for i in order(len(spans)):
            fn(*spans[i])

    pursuit.map_rows = scheduled
    try:
        a, _, r = MatchingPursuit.apply(x, E, W, k, "gram", None, None)
        return torch.autograd.grad(r.pow(2).sum() + a.sum(), [W] if E is W else [E, W])
    finally:
        pursuit.map_rows = real


@pytest.mark.parametrize("tied", [True, False])
def test_backward_sum_does_not_depend_on_which_worker_finishes_first(tied):
    threads = torch.get_num_threads()
    torch.set_num_threads(4)  # 4 row spans, 4 gradient buffers
    try:
        W = unit_rows(300, 16, 0).requires_grad_()
        E = W if tied else unit_rows(300, 16, 5).requires_grad_()
        x = torch.randn(400, 16, generator=torch.Generator().manual_seed(1))
        first = _mp_grads(x, W, E, 6, lambda n: range(n))
        for order in (lambda n: reversed(range(n)), lambda n: [2, 0, 3, 1]):
            for mine, ref in zip(_mp_grads(x, W, E, 6, order), first):
                assert torch.equal(mine, ref)
    finally:
        torch.set_num_threads(threads)


def _train_mp() -> torch.Tensor:
    data = FlatSuperposition(n_features=256, d_in=32, expected_l0=4.0, seed=1)
    stream = data.stream(512 * 6, batch_size=512, seed=1, hook="x")
    cfg = TrainConfig(total_tokens=512 * 6, lr=3e-3, log_every=100, wandb_mode="disabled")
    trainer = Trainer((SAEConfig(method="mp", d_sae=256, k=6),), cfg, stream)
    trainer.train()
    return trainer.slots[0].sae.W_dec.detach().clone()


@pytest.mark.parametrize("path", ["auto", "gram"])
def test_mp_training_is_bit_identical_at_4_threads(path, monkeypatch):
    calls = []
    if path == "gram":  # the Gram path at this shape, through the native kernel where it builds
        monkeypatch.setattr(pursuit, "GRAM_STEP_COST", 0)
        real = native.gram_steps
        monkeypatch.setattr(native, "gram_steps", lambda *a: calls.append(1) or real(*a))
    threads = torch.get_num_threads()
    torch.set_num_threads(4)  # 4 workers in the pursuit and 4 gradient buffers to sum
    try:
        first, second = _train_mp(), _train_mp()
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(first, second)
    assert bool(calls) == (path == "gram" and native.library() is not None)

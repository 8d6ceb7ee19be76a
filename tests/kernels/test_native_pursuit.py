"""The compiled MP kernels (saekit/kernels/native.py) against the torch path and a plain
recompute-path reference: same atoms, codes and residuals to fp32 rounding, the exact Gram
matrix in both triangles, and one warning when they cannot be built (CPU, ~10 s)."""

from __future__ import annotations

import warnings

import pytest
import torch

from saekit.kernels import gram, native, pursuit
from saekit.kernels.gram import GramCache, gram_matrix
from saekit.kernels.pursuit import padded_width, pursue

# Only a missing compiler skips (CI installs one); a failed build fails the tests.
pytestmark = pytest.mark.skipif(native._compiler() is None, reason="no C compiler")


def unit_rows(S: int, D: int, seed: int) -> torch.Tensor:
    W = torch.randn(S, D, generator=torch.Generator().manual_seed(seed))
    return W / W.norm(dim=1, keepdim=True)


def reference_mp(x, E, D_, k, drop=None):
    """Matching pursuit as the paper writes it: correlations by a GEMM every step, the first
    maximal atom among those allowed, a = ReLU(<e_j, r>), r -= a d_j."""
    r = x.clone()
    allowed = torch.ones(E.shape[0], dtype=torch.bool) if drop is None else ~drop
    a_out, j_out = torch.zeros(x.shape[0], k), torch.zeros(x.shape[0], k, dtype=torch.long)
    for t in range(k):
        c = (r @ E.T).masked_fill(~allowed, float("-inf"))
        j = c.argmax(dim=1)  # torch documents the first maximal index
        a = (r * E[j]).sum(dim=1).clamp_min(0) * allowed[j]
        r -= a[:, None] * D_[j]
        a_out[:, t], j_out[:, t] = a, j
    return a_out, j_out, r


def run(x, E, D_, k, drop, native_on, monkeypatch):
    monkeypatch.setenv(native.ENV, "1" if native_on else "0")
    r = x.clone()
    a, j, steps = pursue(r, E, D_, k, "gram", drop, None)
    assert torch.equal(steps, torch.full((x.shape[0],), k))
    return a, j, r


CASES = [  # B, S, D, k, tied, dropout, chunk bytes, threads
    (700, 300, 24, 6, True, 0.0, 1 << 24, 1),  # S not a multiple of 128: padded columns
    (513, 1000, 40, 5, False, 0.3, 1 << 16, 2),  # untied, dropout, B not a multiple of a chunk
    (64, 97, 8, 1, True, 0.0, 1 << 24, 1),  # k = 1, one block narrower than 128
    (301, 256, 16, 16, True, 0.5, 1 << 14, 2),  # whole blocks, heavy dropout, many chunks
]


@pytest.mark.parametrize("case", CASES)
def test_native_pursuit_equals_torch_path_and_reference(case, monkeypatch):
    B, S, D, k, tied, q, chunk, threads = case
    monkeypatch.setattr(pursuit, "CHUNK_BYTES", chunk)
    W = unit_rows(S, D, 0)
    E = W if tied else unit_rows(S, D, 3)
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(1))
    drop = torch.rand(S, generator=torch.Generator().manual_seed(2)) < q if q else None
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a1, j1, r1 = run(x, E, W, k, drop, True, monkeypatch)
        a0, j0, r0 = run(x, E, W, k, drop, False, monkeypatch)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(j1, j0)
    torch.testing.assert_close(a1, a0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(r1, r0, rtol=1e-5, atol=1e-5)
    a_ref, j_ref, r_ref = reference_mp(x, E, W, k, drop)
    assert torch.equal(j1, j_ref)
    torch.testing.assert_close(a1, a_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(r1, r_ref, rtol=1e-4, atol=1e-5)
    if drop is not None:
        assert not drop[j1].any()


@pytest.mark.parametrize("tied", [True, False])
def test_native_backward_equals_torch_backward(tied, monkeypatch):
    """Gradients in x, E and D through the k steps of one forward (a rounding-level change of
    a near-tied selection would change the gradient wholesale); with 4 atoms left many a_t are
    0 (no gradient through them)."""
    W = unit_rows(300, 24, 0).requires_grad_()
    E = W if tied else unit_rows(300, 24, 3).requires_grad_()
    x = torch.randn(500, 24, generator=torch.Generator().manual_seed(1)).requires_grad_()
    drop = torch.arange(300) >= 4  # 4 atoms left: a row's correlations soon all fall below 0
    monkeypatch.setenv(native.ENV, "1")
    a, _, r = pursuit.MatchingPursuit.apply(x, E, W, 6, "gram", drop, None)
    loss = r.pow(2).sum() + (a * torch.linspace(-1, 1, 6)).sum()
    grads = {}
    for flag in ("1", "0"):  # one forward, each backward through it
        monkeypatch.setenv(native.ENV, flag)
        grads[flag] = torch.autograd.grad(loss, [x, W] if tied else [x, E, W], retain_graph=True)
    assert 100 < (a == 0).sum() < a.numel() - 100
    for mine, ref in zip(grads["1"], grads["0"]):
        torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("S", [300, 99])  # 99: a row narrower than a block, not 8-wide
def test_exact_ties_pick_the_first_atom(S, monkeypatch):
    """Integer data, every atom present 3 times: correlations are exact and tie on every step,
    so a kernel that takes another of the equal atoms (or subtracts with the wrong sign) fails."""
    g = torch.Generator().manual_seed(4)
    unique = torch.randint(-1, 2, (S // 3, 8), generator=g).float()
    W = unique[torch.randperm(S, generator=g) % (S // 3)]
    x = torch.randint(-3, 4, (200, 8), generator=g).float()
    a1, j1, r1 = run(x, W, W, 5, None, True, monkeypatch)
    a0, j0, r0 = run(x, W, W, 5, None, False, monkeypatch)
    a_ref, j_ref, r_ref = reference_mp(x, W, W, 5)
    first = torch.stack([(W[j] == W).all(dim=1).nonzero()[0, 0] for j in j_ref.flatten()])
    assert torch.equal(j_ref.flatten(), first)  # the reference does take the first copy
    assert (a_ref > 0).sum() > 200  # real steps, not zero codes
    for a, j, r in ((a1, j1, r1), (a0, j0, r0)):
        assert torch.equal(j, j_ref) and torch.equal(a, a_ref) and torch.equal(r, r_ref)


def test_dropped_atoms_and_negative_correlations_give_zero_codes(monkeypatch):
    W, x = unit_rows(200, 8, 0), unit_rows(30, 8, 7) * 3  # seeded: never a row parallel to an atom
    drop = torch.ones(200, dtype=torch.bool)
    a1, j1, r1 = run(x, W, W, 3, drop, True, monkeypatch)
    assert not a1.any() and not j1.any() and torch.equal(r1, x)
    drop[7] = False  # one atom left: about half the rows correlate negatively with it
    a1, j1, r1 = run(x, W, W, 3, drop, True, monkeypatch)
    a_ref, _, r_ref = reference_mp(x, W, W, 3, drop)
    assert (j1 == 7).all() and 5 < (a1[:, 0] == 0).sum() < 25
    torch.testing.assert_close(a1, a_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(r1, r_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("S", [300, 256, 97, 1000])
def test_native_gram_equals_the_full_product_in_both_triangles(S, monkeypatch):
    W, E = unit_rows(S, 24, 0), unit_rows(S, 24, 1)
    full = torch.mm(W, W.T)
    for width in {padded_width(S), S}:  # panels + mirror; and, at width S, BLAS ssyrk + mirror
        monkeypatch.setenv(native.ENV, "1")
        G = GramCache().get(W, W, width, reuse=False)
        assert not G[:, S:].any()
        torch.testing.assert_close(G[:, :S], full, rtol=0, atol=2e-6)
        assert torch.equal(G[:, :S], G[:, :S].T)  # each triangle the other's exact copy
    torch.testing.assert_close(gram_matrix(E, W, padded_width(S), tied=False)[:, :S], W @ E.T)
    G = torch.zeros(S, S)
    gram.syrk_lower(G, W, gram.syrk())
    torch.testing.assert_close(G.tril(), full.tril(), rtol=0, atol=2e-6)
    assert not G.triu(1).any()  # ssyrk wrote one triangle: the mirror really fills the other
    for upper in (False, True):
        H = G.clone() if not upper else G.T.contiguous()
        gram.mirror(native.library(), H, S, upper=upper)
        assert torch.equal(H, G + G.tril(-1).T)


def test_without_a_compiler_one_warning_and_the_torch_results(monkeypatch, tmp_path):
    W, x = unit_rows(300, 16, 0), unit_rows(100, 16, 5) * 4  # seeded, as above
    native_out = run(x, W, W, 4, None, True, monkeypatch)
    monkeypatch.setenv("SAEKIT_HOME", str(tmp_path))  # no cached library to fall back on
    monkeypatch.setattr(native, "_compiler", lambda: None)
    native._reset()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            first = run(x, W, W, 4, None, True, monkeypatch)
            second = run(x, W, W, 4, None, True, monkeypatch)
        assert [str(w.message).split(";")[0] for w in caught] == [
            "saekit's native MP kernel is unavailable (no C compiler found (set CC, or install "
            "gcc))"
        ]
        assert not list(tmp_path.glob("native/*.so"))
    finally:
        native._reset()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # SAEKIT_NATIVE=0 is a choice: no warning
        forced = run(x, W, W, 4, None, False, monkeypatch)
    for out in (first, second, forced):
        assert torch.equal(out[1], native_out[1])
        for mine, ref in zip(out[::2], native_out[::2]):
            torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-6)


def test_the_library_is_built_once_per_process(tmp_path, monkeypatch):
    monkeypatch.setenv("SAEKIT_HOME", str(tmp_path))
    native._reset()
    try:
        first = native.library()
        assert first is not None and native.library() is first
        (lib,) = (tmp_path / "native").iterdir()  # one library, no temporary left behind
        assert lib.suffix == ".so"
    finally:
        native._reset()

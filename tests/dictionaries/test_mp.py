"""MP-SAE: pursuit identities, the two correlation paths, the sparse backward, adaptive
inference, SAELens interop and a tiny run of the real Trainer (CPU, seeded, ~10 s)."""

from __future__ import annotations

import copy

import pytest
import torch

from saekit.activations.synthetic import FlatSuperposition
from saekit.dictionaries import (
    MPConfig,
    SAEConfig,
    TrainContext,
    build_dictionary,
    load_dictionary,
)
from saekit.dictionaries.mp import MatchingPursuitSAE, PursuitCodes
from saekit.errors import SaekitError
from saekit.kernels import pursuit
from saekit.kernels.pursuit import MatchingPursuit, block_argmax, choose_path, pursue
from saekit.train.trainer import TrainConfig, Trainer

D_IN, D_SAE, K = 16, 300, 6  # d_sae > 128 exercises the padded block argmax


def mp(seed: int = 0, **kw) -> MatchingPursuitSAE:
    """An MP dictionary; d_in, d_sae, k as keywords, the rest are `mp:` options (tied, ...)."""
    d_in = kw.pop("d_in", D_IN)
    d_sae, k = kw.pop("d_sae", D_SAE), kw.pop("k", K)
    cfg = SAEConfig(method="mp", d_sae=d_sae, k=k, seed=seed, mp=MPConfig(**kw))
    d = build_dictionary(cfg, d_in)
    assert isinstance(d, MatchingPursuitSAE)
    with torch.no_grad():
        d.b_dec.normal_(generator=torch.Generator().manual_seed(seed + 7))
    return d


def unit_rows(S: int, D: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    W = torch.randn(S, D, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return W / W.norm(dim=1, keepdim=True)


def rows(n: int, d: int = D_IN, seed: int = 1, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def naive(r0, E, D, k):
    """Plain autograd through the unrolled loop, indices under no_grad (the reference)."""
    r, a_all = r0, []
    for _ in range(k):
        with torch.no_grad():
            j = (r @ E.T).relu().argmax(dim=1)
        a = (r * E[j]).sum(-1).relu()
        r = r - a[:, None] * D[j]
        a_all.append(a)
    return torch.stack(a_all, 1), r


def test_registered_and_validated():
    assert isinstance(
        build_dictionary(SAEConfig(method="mp", d_sae=64, k=4), 8), MatchingPursuitSAE
    )
    for bad in ({"dropout": 1.0}, {"revival_coefficient": -1.0}, {"k": 64}):
        with pytest.raises(SaekitError):
            mp(d_in=8, d_sae=64, **{"k": 4, **bad})


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("path", ["gram", "recompute"])
def test_energy_identity_and_conditional_orthogonality(path, dtype):
    W, r0 = unit_rows(D_SAE, D_IN, dtype=dtype), rows(64, dtype=dtype)
    prev, zeros = r0.clone(), torch.zeros(64, dtype=dtype)
    for t in range(1, K + 1):  # the first t steps of a longer run are a t-step run
        r = r0.clone()
        a, j, _ = pursue(r, W, W, t, path)
        energy = prev.pow(2).sum(1) - a[:, -1] ** 2
        torch.testing.assert_close(r.pow(2).sum(1), energy, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close((r * W[j[:, -1]]).sum(1), zeros, atol=1e-5, rtol=0)
        prev = r


def test_orthonormal_dictionary_equals_topk():
    Q, _ = torch.linalg.qr(torch.randn(D_IN, D_IN, generator=torch.Generator().manual_seed(3)))
    d = mp(d_sae=D_IN, k=5)
    topk = build_dictionary(SAEConfig(method="topk", d_sae=D_IN, k=5), D_IN)
    with torch.no_grad():
        d.W_dec.copy_(Q.T)
        topk.W_dec.copy_(Q.T)
        topk.W_enc.copy_(Q)
        topk.b_dec.copy_(d.b_dec)
    x = rows(200)
    torch.testing.assert_close(d.encode(x), topk.encode(x), atol=1e-6, rtol=1e-5)


def test_paths_agree_with_chunks_padding_and_dropout(monkeypatch):
    W, x = unit_rows(D_SAE, D_IN), rows(300, dtype=torch.float64)
    drop = torch.rand(D_SAE, generator=torch.Generator().manual_seed(4)) < 0.5
    out = {}
    monkeypatch.setattr(pursuit, "CHUNK_BYTES", 64 * 384 * 8)  # 64-row chunks
    for path in ("gram", "recompute"):
        r = x.clone()
        a, j, _ = pursue(r, W, W, 2 * K, path, drop_S=drop)
        out[path] = (a, j, r)
    assert torch.equal(out["gram"][1], out["recompute"][1])
    assert not drop[out["gram"][1]].any()
    torch.testing.assert_close(out["gram"][0], out["recompute"][0])
    torch.testing.assert_close(out["gram"][2], out["recompute"][2])
    a_ref, r_ref = naive(x, W.masked_fill(drop[:, None], 0), W, 2 * K)  # dropped atoms: c = 0
    torch.testing.assert_close(out["gram"][0], a_ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_csr_gram_update_equals_gather_update(dtype, monkeypatch):
    assert pursuit._csr_update_ok(torch.zeros(1, dtype=dtype))
    assert not pursuit._csr_update_ok(torch.zeros(1, dtype=torch.bfloat16))
    W, x = unit_rows(D_SAE, D_IN, dtype=dtype), rows(300, dtype=dtype)
    out = []
    for csr in (True, False):
        monkeypatch.setattr(pursuit, "_csr_update_ok", lambda c, csr=csr: csr)
        r = x.clone()
        a, j, _ = pursue(r, W, W, 2 * K, "gram")
        out.append((a, j, r))
    assert torch.equal(out[0][1], out[1][1])
    torch.testing.assert_close(out[0][0], out[1][0])
    torch.testing.assert_close(out[0][2], out[1][2])


@pytest.mark.parametrize("tied", [True, False])
def test_worker_threads_equal_one_thread(tied, monkeypatch):
    monkeypatch.setattr(pursuit, "CHUNK_BYTES", 64 * 384 * 4)  # 64-row chunks
    W = unit_rows(D_SAE, D_IN, dtype=torch.float32).requires_grad_()
    E = W if tied else unit_rows(D_SAE, D_IN, 5, torch.float32).requires_grad_()
    x, out = rows(500), []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        a, j, r = MatchingPursuit.apply(x, E, W, K, "gram", None, None)
        grads = torch.autograd.grad((r.pow(2).sum() + a.sum()), [E, W] if not tied else [W])
        out.append((a, j, r, *grads))
    assert torch.get_num_threads() == 2  # restored after the workers ran
    with torch.inference_mode():  # the workers inherit it (in-place ops on inference tensors)
        assert torch.equal(MatchingPursuit.apply(x, E, W, K, "gram", None, None)[1], out[0][1])
    assert torch.equal(out[0][1], out[1][1]) and torch.equal(out[0][0], out[1][0])
    for one, two in zip(out[0][2:], out[1][2:]):  # per-worker sums: another addition order
        torch.testing.assert_close(one, two, atol=1e-4, rtol=1e-4)


def test_everything_dropped_selects_nothing():
    W, x = unit_rows(D_SAE, D_IN), rows(10, dtype=torch.float64)
    r = x.clone()
    a, _, _ = pursue(r, W, W, 3, "recompute", drop_S=torch.ones(D_SAE, dtype=torch.bool))
    assert not a.any() and torch.equal(r, x)


def test_choose_path_and_block_argmax():
    assert choose_path(4096, 576, 9216, 16) == "gram"  # 2.25 + 1 GEMMs of work instead of 16
    assert choose_path(4096, 576, 9216, 1) == "recompute"
    assert choose_path(4096, 576, 32768, 16) == "recompute"  # G would be 4 GiB
    assert choose_path(1024, 8, 40, 2) == "recompute"  # d_in 8: a GEMM row is cheaper
    c = torch.randn(50, 384)
    c[:, 300:] = float("-inf")
    c[0, [5, 200]] = 99.0  # tie → first index, as torch.argmax
    assert torch.equal(block_argmax(c), c.argmax(dim=1))


@pytest.mark.parametrize("tied", [True, False])
def test_gradients_equal_naive_unrolled_autograd(tied):
    W = unit_rows(D_SAE, D_IN, dtype=torch.float32).requires_grad_()
    E = W if tied else unit_rows(D_SAE, D_IN, 5, torch.float32).requires_grad_()
    r0 = rows(64).requires_grad_()
    w_a, w_r = rows(64, K, seed=8), rows(64, seed=9)
    a, _, r = MatchingPursuit.apply(r0, E, W, K, "gram", None, None)
    a2, r2 = naive(r0, E, W, K)
    torch.testing.assert_close(a, a2, atol=1e-5, rtol=1e-5)
    params = [r0, W] if tied else [r0, E, W]
    g = torch.autograd.grad((a * w_a).sum() + (r * w_r).sum(), params)
    g2 = torch.autograd.grad((a2 * w_a).sum() + (r2 * w_r).sum(), params)
    for mine, ref in zip(g, g2):
        torch.testing.assert_close(mine, ref, atol=1e-5, rtol=1e-5)


def test_gradcheck_float64():
    W = unit_rows(10, 6).requires_grad_()
    E = unit_rows(10, 6, 2).requires_grad_()
    x = rows(5, 6, dtype=torch.float64).requires_grad_()
    fn = lambda x, E, W: MatchingPursuit.apply(x, E, W, 3, "recompute", None, None)[::2]  # noqa: E731
    assert torch.autograd.gradcheck(lambda x, W: fn(x, W, W), (x, W))
    assert torch.autograd.gradcheck(fn, (x, E, W))


def test_backward_saves_nothing_of_size_batch_by_dsae():
    d, x, sizes = mp(), rows(512), []  # B·S = 153,600; B·D = 8,192; weights S·D = 4,800
    with torch.autograd.graph.saved_tensors_hooks(
        lambda t: sizes.append(t.numel()) or t, lambda t: t
    ):
        out = d.training_forward(x, TrainContext())
    sum(out.losses.values()).backward()
    assert sizes and max(sizes) <= max(512 * D_IN, D_SAE * D_IN) < 512 * D_SAE


def test_training_forward_codes_and_duplicates():
    d, x = mp(), rows(128)
    out = d.training_forward(x, TrainContext())
    assert set(out.losses) == {"mse"}
    torch.testing.assert_close(out.x_hat_BD, d(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(d(x), d.decode(d.encode(x)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        out.losses["mse"], (x - d(x)).pow(2).sum(1).mean(), rtol=1e-4, atol=0
    )
    codes = PursuitCodes(torch.tensor([[1.0, 2.0, 0.0]]), torch.tensor([[3, 3, 1]]), 5)
    assert codes.dense().tolist() == [[0, 0, 0, 3.0, 0]]
    assert codes.firing_counts_S().tolist() == [0, 0, 0, 1, 0]


def test_revival_moves_only_dead_atoms():
    d, x = mp(revival_coefficient=0.01), rows(128)
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[:10] = True
    out = d.training_forward(x, TrainContext(dead_mask_S=dead))
    out.losses["revival"].backward()
    assert d.W_dec.grad is not None and d.W_dec.grad[:10].abs().sum() > 0
    assert not d.W_dec.grad[10:].any() and d.b_dec.grad is None  # residual detached
    none = d.training_forward(x, TrainContext(dead_mask_S=torch.zeros(D_SAE, dtype=torch.bool)))
    assert none.losses["revival"] == 0


def test_adaptive_inference_monotone_and_stops():
    d, x = mp(), rows(256)
    prev = None
    for steps in (K, 2 * K, 4 * K, 8 * K):
        res = d.encode_adaptive(x, steps).relative_residual_B
        assert prev is None or (res <= prev + 1e-6).all()
        prev = res
    stopped = d.encode_adaptive(x, 8 * K, residual_threshold=0.3)
    assert (stopped.relative_residual_B <= 0.3 + 1e-6).all()
    assert stopped.steps_B.min() < stopped.steps_B.max() <= 8 * K
    l0 = stopped.l0()
    assert l0["min"] <= l0["mean"] <= l0["max"] <= 8 * K


def test_adaptive_support_stop_equals_saelens():
    from sae_lens.saes.matching_pursuit_sae import _encode_matching_pursuit

    d, x = mp(), rows(256)
    ours = d.encode_adaptive(x, 40, stop_on_unchanged_support=True)
    with torch.no_grad():
        theirs = _encode_matching_pursuit(x - d.b_dec, d.W_dec, 0.0, 40, True)
    torch.testing.assert_close(ours.z_BS, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tied", [True, False])
def test_save_load_and_saelens_fixed_k(tied, tmp_path):
    from sae_lens import SAE

    d, x = mp(tied=tied), rows(200)
    d.save(tmp_path / "mp")
    back = load_dictionary(tmp_path / "mp")
    assert torch.equal(back.encode(x), d.encode(x))
    if not tied:
        with pytest.raises(KeyError):  # "saekit-mp": SAELens has no untied MP
            SAE.load_from_disk(tmp_path / "mp")
        return
    theirs = SAE.load_from_disk(tmp_path / "mp")
    assert (theirs.cfg.residual_threshold, theirs.cfg.max_iterations) == (0.0, K)
    with torch.no_grad():
        z = theirs.encode(x)
        torch.testing.assert_close(z, d.encode(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(theirs.decode(z), d(x), atol=1e-5, rtol=1e-5)


def test_fold_normalization_takes_raw_inputs():
    d, x, f = mp(), rows(100), 3.0
    folded = copy.deepcopy(d)
    folded.fold_normalization(f)
    with torch.no_grad():
        torch.testing.assert_close(folded.encode(x), d.encode(f * x) / f, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(folded(x), d(f * x) / f, atol=1e-5, rtol=1e-5)


def test_inference_gram_cache_follows_the_weights():
    d, x = mp(d_sae=256, k=40, d_in=128), rows(2048, 128)  # "auto" picks gram here
    with torch.no_grad():
        first = d.encode(x)
        assert d._gram is not None and torch.equal(d.encode(x), first)
        d.W_dec.mul_(-1)  # new weights, same shapes: the cache must not be reused
        a, j, _ = pursue(x - d.b_dec, d.W_dec, d.W_dec, 40, "recompute")
        torch.testing.assert_close(d.encode(x), PursuitCodes(a, j, 256).dense())


def test_trainer_end_to_end_learns():
    # Data seed ≠ init seed: both draw randn(S, D) first, so equal seeds start at the truth.
    data = FlatSuperposition(n_features=96, d_in=48, expected_l0=4.0, seed=1)
    stream = data.stream(256 * 250, batch_size=256, seed=0, hook="x")
    x = data.sample(2048, generator=torch.Generator().manual_seed(5)).x_BD
    sae_cfg = SAEConfig(method="mp", d_sae=96, k=4)
    cfg = TrainConfig(
        total_tokens=256 * 250, lr=3e-3, lr_warmup_steps=10, log_every=250, wandb_mode="disabled"
    )
    trainer = Trainer((sae_cfg,), cfg, stream)
    sae = trainer.slots[0].sae

    def fvu() -> float:
        with torch.no_grad():
            return float((x - sae(x)).pow(2).sum() / (x - x.mean(0)).pow(2).sum())

    before = fvu()
    trainer.train()
    after = fvu()
    assert after < 0.2 and after < 0.3 * before, (before, after)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(96))
    steps = [sae.encode_adaptive(x, s).relative_residual_B.pow(2).mean() for s in (4, 8, 16)]
    assert steps[0] > steps[1] > steps[2]

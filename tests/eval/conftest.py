"""Fixtures for the core-evaluation tests: a tiny TransformerLens model that has learned a
bigram chain (so ablating its residual stream really hurts), token windows with BOS, and
dictionaries with known weights.

Fixture names carry an `eval_` prefix so they never shadow the root conftest's fixtures.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import torch

from saekit.data.text import TokenWindows
from saekit.dictionaries import Dictionary, SAEConfig, build_dictionary
from saekit.models.hooks import HookedModel
from saekit.report.saebench_core import WindowStore

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

BOS = 0
VOCAB = 64
D_MODEL = 16
N_CTX = 32
T = 24
"""Tokens per evaluation window (position 0 is BOS)."""
HOOK = "blocks.0.hook_resid_post"


def _chain(n: int, t: int, seed: int, bos: bool) -> torch.Tensor:
    """Windows of a Markov chain over tokens 1..63: next = perm[prev] with probability 0.8."""
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(VOCAB - 1, generator=torch.Generator().manual_seed(0)) + 1
    out = torch.empty(n, t, dtype=torch.long)
    out[:, 0] = torch.randint(1, VOCAB, (n,), generator=gen)
    for j in range(1, t):
        follow = torch.rand(n, generator=gen) < 0.8
        noise = torch.randint(1, VOCAB, (n,), generator=gen)
        out[:, j] = torch.where(follow, perm[out[:, j - 1] - 1], noise)
    if bos:
        out[:, 0] = BOS
    return out


@pytest.fixture(scope="session")
def eval_tl():
    """2 layers, d_model 16, d_vocab 64, trained 60 Adam steps on the chain (~0.6 s).

    Trained, CE drops from ~4.6 to ~1.7 and zero-ablating layer 0 costs ~3.6 nats, so CE-loss
    scores sit well inside (0, 1) instead of dividing by a random model's noise.
    """
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=2, d_model=D_MODEL, n_heads=4, d_head=4, d_mlp=32, n_ctx=N_CTX,
        d_vocab=VOCAB, act_fn="gelu", normalization_type="LN", seed=0,
    )  # fmt: skip
    model = HookedTransformer(cfg)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    for step in range(60):
        loss = model(_chain(16, T, seed=1000 + step, bos=True), return_type="loss")
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(previous)
    return model.eval().requires_grad_(False)


@pytest.fixture
def eval_model(eval_tl) -> HookedModel:
    return HookedModel(eval_tl, tokenizer=None)


@pytest.fixture
def eval_windows() -> TokenWindows:
    """11 held-out windows of T tokens: BOS at position 0, and a mid-window BOS in some."""
    windows_NT = _chain(11, T, seed=1, bos=True)
    windows_NT[::3, 13] = BOS  # document separators, as text windows have
    return TokenWindows(windows_NT, special_ids=[BOS])


@pytest.fixture
def eval_windows_no_bos() -> TokenWindows:
    """Windows of ordinary tokens only (nothing is special, so everything is spliced)."""
    return TokenWindows(_chain(10, T, seed=2, bos=False), special_ids=[BOS])


@pytest.fixture
def pm_identity() -> Callable[..., Dictionary]:
    """A dictionary with d_sae = 2·d_in, W_enc = [I, −I], W_dec = [I; −I], zero biases.

    relu: z = (relu(x), relu(−x)) and x̂ = relu(x) − relu(−x) = x exactly.
    topk with k < d_in: keeps the k largest |x_d|, an imperfect but sensible reconstruction.
    """

    def build(method: str = "relu", k: int = 8, hook: str = HOOK) -> Dictionary:
        cfg = SAEConfig(method=method, hook=hook, d_sae=2 * D_MODEL, k=k)  # type: ignore[arg-type]
        d = build_dictionary(cfg, D_MODEL)
        eye = torch.eye(D_MODEL)
        with torch.no_grad():
            d.W_enc.copy_(torch.cat([eye, -eye], dim=1))
            d.W_dec.copy_(torch.cat([eye, -eye], dim=0))
            d.b_enc.zero_()
            d.b_dec.zero_()
        return d

    return build


@pytest.fixture
def token_store() -> Callable[[torch.Tensor], WindowStore]:
    """Builds a store that serves the given windows [N, T] in one batch (what SAELens' and
    SAEBench's `run_evals` read), so both evaluators see saekit's own windows."""
    return WindowStore

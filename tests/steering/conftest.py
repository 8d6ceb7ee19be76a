"""Fixtures for the steering tests: a small TransformerLens model with a planted direction.

The planted model speaks a toy language over 529 two-letter words: each word is followed by
its successor under a fixed random permutation. Its blocks write nothing (W_O = W_out = 0), so
the residual stream is the token embedding, and the unembedding column of word w is
0.5 · ê(predecessor of w): the successor gets probability 0.32, the other 528 words share the
rest. A continuation that leaves the successor chain costs NLL, so steering has a real fluency
price. One change plants a concept: every unembedding column loses its component along a unit
direction v, and PLANTED_IDS get +2·v. Adding α·v to the residual stream then raises exactly
those tokens' logits (ln_final is an RMSNorm with unit weights). Fixture names carry a `steer_`
prefix so they never shadow the root conftest's fixtures.
"""

from __future__ import annotations

import itertools
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import torch

from saekit.models.hooks import HookedModel

HOOK = "blocks.1.hook_resid_post"
D_MODEL = 128
"""Wide enough that random unit directions overlap v by ~1/√128 = 0.09 only."""
PLANTED_IDS = list(range(100, 105))
WORDS = ["".join(p) for p in itertools.product("abcdefghijklmnopqrstuvw", repeat=2)]
SUCCESSOR_WEIGHT = 0.5
"""Scale of the successor logit: p(successor) = 0.32 (0.8 gives 0.92, and then any steering
pushes a continuation off the chain: f ≈ 0.2 already at KL 0.1)."""
PROMPTS = ("ab cd ef", "gh ij kl", "mn op qr", "st uv wa", "bc de fg", "hi jk lm")
"""Three words each: one token length, so every forward is one batch."""


@dataclass
class Planted:
    """The planted model and what was planted in it."""

    model: HookedModel
    v_D: torch.Tensor
    """The planted unit direction at `hook`."""
    ids: list[int]
    """Token ids the direction controls."""
    hook: str = HOOK
    prompts: tuple[str, ...] = PROMPTS


@pytest.fixture(scope="session")
def steer_word_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    vocab = {s: i for i, s in enumerate(("<unk>", "<bos>", "<eos>", "<pad>", *WORDS))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    path: Path = tmp_path_factory.mktemp("word_tokenizer")
    PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
    ).save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)  # from disk: TransformerLens needs the path


@pytest.fixture(scope="session")
def steer_planted(steer_word_tokenizer) -> Planted:
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    tok = steer_word_tokenizer
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=D_MODEL,
        n_heads=4,
        d_head=D_MODEL // 4,
        d_mlp=32,
        n_ctx=64,
        d_vocab=len(tok),
        act_fn="gelu",
        normalization_type="RMS",
        seed=1,
    )
    model = HookedTransformer(cfg, tok).eval()
    gen = torch.Generator().manual_seed(7)
    v_D = torch.randn(D_MODEL, generator=gen)
    v_D /= v_D.norm()
    first = len(tok) - len(WORDS)  # the special tokens come first
    successor = torch.randperm(len(WORDS), generator=gen) + first
    with torch.no_grad():
        for block in model.blocks:
            block.attn.W_O.zero_()
            block.mlp.W_out.zero_()
        model.W_pos.zero_()
        e_VD = model.W_E / model.W_E.norm(dim=1, keepdim=True)
        W_U = torch.zeros_like(model.W_U)
        W_U[:, successor] = SUCCESSOR_WEIGHT * e_VD[first:].T
        W_U -= torch.outer(v_D, v_D @ W_U)
        W_U[:, PLANTED_IDS] += 2.0 * v_D[:, None]
        model.W_U.copy_(W_U)
        model.b_U.zero_()
    return Planted(HookedModel(model, tok), v_D, list(PLANTED_IDS))


@pytest.fixture
def steer_fake_endpoint():
    """An OpenAI-compatible chat endpoint on localhost: concept 2 if the fragment says 'cat'."""
    asked: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            asked.append(body)
            prompt = body["messages"][0]["content"]
            fragment = prompt.split("Fragment:", 1)[1]
            rating = 1 if "Concept:" not in prompt else (2 if "cat" in fragment else 0)
            reply = {"choices": [{"message": {"content": f"ok. Rating: [[{rating}]]"}}]}
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", asked
    server.shutdown()

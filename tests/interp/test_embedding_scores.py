"""The embedding scores (interp/scores.py with interp/embed.py): planted features score ~1,
random and shuffled ones ~0.5, and a feature firing on a class of 12 tokens, more than the
n-gram explainer's 5, is found by the embedding explanation and missed by the n-gram rule."""

from __future__ import annotations

import pytest
import torch
from planted_corpus import PLANTED, VOCAB, S, batches, planted_codes

from saekit.interp import InterpConfig, score_features, summarize
from saekit.interp.embed import _align
from saekit.interp.run import collect_codes

E = 32


class ToyEmbedder:
    """Token vectors [V, E] (unit rows), with no context: e_t = vectors[token_t]."""

    def __init__(self, vectors_VE: torch.Tensor) -> None:
        self.vectors = torch.nn.functional.normalize(vectors_VE, dim=1)
        self.dim = vectors_VE.shape[1]

    def __call__(self, tokens_BT: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
        return self.vectors[tokens_BT] * mask_BT.unsqueeze(-1)


def random_vectors(vocab: int, seed: int = 5) -> torch.Tensor:
    return torch.randn(vocab, E, generator=torch.Generator().manual_seed(seed))


def test_planted_features_score_high_random_and_shuffled_at_chance():
    cfg = InterpConfig(example_len=8, reservoir=48, controls=())
    tokens, mask, z = planted_codes()
    embedder = ToyEmbedder(random_vectors(VOCAB))
    out = {}
    for shuffle in (False, True):
        data = collect_codes(batches(tokens, mask, z, shuffle), S, VOCAB, cfg, embedder)["codes"]
        out[shuffle] = score_features(data, cfg, VOCAB, progress=False)
    planted = summarize({j: out[False][j] for j in range(PLANTED)})
    rand = summarize({j: out[False][j] for j in range(PLANTED + 1, S)})
    shuf = summarize({j: out[True][j] for j in range(PLANTED + 1)})
    # measured: planted 1.000 / 1.000, random 0.49 / 0.50, shuffled 0.48 / 0.50
    assert planted["embedding_detection_mean"] >= 0.99
    assert planted["embedding_fuzzing_mean"] >= 0.99
    for null in (rand, shuf):
        for name in ("embedding_detection", "embedding_fuzzing"):
            assert abs(null[f"{name}_mean"] - 0.5) <= 0.07, (name, null)


def class_corpus(vocab: int = 400, n: int = 256, t: int = 32, seed: int = 0):
    """Random tokens; feature 0 fires on any of the 12 tokens 20..31 (a semantic class whose
    vectors share a direction), feature 1 on token 50 alone."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, vocab, (n, t), generator=gen)
    tokens[:, 0] = 0
    mask = tokens != 0
    strength = 1 + torch.rand(n, t, generator=gen)
    z = torch.zeros(n, t, 2)
    z[..., 0] = ((tokens >= 20) & (tokens < 32)) * strength
    z[..., 1] = (tokens == 50) * strength
    vectors = random_vectors(vocab)
    shared = torch.randn(E, generator=torch.Generator().manual_seed(9))
    vectors[20:32] = 0.5 * vectors[20:32] + 2.0 * shared  # the class's common meaning
    return tokens, mask, z * mask.unsqueeze(-1), vectors


def test_a_class_of_twelve_tokens_needs_the_embedding_explanation():
    tokens, mask, z, vectors = class_corpus()
    cfg = InterpConfig(example_len=8, reservoir=48, controls=())

    def feed():
        for a in range(0, len(tokens), 16):
            yield tokens[a : a + 16], mask[a : a + 16], {"codes": z[a : a + 16]}, a

    data = collect_codes(feed(), 2, 400, cfg, ToyEmbedder(vectors))["codes"]
    scores = score_features(data, cfg, 400, progress=False)
    cls, single = scores[0], scores[1]
    assert len(cls["explanation"]) == cfg.max_ngrams  # 5 of the 12 tokens at most
    # measured: n-gram detection 0.740, fuzzing 0.740; embedding 1.000 / 1.000
    assert cls["detection"] <= 0.8 and cls["fuzzing"] <= 0.8, cls
    assert cls["embedding_detection"] >= 0.98 and cls["embedding_fuzzing"] >= 0.98, cls
    assert single["embedding_detection"] >= 0.99 and single["detection"] >= 0.99, single


def test_lm_tokens_take_the_last_word_piece_that_starts_before_their_end():
    # LM tokens "Hello", " wor", "ld", "\n" (ends 5, 9, 11, 12); MiniLM pieces
    # [CLS] "hello" (0-5) "world" (6-11) [SEP]; a special LM token (end -1) stays zero.
    hidden = torch.arange(4.0).unsqueeze(1).repeat(1, 3)
    offsets = torch.tensor([[0, 0], [0, 5], [6, 11], [0, 0]])
    out = _align(hidden, offsets, [-1, 5, 9, 11, 12], 5)
    assert out[:, 0].tolist() == [0.0, 1.0, 2.0, 2.0, 2.0]


@pytest.mark.e2e
def test_minilm_vectors_follow_meaning_on_smollm2_tokens():
    from transformers import AutoTokenizer

    from saekit.interp.embed import MiniLMEmbedder
    from saekit.models.loading import offline_smollm2_dir

    tok = AutoTokenizer.from_pretrained(offline_smollm2_dir())
    texts = [" She wrote a long letter to her mother.", " He sent a short message to his dad.",
             " The train left the station at noon."]  # fmt: skip
    ids = [tok.encode(t, add_special_tokens=False)[:8] for t in texts]
    tokens = torch.tensor(ids)
    emb = MiniLMEmbedder(tok)(tokens, torch.ones_like(tokens, dtype=torch.bool))
    assert emb.shape == (3, 8, 384)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3, 8), atol=1e-5)
    letter = ids[0].index(tok.encode(" letter", add_special_tokens=False)[0])
    message = ids[1].index(tok.encode(" message", add_special_tokens=False)[0])
    station = ids[2].index(tok.encode(" station", add_special_tokens=False)[0])
    near = float(emb[0, letter] @ emb[1, message])
    far = float(emb[0, letter] @ emb[2, station])
    assert near > far + 0.1, (near, far)

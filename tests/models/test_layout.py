"""TransformerLens weights stored as its forward reads them: no copies, the same outputs."""

from __future__ import annotations

import copy

import einops
import torch
from torch.profiler import profile

from saekit.models.hooks import HookedModel
from saekit.models.layout import lay_out_for_reads
from saekit.models.loading import ModelConfig, load_model
from saekit.steering.generate import generate
from saekit.steering.interventions import RowDirections


def _standard_layout(model):
    """A copy with every parameter contiguous, as TransformerLens itself stores them."""
    plain = copy.deepcopy(model)
    for p in plain.parameters():
        p.data = p.data.contiguous()
    return plain


def _weight_copies(model, tokens_BT) -> int:
    """aten::copy_ calls during one forward on a tensor shaped as a weight matrix is read."""
    c = model.cfg
    D, F, V, H, Hk, E = c.d_model, c.d_mlp, c.d_vocab, c.n_heads, c.n_key_value_heads, c.d_head
    read = {(H, E, D), (H * E, D), (Hk, E, D), (Hk * E, D), (D, H, E), (D, H * E), (F, D), (D, F)}
    read |= {(V, D)}
    assert tokens_BT.numel() not in {D, F, V, H * E, Hk * E}  # rows never look like a weight
    with profile(record_shapes=True) as prof:
        model(tokens_BT)
    shapes = [e.input_shapes[0] for e in prof.events() if e.name == "aten::copy_"]
    return sum(tuple(s) in read for s in shapes if s)


def test_loaded_weights_are_the_views_the_forward_reads(tiny_model_dir):
    tl, _ = load_model(ModelConfig(name=str(tiny_model_dir), backend="transformer_lens"))
    assert tl.cfg.n_key_value_heads == 2  # the grouped-query path, as SmolLM2
    for block in tl.blocks:
        for w in (block.attn.W_Q, block.attn._W_K, block.attn._W_V):
            read = einops.rearrange(w, "h d e -> (h e) d")
            assert read.is_contiguous() and read.data_ptr() == w.data_ptr()
        read_O = einops.rearrange(block.attn.W_O, "h e d -> d (h e)")
        assert read_O.is_contiguous() and read_O.data_ptr() == block.attn.W_O.data_ptr()
        for w in (block.mlp.W_gate, block.mlp.W_in, block.mlp.W_out):
            assert w.T.is_contiguous()
    assert tl.unembed.W_U.T.is_contiguous()


def test_a_forward_copies_no_weight_and_gives_bit_identical_logits(tiny_model_dir):
    tl, _ = load_model(ModelConfig(name=str(tiny_model_dir), backend="transformer_lens"))
    plain = _standard_layout(tl)
    tokens_BT = torch.randint(4, tl.cfg.d_vocab, (3, 7))
    with torch.no_grad():
        assert torch.equal(tl(tokens_BT), plain(tokens_BT))
        # TransformerLens' own layout copies its weights on every forward; the one read is none.
        assert _weight_copies(plain, tokens_BT) >= 4 * tl.cfg.n_layers
        assert _weight_copies(tl, tokens_BT) == 0


def test_steered_kv_cached_generation_is_unchanged(tiny_model_dir, tokenizer):
    tl, _ = load_model(ModelConfig(name=str(tiny_model_dir), backend="transformer_lens"))
    plain = _standard_layout(tl)
    hook = "blocks.1.hook_resid_post"
    torch.manual_seed(0)
    prompts = [[1, 7, 9, 11], [1, 12, 5, 8], [1, 20, 21, 6]]
    vectors_SD = torch.randn(len(prompts), tl.cfg.d_model)
    out = []
    for model in (tl, plain):
        edit = {hook: RowDirections(vectors_SD, torch.tensor([0.0, 4.0, -4.0]))}
        out.append(generate(HookedModel(model, tokenizer), prompts, 6, edit))
    assert out[0] == out[1]


def test_other_models_and_repeated_calls_are_left_as_they_are(hf_model, tiny_model_dir):
    assert lay_out_for_reads(hf_model) == 0
    tl, _ = load_model(ModelConfig(name=str(tiny_model_dir), backend="transformer_lens"))
    before = {n: p.data_ptr() for n, p in tl.named_parameters()}
    # 6 weights per attention, minus W_K and W_V, which grouped-query attention keeps as _W_K/_W_V
    assert lay_out_for_reads(tl) == tl.cfg.n_layers * (4 + 3) + 1
    assert {n: p.data_ptr() for n, p in tl.named_parameters()} == before  # nothing copied again


def test_plain_attention_and_a_non_gated_mlp_too(tl_model, tokenizer):
    """The shared tiny TL model: multi-head attention with its own W_K/W_V, a GELU MLP."""
    plain = _standard_layout(tl_model)
    model = copy.deepcopy(plain)
    assert lay_out_for_reads(model) == model.cfg.n_layers * 4 + 1  # W_Q, W_K, W_V, W_O; W_U
    for block in model.blocks:
        for w in (block.attn.W_Q, block.attn.W_K, block.attn.W_V):
            assert einops.rearrange(w, "h d e -> (h e) d").data_ptr() == w.data_ptr()
    tokens_BT = torch.randint(4, model.cfg.d_vocab, (3, 7))
    with torch.no_grad():
        assert torch.equal(model(tokens_BT), plain(tokens_BT))
    prompts = [[1, 7, 9, 11], [1, 12, 5, 8]]
    out = [generate(HookedModel(m, tokenizer), prompts, 5) for m in (model, plain)]
    assert out[0] == out[1]

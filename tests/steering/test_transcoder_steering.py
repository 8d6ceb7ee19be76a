"""Steering with a transcoder's features: written at its output hook (the MLP's output), a clamp
reading z from its input hook, against hand-written hooks on the model's own modules."""

from __future__ import annotations

import pytest
import torch

from saekit.dictionaries import SAEConfig, build_dictionary
from saekit.errors import SaekitError
from saekit.steering.api import feature_edits, steer_generate
from saekit.steering.generate import encode_prompts
from saekit.steering.interventions import AddDirection, ClampFeature, RecordInput

NAMES = {
    "transformer_lens": ("blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"),
    "hf": ("model.layers.1.mlp:in", "model.layers.1.mlp"),
}


def transcoder(tiny, names):
    cfg = SAEConfig(method="topk", hook=names[0], output_hook=names[1], d_sae=32, k=4)
    d = build_dictionary(cfg, tiny.d_model, tiny.d_model)
    with torch.no_grad():
        d.b_dec.copy_(torch.randn(tiny.d_model, generator=torch.Generator().manual_seed(2)))
    return d


@torch.no_grad()
def by_hand(tiny, tokens, edit_out):
    """Logits with edit_out(mlp input, mlp output) in place of the MLP's output, hooked on the
    MLP module itself (TL's MLP reads ln2's output; HF's reads its first input)."""
    handle = tiny.blocks[1].mlp.register_forward_hook(lambda m, i, o: edit_out(i[0], o))
    try:
        return tiny.hooked.run(tokens)
    finally:
        handle.remove()


def test_feature_steers_where_the_transcoder_writes_and_clamps_from_its_input(tiny):
    backend = "transformer_lens" if tiny.hooked.is_transformer_lens else "hf"
    names = NAMES[backend]
    d = transcoder(tiny, names)
    tokens = torch.tensor([encode_prompts(tiny.hooked, ["the cat sat on"])[0]])
    i = 5
    add = feature_edits(d, i, strength=3.0)
    assert list(add) == [names[1]] and isinstance(add[names[1]], AddDirection)
    with torch.no_grad(), tiny.hooked.intervene(add):
        ours = tiny.hooked.run(tokens)
    unit = d.W_dec[i] / d.W_dec[i].norm()
    theirs = by_hand(tiny, tokens, lambda x, o: o + 3.0 * unit)
    assert torch.allclose(ours, theirs, atol=1e-5)

    clamp = feature_edits(d, i, clamp=4.0)
    assert isinstance(clamp[names[0]], RecordInput) and isinstance(clamp[names[1]], ClampFeature)
    with torch.no_grad(), tiny.hooked.intervene(clamp):
        ours = tiny.hooked.run(tokens)
    if backend == "transformer_lens":
        # TL's MLP reads ln2's output (normalized × w); the transcoder reads hook_normalized.
        ln2 = tiny.blocks[1].ln2
        read = lambda x: x / ln2.w  # noqa: E731
    else:
        read = lambda x: x  # noqa: E731

    def clamp_by_hand(x, o):
        z = d.encode(read(x).reshape(-1, tiny.d_model))[:, i].reshape(o.shape[:2])
        return o + (4.0 - z)[..., None] * d.W_dec[i]

    theirs = by_hand(tiny, tokens, clamp_by_hand)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert not torch.allclose(ours, by_hand(tiny, tokens, lambda x, o: o), atol=1e-4)
    text = steer_generate(tiny.hooked, "the cat", clamp, n_new=4)  # KV-cached steps too
    assert isinstance(text, str)


def test_a_transcoder_clamp_needs_its_input():
    cfg = SAEConfig(method="topk", hook="a", output_hook="b", d_sae=8, k=2)
    d = build_dictionary(cfg, 4, 4)
    with pytest.raises(SaekitError, match="pass a RecordInput"):
        ClampFeature(d, 0, 1.0)
    with pytest.raises(SaekitError, match="exactly one"):
        feature_edits(d, 0, strength=1.0, clamp=1.0)

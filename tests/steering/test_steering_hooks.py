"""Interventions: hooks always removed, KV-cached generation exact, clamping keeps the error."""

from __future__ import annotations

import warnings

import pytest
import torch

from saekit.dictionaries import SAEConfig, build_dictionary
from saekit.errors import SaekitError
from saekit.steering.api import feature_edit, steer_generate
from saekit.steering.generate import encode_prompts, generate
from saekit.steering.interventions import AddDirection, ClampFeature


def _tokens(tiny):
    return torch.tensor([encode_prompts(tiny.hooked, ["the cat sat on"])[0]])


def test_output_identical_before_and_after_steering(tiny):
    hooked, hook = tiny.hooked, tiny.resid[0]
    tokens = _tokens(tiny)
    before = hooked.run(tokens).detach().clone()
    v = torch.ones(tiny.d_model)
    text = steer_generate(hooked, "the cat", {hook: AddDirection(v, 5.0)}, n_new=4)
    assert isinstance(text, str)
    assert torch.equal(hooked.run(tokens), before)
    bad = AddDirection(torch.ones(tiny.d_model + 1), 1.0)  # fails inside the forward hook
    with pytest.raises(SaekitError, match="width"):
        generate(hooked, encode_prompts(hooked, ["the cat"]), 3, {hook: bad})
    assert torch.equal(hooked.run(tokens), before)
    with torch.no_grad(), hooked.intervene({hook: AddDirection(v, 5.0)}):
        assert not torch.allclose(hooked.run(tokens), before)


def _uncached_greedy(hooked, ids, n_new, edits):
    seq = list(ids)
    with hooked.intervene(edits):
        for _ in range(n_new):
            for e in edits.values():
                e.offset = 0
            seq.append(int(hooked.run(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(ids) :]


@pytest.mark.parametrize("from_pos", [0, 3, 7])
def test_cached_generation_matches_full_forwards(tiny, from_pos):
    hooked, hook = tiny.hooked, tiny.resid[0]
    v = torch.randn(tiny.d_model, generator=torch.Generator().manual_seed(1))
    prompts = encode_prompts(hooked, ["the cat sat", "dogs ran"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        steered = generate(hooked, prompts, 6, {hook: AddDirection(v, 4.0, from_pos)})
    # transformers 5.x warns on `past_key_values` and drops it in 5.40: the cache kwarg is named
    # as the installed version names it.
    assert not [w for w in caught if "deprecated" in str(w.message)]
    for ids, got in zip(prompts, steered):
        want = _uncached_greedy(hooked, ids, 6, {hook: AddDirection(v, 4.0, from_pos)})
        assert got == want[: len(got)]


def test_from_pos_leaves_earlier_positions_alone():
    edit = AddDirection(torch.ones(4), 2.0, from_pos=2)
    h = torch.zeros(1, 4, 4)
    out = edit(h)
    assert torch.equal(out[0, :2], torch.zeros(2, 4))
    assert torch.equal(out[0, 2:], 2 * torch.ones(2, 4))
    edit.offset = 5  # a cached step at absolute position 5
    assert torch.equal(edit(torch.zeros(1, 1, 4)), 2 * torch.ones(1, 1, 4))


def test_clamp_keeps_the_error_term(tiny):
    hooked, hook = tiny.hooked, tiny.resid[0]
    sae = build_dictionary(SAEConfig(method="topk", d_sae=32, k=4, seed=0), tiny.d_model)
    h = hooked.capture(_tokens(tiny), [hook])[hook]
    z = sae.encode(h.reshape(-1, tiny.d_model))
    i = int(z.sum(dim=0).argmax())  # a latent that fires somewhere
    # Clamping to 0 removes exactly the latent's own contribution z_i·d_i, nothing else.
    removed = (z[:, i][:, None] * sae.W_dec[i]).reshape(h.shape)
    assert torch.allclose(ClampFeature(sae, i, 0.0)(h), h - removed, atol=1e-5)
    out = ClampFeature(sae, i, 3.0)(h)
    want = h + ((3.0 - z[:, i])[:, None] * sae.W_dec[i]).reshape(h.shape)
    assert torch.allclose(out, want, atol=1e-5)


def test_bad_feature_strength_and_hook(tiny):
    sae = build_dictionary(SAEConfig(method="topk", d_sae=32, k=4), tiny.d_model)
    with pytest.raises(SaekitError, match="out of range"):
        feature_edit(sae, 32, strength=1.0)
    with pytest.raises(SaekitError, match="out of range"):
        feature_edit(sae, -1, clamp=1.0)
    with pytest.raises(SaekitError, match="finite"):
        feature_edit(sae, 0, strength=float("nan"))
    with pytest.raises(SaekitError, match="exactly one"):
        feature_edit(sae, 0)
    edit = feature_edit(sae, 0, strength=1.0)
    with pytest.raises(SaekitError, match="Unknown hook point"):
        steer_generate(tiny.hooked, "the cat", {"blocks.9.nope": edit}, n_new=2)
    with pytest.raises(SaekitError, match="width"):
        steer_generate(tiny.hooked, "the cat", {tiny.mlp_hidden: edit}, n_new=2)


def test_diffmean_directions_share_one_neutral_mean_and_match_the_definition(tiny):
    from saekit.steering.directions import diffmean_direction, diffmean_directions

    hooked, hook = tiny.hooked, tiny.resid[1]
    concepts = {"cats": ["the cat sat on the mat", "a cat"], "dogs": ["dogs ran far", "a dog ran"]}
    neutral = ["rivers moved slowly", "quiet hills under bright skies"]

    def token_mean(texts):
        rows = []
        for t in texts:
            ids = hooked.tokenizer(t, add_special_tokens=False)["input_ids"]
            acts = hooked.capture(torch.tensor([ids]), [hook], stop_early=False)[hook][0]
            rows.append(acts.float())
        return torch.cat(rows).mean(dim=0)  # every token weighs the same, whatever its text

    made = dict(diffmean_directions(hooked, hook, concepts, neutral))
    assert list(made) == ["cats", "dogs"]
    for name, texts in concepts.items():
        ref = token_mean(texts) - token_mean(neutral)
        torch.testing.assert_close(made[name], ref / ref.norm(), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(diffmean_direction(hooked, hook, texts, neutral), made[name])
    with pytest.raises(SaekitError, match="at least one concept text"):
        dict(diffmean_directions(hooked, hook, {"cats": []}, neutral))

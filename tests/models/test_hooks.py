"""HookedModel on both backends: hook listing, capture, early stop, interventions, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from saekit.errors import SaekitError
from saekit.models.hooks import HookedModel


def tokens(batch: int = 3, pos: int = 12, seed: int = 0) -> torch.Tensor:
    # Ids 4.. are ordinary characters of the conftest tokenizer (0-3 are specials).
    return torch.randint(4, 32, (batch, pos), generator=torch.Generator().manual_seed(seed))


def hook_ids(model: nn.Module) -> set[tuple[str, str, int]]:
    """Every registered forward / pre-forward hook (transformers installs some of its own)."""
    return {
        (name, kind, hid)
        for name, module in model.named_modules()
        for kind, hooks in (("fwd", module._forward_hooks), ("pre", module._forward_pre_hooks))
        for hid in hooks
    }


@pytest.fixture
def no_hooks_left(tiny):
    """Fails the test if it leaves a hook behind on the tiny model."""
    before = hook_ids(tiny.hooked.model)
    yield
    assert hook_ids(tiny.hooked.model) == before


class Counter:
    """A forward hook that counts calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *_args) -> None:
        self.calls += 1


# ---- listing ---------------------------------------------------------------------------------
def test_transformer_lens_hook_widths(tl_model, tokenizer):
    widths = HookedModel(tl_model, tokenizer).hook_widths()
    assert widths["blocks.0.hook_resid_post"] == 16
    assert widths["blocks.1.hook_resid_pre"] == 16
    assert widths["blocks.1.mlp.hook_post"] == 32
    assert widths["blocks.0.mlp.hook_pre"] == 32
    assert widths["unembed.hook_out"] == len(tokenizer)
    # Only [batch, pos, d] activations are hook points: per-head tensors are 4-D.
    assert "blocks.0.attn.hook_pattern" not in widths
    assert "blocks.0.attn.hook_z" not in widths
    assert not any(name.endswith(":in") for name in widths)


def test_hf_hook_widths(hf_model, tokenizer):
    widths = HookedModel(hf_model, tokenizer).hook_widths()
    assert widths["model.layers.1"] == 16
    assert widths["model.layers.1:in"] == 16
    assert widths["model.layers.1.mlp"] == 16
    assert widths["model.layers.1.mlp.down_proj:in"] == 32
    assert widths["model.layers.1.mlp.up_proj"] == 32
    assert widths["model.layers.0.self_attn.k_proj"] == 8  # 2 kv heads × head_dim 4
    assert widths["lm_head"] == len(tokenizer)
    assert "model" not in widths  # its output is a ModelOutput, not an activation


def test_width_of_unknown_hook_lists_closest(tiny):
    with pytest.raises(SaekitError) as err:
        tiny.hooked.width(tiny.resid[1] + "x")
    assert f"Closest valid names: {tiny.resid[1]}" in str(err.value)
    assert "saekit hooks" in str(err.value)


# ---- capture ---------------------------------------------------------------------------------
def test_multi_hook_capture_equals_single_captures(tiny):
    x = tokens()
    names = [tiny.resid[0], tiny.mlp_hidden, tiny.resid_pre_1, tiny.resid[1]]
    together = tiny.hooked.capture(x, names)
    assert set(together) == set(names)
    for name in names:
        alone = tiny.hooked.capture(x, [name])[name]
        assert together[name].shape == (3, 12, tiny.hooked.width(name))
        assert torch.equal(together[name], alone), name


def test_resid_pre_of_next_layer_is_resid_post(tiny):
    acts = tiny.hooked.capture(tokens(), [tiny.resid[0], tiny.resid_pre_1])
    assert torch.equal(acts[tiny.resid[0]], acts[tiny.resid_pre_1])


def test_capture_dedups_names_and_needs_one(tiny):
    acts = tiny.hooked.capture(tokens(), [tiny.resid[0], tiny.resid[0]])
    assert list(acts) == [tiny.resid[0]]
    with pytest.raises(SaekitError, match="at least one hook"):
        tiny.hooked.capture(tokens(), [])


def test_capture_does_not_track_gradients(tiny):
    acts = tiny.hooked.capture(tokens(), [tiny.resid[0]])
    assert not acts[tiny.resid[0]].requires_grad


def test_early_stop_matches_run_with_cache(tl_model, tokenizer):
    x = tokens()
    names = ["blocks.0.hook_resid_post", "blocks.0.mlp.hook_post", "blocks.1.hook_resid_mid"]
    early = HookedModel(tl_model, tokenizer).capture(x, names, stop_early=True)
    with torch.no_grad():
        _, cache = tl_model.run_with_cache(x)
    for name in names:
        assert torch.equal(early[name], cache[name]), name


def test_early_stop_matches_hf_hidden_states(hf_model, tokenizer):
    x = tokens()
    early = HookedModel(hf_model, tokenizer).capture(x, ["model.layers.0"], stop_early=True)
    with torch.no_grad():
        hidden = hf_model(input_ids=x, output_hidden_states=True).hidden_states
    # hidden_states[i + 1] is the output of layer i (the last one has the final norm applied).
    assert torch.equal(early["model.layers.0"], hidden[1])


def test_early_stop_skips_later_layers(tiny, no_hooks_left):
    counter = Counter()
    handle = tiny.blocks[1].register_forward_hook(counter)
    try:
        early = tiny.hooked.capture(tokens(), [tiny.resid[0]], stop_early=True)
        assert counter.calls == 0
        full = tiny.hooked.capture(tokens(), [tiny.resid[0]], stop_early=False)
        assert counter.calls == 1
    finally:
        handle.remove()
    assert torch.equal(early[tiny.resid[0]], full[tiny.resid[0]])


def test_early_stop_waits_for_the_deepest_hook(tiny):
    # Requested deepest-first: stopping must wait until every hook fired, not the first one.
    acts = tiny.hooked.capture(tokens(), [tiny.mlp_hidden, tiny.resid[0]])
    assert set(acts) == {tiny.mlp_hidden, tiny.resid[0]}


def test_unknown_hook_lists_closest_names(tiny, no_hooks_left):
    with pytest.raises(SaekitError) as err:
        tiny.hooked.capture(tokens(), [tiny.resid[1].replace("1", "7")])
    message = str(err.value)
    assert "Unknown hook point" in message and tiny.resid[1] in message


def test_input_suffix_is_rejected_on_transformer_lens(tl_model, tokenizer):
    with pytest.raises(SaekitError, match="Unknown hook point"):
        HookedModel(tl_model, tokenizer).capture(tokens(), ["blocks.0.hook_resid_post:in"])


def test_input_of_keyword_called_module_is_a_clear_error(hf_model, tokenizer):
    before = hook_ids(hf_model)
    # Llama calls self_attn(hidden_states=...) by keyword: a hook sees no positional input.
    with pytest.raises(SaekitError, match="Unknown hook point"):
        HookedModel(hf_model, tokenizer).capture(tokens(), ["model.layers.0.self_attn:in"])
    assert hook_ids(hf_model) == before


# ---- interventions ---------------------------------------------------------------------------
def test_intervention_changes_output_then_is_removed(tiny, no_hooks_left):
    x = tokens()
    with torch.no_grad():
        before = tiny.hooked.run(x)
        with tiny.hooked.intervene({tiny.resid[0]: torch.zeros_like}):
            inside = tiny.hooked.run(x)
        after = tiny.hooked.run(x)
    assert not torch.allclose(inside, before)
    assert torch.equal(after, before)


def test_intervention_is_seen_by_downstream_capture(tiny):
    with tiny.hooked.intervene({tiny.resid[0]: torch.zeros_like}):
        acts = tiny.hooked.capture(tokens(), [tiny.resid_pre_1])
    assert torch.equal(acts[tiny.resid_pre_1], torch.zeros(3, 12, tiny.d_model))


def test_intervention_is_removed_when_the_body_raises(tiny, no_hooks_left):
    x = tokens()
    with torch.no_grad():
        before = tiny.hooked.run(x)
        with (
            pytest.raises(RuntimeError, match="boom"),
            tiny.hooked.intervene({tiny.resid[0]: lambda a: a * 3, tiny.mlp_hidden: torch.neg}),
        ):
            raise RuntimeError("boom")
        after = tiny.hooked.run(x)
    assert torch.equal(after, before)


def test_intervention_with_unknown_name_registers_nothing(tiny, no_hooks_left):
    with (
        pytest.raises(SaekitError, match="Unknown hook point"),
        tiny.hooked.intervene({tiny.resid[0]: torch.zeros_like, "nope": torch.zeros_like}),
    ):
        pytest.fail("the body must not run")


def test_input_intervention_uses_the_module_input(hf_model, tokenizer):
    hooked = HookedModel(hf_model, tokenizer)
    before = hook_ids(hf_model)
    x = tokens()
    # Zeroing down_proj's input zeroes the MLP output (Llama's MLP has no biases).
    with torch.no_grad():
        with hooked.intervene({"model.layers.1.mlp.down_proj:in": torch.zeros_like}):
            via_input = hooked.run(x)
        with hooked.intervene({"model.layers.1.mlp": torch.zeros_like}):
            via_output = hooked.run(x)
        plain = hooked.run(x)
    assert torch.equal(via_input, via_output)
    assert not torch.allclose(via_input, plain)
    assert hook_ids(hf_model) == before


# ---- end to end ------------------------------------------------------------------------------
@pytest.mark.e2e
def test_smollm2_hook_listing(smollm2_tl):
    widths = smollm2_tl.hook_widths()
    layers = {int(name.split(".")[1]) for name in widths if name.startswith("blocks.")}
    assert layers == set(range(30))
    assert widths["blocks.0.hook_resid_pre"] == 576
    assert widths["blocks.29.hook_resid_post"] == 576
    assert widths["blocks.3.mlp.hook_post"] == 1536


@pytest.mark.e2e
def test_smollm2_hf_layer_output_equals_tl_resid_post(smollm2_tl, smollm2_hf):
    assert smollm2_hf.width("model.layers.3") == 576
    assert smollm2_hf.width("model.layers.3.mlp.down_proj:in") == 1536
    text = ["The river ran past the old mill, and the children followed it to the sea."] * 2
    x = torch.tensor(smollm2_tl.tokenizer(text)["input_ids"])
    x = torch.cat([torch.full((2, 1), smollm2_tl.tokenizer.bos_token_id), x], dim=1)
    tl = smollm2_tl.capture(x, ["blocks.3.hook_resid_post", "blocks.3.mlp.hook_post"])
    hf = smollm2_hf.capture(x, ["model.layers.3", "model.layers.3.mlp.down_proj:in"])
    torch.testing.assert_close(
        tl["blocks.3.hook_resid_post"], hf["model.layers.3"], atol=1e-3, rtol=0
    )
    torch.testing.assert_close(
        tl["blocks.3.mlp.hook_post"], hf["model.layers.3.mlp.down_proj:in"], atol=1e-3, rtol=0
    )
    with torch.no_grad():  # the README: TransformerLens logits match HF within 1e-4 (6.4e-5)
        gap = (smollm2_tl.model(x) - smollm2_hf.model(input_ids=x).logits).abs().max()
    assert float(gap) < 1e-4

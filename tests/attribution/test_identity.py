"""The sum identity of attribution, checked against the model run with plain interventions:

    Σ feature attributions + Σ error attributions = Δ = m(clean) − m(b_dec written at every
    ordinary position of the write hook)

with Δ measured independently (HookedModel.intervene, no attribution code), on both backends,
for an SAE (reads = writes) and for a dictionary that reads one hook and writes another. Each
node's attribution is checked against finite differences of the float64 model."""

from __future__ import annotations

import copy

import pytest
import torch

from saekit.attribution import AttributeConfig, Splice, attribute_splices
from saekit.attribution.attribute import Metric, attribute_splice
from saekit.attribution.splice import decompose
from saekit.dictionaries import SAEConfig, build_dictionary

PROMPT = "the cat sat on a mat"


def independent_delta(hooked, write_hook, b_D, tokens_1T, target):
    """m(clean) − m(baseline) from two forwards with a hand-written edit."""
    specials = torch.tensor(hooked.tokenizer.all_special_ids)
    ordinary_T = ~torch.isin(tokens_1T[0], specials)

    def to_baseline(act_BTD):
        out = act_BTD.clone()
        out[:, ordinary_T] = b_D.to(out)
        return out

    with torch.no_grad():
        clean = float(hooked.run(tokens_1T)[0, -1, target])
        with hooked.intervene({write_hook: to_baseline}):
            base = float(hooked.run(tokens_1T)[0, -1, target])
    return clean, clean - base


def prompt_ids(hooked):
    tok = hooked.tokenizer
    return torch.tensor([[tok.bos_token_id, *tok(PROMPT, add_special_tokens=False)["input_ids"]]])


@pytest.mark.parametrize("where", ["sae", "read_before_write"])
def test_attributions_and_error_sum_to_the_measured_change(tiny, attr_sae, where):
    hooked = tiny.hooked
    if where == "sae":
        read = write = tiny.resid[0]
    else:  # a transcoder's layout: codes from the layer-1 input, written at the layer-1 output
        read, write = tiny.resid_pre_1, tiny.resid[1]
    sae = attr_sae(hooked, read)
    target = int(hooked.tokenizer("a", add_special_tokens=False)["input_ids"][0])
    cfg = AttributeConfig(prompt=PROMPT, target="a", steps=16, tolerance=1e-4)
    d = attribute_splices(hooked, [Splice("s", sae, read, write)], cfg)["dictionaries"]["s"]

    clean, delta = independent_delta(hooked, write, sae.b_dec.detach(), prompt_ids(hooked), target)
    assert d["metric_spliced"] == pytest.approx(clean, abs=1e-5)
    assert d["delta"] == pytest.approx(delta, abs=1e-5)
    assert abs(delta) > 1e-3  # a change worth decomposing
    total = sum(e["attribution"] for e in d["features"]) + sum(d["error"])
    assert abs(total - delta) <= 2e-4 * abs(delta)
    assert d["identity_met"] and d["steps"] <= 32
    # The path integral is what makes the identity hold: activation × gradient at the clean
    # point alone misses by far more (a regression to the one-point rule fails above).
    assert abs(d["linear_residual"]) > 20 * abs(total - delta)
    # Every active code is a node, at ordinary positions only (BOS keeps its activation).
    x = hooked.capture(prompt_ids(hooked), [read])[read][0]
    with torch.no_grad():
        z = sae.encode(x)
    z[0] = 0
    assert len(d["features"]) == int((z > 0).sum())
    assert {e["position"] for e in d["features"]} <= set(range(1, len(x)))
    for e in d["features"][:5]:
        assert e["activation"] == pytest.approx(float(z[e["position"], e["feature"]]), rel=1e-5)


def test_tolerance_doubles_the_points_until_met(tiny, attr_sae):
    hooked, hook = tiny.hooked, tiny.resid[0]
    sae = attr_sae(hooked, hook)
    splice = Splice("s", sae, hook, hook)
    tokens = prompt_ids(hooked)
    metric = Metric(int(hooked.tokenizer("a", add_special_tokens=False)["input_ids"][0]))
    loose = attribute_splice(
        hooked, splice, tokens, metric, AttributeConfig(steps=1, tolerance=1e9)
    )
    tight = attribute_splice(
        hooked, splice, tokens, metric, AttributeConfig(steps=1, tolerance=1e-4, max_steps=64)
    )
    assert loose.steps == 1 and loose.relative_residual > 1e-3
    assert tight.steps > 1 and tight.relative_residual <= 1e-4
    capped = attribute_splice(
        hooked, splice, tokens, metric, AttributeConfig(steps=1, tolerance=1e-12, max_steps=4)
    )
    assert capped.steps == 4 and capped.relative_residual > 1e-12  # reported, not hidden


def test_each_node_matches_finite_differences_in_float64(tl_model, tokenizer, attr_sae):
    """A(v_t) = ∫ ∂/∂ε m(h(α) + ε v_t) dα, the derivative by central differences of the
    float64 model and the integral by composite Simpson (independent of the Gauss rule).
    TransformerLens keeps float64 throughout (HF's Llama computes its norms in float32)."""
    from transformer_lens import HookedTransformer

    from saekit.models.hooks import HookedModel

    cfg64 = copy.copy(tl_model.cfg)
    cfg64.dtype = torch.float64
    model64 = HookedTransformer(cfg64, tokenizer).eval()
    model64.load_state_dict(tl_model.state_dict())
    hooked = HookedModel(model64, tokenizer)
    hook = "blocks.0.hook_resid_post"
    sae = attr_sae(hooked, hook).double()
    splice = Splice("s", sae, hook, hook)
    tokens = prompt_ids(hooked)
    target = int(tokenizer("a", add_special_tokens=False)["input_ids"][0])
    cfg = AttributeConfig(steps=32, max_steps=32, tolerance=1e-9)
    a = attribute_splice(hooked, splice, tokens, Metric(target, contrast_id=5), cfg)
    nodes = decompose(hooked, splice, tokens)
    y, b, mask = nodes.y_TD, nodes.base_D, nodes.mask_T

    n_int, eps = 128, 1e-5
    alphas = torch.linspace(0, 1, n_int + 1, dtype=torch.float64)
    simpson = torch.ones(n_int + 1, dtype=torch.float64)
    simpson[1:-1:2], simpson[2:-1:2] = 4, 2
    simpson /= 3 * n_int
    for t, i in zip(a.positions[:4].tolist(), a.features[:4].tolist()):
        v_D = nodes.z_TS[t, i] * sae.W_dec[i].detach()
        rows = []
        for alpha in alphas:
            h = torch.where(mask[:, None], y - (1 - alpha) * (y - b), y)
            for sign in (1, -1):
                rows.append(h.clone().index_add_(0, torch.tensor([t]), sign * eps * v_D[None]))
        h_NTD = torch.stack(rows)
        with torch.no_grad(), hooked.intervene({hook: lambda act, h_NTD=h_NTD: h_NTD}):
            logits = hooked.run(tokens.expand(len(rows), -1))[:, -1]
        m = logits[:, target] - logits[:, 5]
        deriv = (m[0::2] - m[1::2]) / (2 * eps)
        reference = float((simpson * deriv).sum())
        got = float(a.attributions[(a.positions == t) & (a.features == i)][0])
        assert got == pytest.approx(reference, rel=1e-6)


def test_public_api_attributes_at_the_hook_the_dictionary_was_trained_on(tiny, attr_sae):
    import saekit

    hooked, hook = tiny.hooked, tiny.resid[0]
    sae = attr_sae(hooked, hook)
    cfg = AttributeConfig(prompt=PROMPT, target="a", contrast="b")
    through_run = attribute_splices(hooked, [Splice("dictionary", sae, hook, hook)], cfg)
    public = saekit.attribute(hooked, sae, PROMPT, target="a", contrast="b")
    assert public == through_run
    no_hook = build_dictionary(SAEConfig(method="topk", d_sae=32, k=4), tiny.d_model)
    with pytest.raises(saekit.SaekitError, match="records no hook"):
        saekit.attribute(hooked, no_hook, PROMPT)

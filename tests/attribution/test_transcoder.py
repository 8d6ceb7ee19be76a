"""Attribution through transcoders (codes read at an MLP's input, written at its output), on both
backends: the sum identity against the change measured with a plain intervention at the MLP
output, the skip path of a skip transcoder as its own node, and a saved transcoder found at
its output hook when loaded back, with the skip path as a row of the view."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch

import saekit
from saekit.attribution.html import attribution_page
from saekit.attribution.splice import write_hook
from saekit.dictionaries import SAEConfig, build_dictionary, load_dictionary

PROMPT = "the cat sat on a mat"
MLP_HOOKS = {
    "transformer_lens": ("blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"),
    "hf": ("model.layers.1.mlp:in", "model.layers.1.mlp"),
}


def transcoder(hooked, read: str, write: str, skip: bool, seed: int = 0):
    """A seeded TopK (skip) transcoder: b_dec at the mean MLP output, W_skip off its zero init."""
    cfg = SAEConfig(
        method="topk", d_sae=32, k=4, hook=read, output_hook=write, skip_connection=skip
    )
    tc = build_dictionary(cfg, hooked.width(read), hooked.width(write))
    ids = hooked.tokenizer("birds sang over quiet hills", return_tensors="pt")["input_ids"]
    y = hooked.capture(ids.to(hooked.device), [write])[write][0].float()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        tc.b_dec.copy_(y.mean(0))
        tc.W_dec.mul_(y.std() * 4)  # decoder vectors on the MLP output's scale
        if skip:
            tc.W_skip.copy_(0.3 * torch.randn(tc.W_skip.shape, generator=gen))
    return tc.eval()


def measured_delta(hooked, write: str, b_D: torch.Tensor, target: int) -> float:
    """m(clean) − m(b_dec at every ordinary position of the MLP output), two plain forwards."""
    tok = hooked.tokenizer
    ids = torch.tensor([[tok.bos_token_id, *tok(PROMPT, add_special_tokens=False)["input_ids"]]])

    def to_baseline(act_BTD):
        out = act_BTD.clone()
        out[:, 1:] = b_D.to(out)  # the BOS keeps its activation
        return out

    with torch.no_grad():
        clean = float(hooked.run(ids)[0, -1, target])
        with hooked.intervene({write: to_baseline}):
            return clean - float(hooked.run(ids)[0, -1, target])


def loud_mlp(tiny, backend: str):
    """A copy of the tiny model whose layer-1 MLP output is 30x larger: at its random init the
    MLP barely moves the logits, leaving too small a change to decompose."""
    model = copy.deepcopy(tiny.hooked.model)
    with torch.no_grad():
        if backend == "hf":
            model.model.layers[1].mlp.down_proj.weight.mul_(30)
        else:
            model.blocks[1].mlp.W_out.mul_(30)
    return saekit.HookedModel(model, tiny.hooked.tokenizer)


@pytest.mark.parametrize("skip", [False, True])
def test_transcoder_attributions_sum_to_the_change_at_its_output_hook(tiny, skip):
    backend = "hf" if tiny.resid[0].startswith("model.") else "transformer_lens"
    hooked = loud_mlp(tiny, backend)
    read, write = MLP_HOOKS[backend]
    tc = transcoder(hooked, read, write, skip)
    cfg = saekit.AttributeConfig(tolerance=1e-4)
    report = saekit.attribute(hooked, tc, PROMPT, target="a", config=cfg)
    d = report["dictionaries"]["dictionary"]
    assert (d["read_hook"], d["write_hook"]) == (read, write)

    delta = measured_delta(hooked, write, tc.b_dec.detach(), report["target"]["id"])
    assert abs(delta) > 1e-2
    assert d["delta"] == pytest.approx(delta, abs=1e-5)
    parts = d["sum_features"] + d["sum_error"] + (d["sum_skip"] or 0.0)
    assert abs(parts - delta) <= 2e-4 * abs(delta)
    assert sum(e["attribution"] for e in d["features"]) == pytest.approx(d["sum_features"])
    if not skip:
        assert d["sum_skip"] is None and d["skip"] is None
        return
    assert abs(d["sum_skip"]) > 1e-2 * abs(delta)  # a node worth showing
    # The skip path is split off the error node, nothing else moves: the same transcoder
    # without W_skip has the same path (y, b, codes), so identical feature attributions and an
    # error node equal to this one's error + skip, position by position.
    plain = transcoder(hooked, read, write, skip=False)
    p = saekit.attribute(hooked, plain, PROMPT, target="a", config=cfg)["dictionaries"]
    p = p["dictionary"]
    assert p["delta"] == pytest.approx(d["delta"], abs=1e-6)
    assert [e["feature"] for e in p["features"]] == [e["feature"] for e in d["features"]]
    torch.testing.assert_close(
        torch.tensor([e["attribution"] for e in p["features"]]),
        torch.tensor([e["attribution"] for e in d["features"]]),
        atol=1e-5 * abs(delta),
        rtol=1e-3,
    )
    torch.testing.assert_close(
        torch.tensor(p["error"]),
        torch.tensor(d["error"]) + torch.tensor(d["skip"]),
        atol=1e-5 * abs(delta),
        rtol=1e-3,
    )


def test_a_saved_transcoder_is_spliced_at_its_output_hook(hf_model, tokenizer, tmp_path):
    hooked = saekit.HookedModel(hf_model, tokenizer)
    read, write = MLP_HOOKS["hf"]
    transcoder(hooked, read, write, skip=True).save(tmp_path / "tc")
    loaded = load_dictionary(tmp_path / "tc")
    assert write_hook(loaded, read) == write
    report = saekit.attribute(hooked, loaded, PROMPT, target="a")
    d = report["dictionaries"]["dictionary"]
    assert d["write_hook"] == write
    # The view shows the skip path as a node row between all features and the error.
    html = attribution_page(report, 5, tmp_path / "no-dashboard", tmp_path)
    rows = re.findall(r'<tr class="node"><th>([^<]+)</th><td class=v>([^<]+)</td>', html)
    assert [label for label, _ in rows] == ["all features", "skip path", "error"]
    assert float(rows[1][1]) == pytest.approx(d["sum_skip"], rel=1e-2)


def test_saekit_attribute_on_a_run_with_a_skip_transcoder_and_an_sae(
    tmp_path, saekit_home, corpus_jsonl, hf_model, tokenizer, capsys
):
    """`saekit attribute RUN` splices each of the run's dictionaries at its own hooks: the skip
    transcoder reads the MLP input and writes its output, the SAE reads and writes the output."""
    from saekit.activations.stream import StreamConfig
    from saekit.cli import main
    from saekit.config import save_yaml
    from saekit.data.text import DataConfig
    from saekit.models.loading import ModelConfig
    from saekit.recipe import Recipe

    read, write = MLP_HOOKS["hf"]
    model = copy.deepcopy(hf_model)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.mul_(30)  # as loud_mlp
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    hooked = saekit.HookedModel(model, tokenizer)
    tc = transcoder(hooked, read, write, skip=True)
    sae = build_dictionary(SAEConfig(method="topk", d_sae=32, k=4, hook=write), hooked.width(write))
    with torch.no_grad():
        sae.b_dec.copy_(tc.b_dec)
    run = tmp_path / "run"
    (run / "saes").mkdir(parents=True)
    recipe = Recipe(
        model=ModelConfig(name=str(tmp_path / "model"), backend="hf"),
        data=DataConfig(source=str(corpus_jsonl), context_size=16),
        stream=StreamConfig(hooks=(read, write)),
        saes=(tc.cfg, sae.cfg),
    )
    save_yaml(recipe, run / "recipe.yaml")
    tc.save(run / "saes" / "00-skip-transcoder")
    sae.eval().save(run / "saes" / "01-sae")

    assert main(["attribute", str(run), "--prompt", PROMPT, "--target", "a"]) == 0
    out = capsys.readouterr().out
    report = json.loads((run / "attribution" / "attribution.json").read_text())
    t, s = report["dictionaries"]["00-skip-transcoder"], report["dictionaries"]["01-sae"]
    assert (t["read_hook"], t["write_hook"]) == (read, write)
    assert (s["read_hook"], s["write_hook"]) == (write, write)
    assert t["sum_skip"] is not None and s["sum_skip"] is None
    for d in (t, s):
        assert d["identity_met"]
        parts = d["sum_features"] + d["sum_error"] + (d["sum_skip"] or 0.0)
        assert abs(parts - d["delta"]) <= 0.01 * abs(d["delta"])
    assert f"+ skip {t['sum_skip']:.4g} + error" in out
    html = (run / "attribution" / "index.html").read_text()
    assert html.count("<th>skip path</th>") == 1

    assert main(["attribute", str(run), "--prompt", PROMPT, "--layer-set", read]) == 0
    report = json.loads((run / "attribution" / "attribution.json").read_text())
    assert list(report["dictionaries"]) == ["00-skip-transcoder"]

"""A transcoder evaluated with the MLP replaced, against hand computations through the model's
own hooks (TransformerLens `fwd_hooks`, a plain torch hook on the HF MLP module)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import saekit
from saekit.dictionaries import SAEConfig, build_dictionary
from saekit.errors import SaekitError
from saekit.eval.core import evaluate_core
from saekit.eval.splice import splice
from saekit.models.hooks import HookedModel

IN, OUT = "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"
D_MODEL = 16


def transcoder(hook: str, output_hook: str, skip: bool, seed: int = 0, d_in: int = D_MODEL):
    cfg = SAEConfig(
        method="relu", hook=hook, output_hook=output_hook, d_sae=48, skip_connection=skip
    )
    d = build_dictionary(cfg, d_in, D_MODEL)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in d.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return d.eval()


@torch.no_grad()
def hand_ce_kl(tl, tokens, mask, replace):
    """CE over ordinary-position predictions and KL over ordinary positions, with the MLP
    output replaced at `mask` by replace(MLP input rows), through TL's own hooks."""
    seen = {}

    def read(act, hook):  # noqa: ARG001 - TL's hook signature
        seen["x"] = act
        return act

    def write(act, hook):  # noqa: ARG001
        act = act.clone()
        act[mask] = replace(seen["x"][mask])
        return act

    clean = tl(tokens).double()
    logits = tl.run_with_hooks(tokens, fwd_hooks=[(IN, read), (OUT, write)]).double()
    logp = F.log_softmax(logits[:, :-1], dim=-1)
    nll = -logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)
    kl = (F.softmax(clean, -1) * (F.log_softmax(clean, -1) - F.log_softmax(logits, -1))).sum(-1)
    return float(nll[mask[:, :-1]].mean()), float(kl[mask].mean())


@pytest.mark.parametrize("skip", [False, True])
def test_mlp_replaced_by_the_transcoder_matches_hand_computation(
    skip, eval_model, eval_tl, eval_windows
):
    d = transcoder(IN, OUT, skip)
    got = evaluate_core(
        eval_model, d, IN, eval_windows, n_windows=len(eval_windows), model_batch_size=4,
        progress=False,
    )  # fmt: skip
    tokens = eval_windows.get(0, len(eval_windows))
    mask = eval_windows.token_mask(tokens)
    _, cache = eval_tl.run_with_cache(tokens, names_filter=[IN, OUT])
    x, y = cache[IN][mask], cache[OUT][mask]
    with torch.no_grad():
        y_hat = d(x)
    fvu = float((y - y_hat).pow(2).sum() / (y - y.mean(0)).pow(2).sum())
    assert got["output_hook"] == OUT and got["d_out"] == D_MODEL
    assert got["fvu"] == pytest.approx(fvu, rel=1e-4)
    ce_sae, kl_sae = hand_ce_kl(eval_tl, tokens, mask, lambda x: d(x))
    ce_zero, kl_zero = hand_ce_kl(eval_tl, tokens, mask, lambda x: x.new_zeros(len(x), D_MODEL))
    ce_mean, _ = hand_ce_kl(eval_tl, tokens, mask, lambda x: y.mean(0).expand(len(x), -1))
    ce_clean = got["ce_clean"]
    assert got["ce_sae"] == pytest.approx(ce_sae, rel=1e-5)
    assert got["kl_sae"] == pytest.approx(kl_sae, rel=1e-4, abs=1e-7)
    assert got["ce_zero"] == pytest.approx(ce_zero, rel=1e-5)
    assert got["kl_zero"] == pytest.approx(kl_zero, rel=1e-4, abs=1e-7)
    assert got["ce_mean"] == pytest.approx(ce_mean, rel=1e-5)
    # The zero baseline ablates the MLP, not the residual stream: it differs from clean.
    assert ce_zero != pytest.approx(ce_clean, rel=1e-3)
    score = (ce_zero - ce_sae) / (ce_zero - ce_clean)
    assert got["ce_loss_score"] == pytest.approx(score, rel=1e-4)


def test_a_transcoder_that_never_fires_scores_as_zero_ablation(eval_model, eval_windows):
    d = transcoder(IN, OUT, skip=False)
    with torch.no_grad():
        d.b_enc.fill_(-1e4)
        d.b_dec.zero_()
    got = evaluate_core(eval_model, d, IN, eval_windows, n_windows=6, progress=False)
    assert got["l0_mean"] == 0
    assert got["ce_sae"] == pytest.approx(got["ce_zero"], rel=1e-6)
    assert got["ce_loss_score"] == pytest.approx(0.0, abs=1e-6)


def test_hf_module_paths_splice_the_mlp(hf_model, tokenizer):
    """`model.layers.1.mlp:in` → `model.layers.1.mlp`: the same logits as a torch hook that
    returns transcoder(MLP input) in place of the MLP's output."""
    hooked = HookedModel(hf_model, tokenizer)
    d = transcoder("model.layers.1.mlp:in", "model.layers.1.mlp", skip=True, seed=3)
    tokens = torch.randint(4, len(tokenizer), (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        clean = hooked.run(tokens)
        with hooked.intervene(splice(d)):
            ours = hooked.run(tokens)
        handle = hf_model.model.layers[1].mlp.register_forward_hook(lambda m, i, o: d(i[0]))
        try:
            theirs = hooked.run(tokens)
        finally:
            handle.remove()
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert not torch.allclose(ours, clean, atol=1e-3)


def test_transcoder_on_activations_is_scored_on_its_output(eval_tl, eval_windows):
    d = transcoder(IN, OUT, skip=True)
    tokens = eval_windows.get(0, 4)
    _, cache = eval_tl.run_with_cache(tokens, names_filter=[IN, OUT])
    x, y = cache[IN].flatten(0, 1), cache[OUT].flatten(0, 1)
    got = saekit.evaluate(d, {IN: x, OUT: y}, progress=False)
    with torch.no_grad():
        fvu = float((y - d(x)).pow(2).sum() / (y - y.mean(0)).pow(2).sum())
    assert got["fvu"] == pytest.approx(fvu, rel=1e-5)
    with pytest.raises(SaekitError, match="A transcoder is scored on what it predicts"):
        saekit.evaluate(d, x, progress=False)

"""`evaluate_core` against hand computations on a tiny trained TransformerLens model.

Every expected number here is computed without saekit's eval code: activations come from
TransformerLens' own `run_with_cache`, interventions from its own `fwd_hooks`, and the metrics
from the formulas written out in each test.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from saekit.dictionaries import ReLUSAE, SAEConfig, build_dictionary
from saekit.errors import SaekitError
from saekit.eval.core import evaluate_core

HOOK = "blocks.0.hook_resid_post"  # the layer-0 residual stream of the eval_tl fixture
D_MODEL = 16
BOS = 0
REL = 1e-5


def close(ours: float, theirs: float, rel: float = REL, abs_: float = 1e-7) -> bool:
    return abs(ours - theirs) <= max(rel * abs(theirs), abs_)


def run(model, windows, sae, batch: int = 4, **kw):
    n = len(windows)
    return evaluate_core(model, sae, HOOK, windows, n_windows=n, model_batch_size=batch,
                         progress=False, **kw)  # fmt: skip


def all_tokens(windows) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = windows.get(0, len(windows))
    return tokens, windows.token_mask(tokens)


def clean_acts(tl, tokens: torch.Tensor) -> torch.Tensor:
    _, cache = tl.run_with_cache(tokens, names_filter=[HOOK])
    return cache[HOOK]


def hand_logits(tl, tokens: torch.Tensor, mask: torch.Tensor, replace) -> torch.Tensor:
    """Logits with the hook's activation replaced at `mask` positions, through TL's hooks."""

    def hook(act, hook):  # noqa: ARG001 - TL's hook signature
        act = act.clone()
        act[mask] = replace(act[mask])
        return act

    return tl.run_with_hooks(tokens, fwd_hooks=[(HOOK, hook)])


def hand_ce(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean next-token CE over the predictions made at ordinary positions."""
    logp = F.log_softmax(logits[:, :-1].double(), dim=-1)
    nll = -logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)
    return float(nll[mask[:, :-1]].mean())


def hand_kl(clean: torch.Tensor, other: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean over ordinary positions (the last included) of KL(p_clean ‖ p_other)."""
    logp = F.log_softmax(clean[mask].double(), dim=-1)
    logq = F.log_softmax(other[mask].double(), dim=-1)
    return float((logp.exp() * (logp - logq)).sum(-1).mean())


def test_identity_dictionary_is_perfect(eval_model, eval_windows, pm_identity):
    out = run(eval_model, eval_windows, pm_identity("relu"))
    assert out["fvu"] == pytest.approx(0.0, abs=1e-12)
    assert out["explained_variance"] == pytest.approx(1.0, abs=1e-12)
    assert out["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert out["ce_sae"] == pytest.approx(out["ce_clean"], abs=1e-6)
    assert out["kl_sae"] == pytest.approx(0.0, abs=1e-7)
    assert out["ce_loss_score"] == pytest.approx(1.0, abs=1e-6)
    assert out["ce_loss_score_mean_ablation"] == pytest.approx(1.0, abs=1e-6)
    # The baseline is meaningful: ablating layer 0 costs the trained model several nats.
    assert out["ce_zero"] > out["ce_clean"] + 1.0


def test_ce_kl_and_ablations_equal_a_hand_computation(eval_model, eval_tl, eval_windows,
                                                      pm_identity):  # fmt: skip
    sae = pm_identity("topk", k=4)  # keeps the 4 largest |x_d|: imperfect on purpose
    out = run(eval_model, eval_windows, sae, batch=4)
    tokens, mask = all_tokens(eval_windows)
    mean_D = clean_acts(eval_tl, tokens)[mask].double().mean(0).float()  # all evaluated tokens
    with torch.no_grad():
        clean = eval_tl(tokens)
        variants = {
            "sae": hand_logits(eval_tl, tokens, mask, sae),
            "zero": hand_logits(eval_tl, tokens, mask, torch.zeros_like),
            "mean": hand_logits(eval_tl, tokens, mask, lambda a: mean_D.expand_as(a)),
        }
    ce_clean = hand_ce(clean, tokens, mask)
    assert close(out["ce_clean"], ce_clean)
    ce = {name: hand_ce(logits, tokens, mask) for name, logits in variants.items()}
    for name, logits in variants.items():
        assert close(out[f"ce_{name}"], ce[name]), name
        assert close(out[f"kl_{name}"], hand_kl(clean, logits, mask), abs_=1e-6), name
    score = (ce["zero"] - ce["sae"]) / (ce["zero"] - ce_clean)
    assert close(out["ce_loss_score"], score)
    score_mean = (ce["mean"] - ce["sae"]) / (ce["mean"] - ce_clean)
    assert close(out["ce_loss_score_mean_ablation"], score_mean)
    assert 0.1 < out["ce_loss_score"] < 0.99  # a non-trivial score was checked


def test_lm_metrics_do_not_depend_on_the_batch_size(eval_model, eval_windows, pm_identity):
    # The mean-ablation vector is the mean over every evaluated token, not the first batch's.
    sae = pm_identity("topk", k=4)
    outs = [run(eval_model, eval_windows, sae, batch=b) for b in (1, 4, 11)]
    for key in ("ce_clean", "ce_sae", "ce_zero", "ce_mean", "kl_mean", "fvu", "l0_mean"):
        assert all(close(o[key], outs[0][key]) for o in outs), key


def test_special_positions_are_never_spliced(eval_model, eval_tl, eval_windows, pm_identity):
    garbage = pm_identity("relu")
    with torch.no_grad():
        garbage.W_dec.mul_(-5.0)  # x̂ = −5x: ruinous wherever it is spliced
    seen: list[torch.Tensor] = []
    # blocks.1.hook_resid_pre receives blocks.0.hook_resid_post after any splice.
    eval_tl.add_hook("blocks.1.hook_resid_pre", lambda act, hook: seen.append(act.clone()))
    try:
        out = run(eval_model, eval_windows, garbage, batch=len(eval_windows))
    finally:
        eval_tl.reset_hooks()
    tokens, mask = all_tokens(eval_windows)
    assert tokens[:, 0].eq(BOS).all() and (~mask).sum() > len(eval_windows)  # + mid-window BOS
    clean = clean_acts(eval_tl, tokens)
    seen = [a for a in seen if a.shape == clean.shape]  # not the hook-width probe forward
    assert len(seen) == 4  # clean, sae, zero, mean (pass 1 stops at the hook)
    for act in seen:
        assert torch.equal(act[~mask], clean[~mask])
    spliced = [a for a in seen if torch.allclose(a[mask], -5.0 * clean[mask], atol=1e-5)]
    zeroed = [a for a in seen if torch.equal(a[mask], torch.zeros_like(clean[mask]))]
    assert len(spliced) == 1 and len(zeroed) == 1
    assert out["ce_sae"] > out["ce_clean"] + 1.0


class RowsOnly(ReLUSAE):
    """A dictionary that, like matching pursuit or SNMF, accepts [tokens, d_in] rows only."""

    def encode(self, x_BD: torch.Tensor) -> torch.Tensor:
        assert x_BD.ndim == 2, f"dictionaries take [tokens, d_in] rows, got {tuple(x_BD.shape)}"
        return super().encode(x_BD)


def test_the_splice_feeds_the_dictionary_rows(eval_model, eval_windows, pm_identity):
    rows_only = RowsOnly(SAEConfig(method="relu", d_sae=2 * D_MODEL, hook=HOOK), D_MODEL)
    rows_only.load_state_dict(pm_identity("relu").state_dict())
    out = run(eval_model, eval_windows, rows_only)
    assert out["ce_sae"] == pytest.approx(out["ce_clean"], abs=1e-6)


def test_reconstruction_metrics_equal_a_hand_computation(eval_model, eval_tl, eval_windows):
    sae = build_dictionary(SAEConfig(method="relu", d_sae=48, seed=3, hook=HOOK), D_MODEL)
    with torch.no_grad():
        sae.b_enc.fill_(-0.2)
        sae.b_dec.copy_(0.1 * torch.randn(D_MODEL, generator=torch.Generator().manual_seed(4)))
    out = run(eval_model, eval_windows, sae, with_lm=False)
    tokens, mask = all_tokens(eval_windows)
    x = clean_acts(eval_tl, tokens)[mask].double()
    with torch.no_grad():
        x_hat = sae(x.float()).double()
    err = (x - x_hat).pow(2).sum()
    assert out["n_tokens"] == int(mask.sum())
    assert close(out["fvu"], float(err / (x - x.mean(0)).pow(2).sum()))
    assert close(out["explained_variance"], 1 - out["fvu"])
    assert close(out["mse"], float(err / len(x)))
    assert close(out["cosine"], float(F.cosine_similarity(x, x_hat, dim=-1).mean()))
    assert close(out["l2_ratio"], float((x_hat.norm(dim=-1) / x.norm(dim=-1)).mean()))
    bias = x_hat.pow(2).sum(-1).mean() / (x * x_hat).sum(-1).mean()
    assert close(out["relative_reconstruction_bias"], float(bias))
    assert 0.05 < out["fvu"] < 5  # neither trivial nor degenerate
    assert "ce_sae" not in out and "kl_sae" not in out  # with_lm=False skips the LM passes


def test_l0_dead_and_dense_fractions_of_a_constructed_dictionary(eval_model, eval_tl,
                                                                 eval_windows):  # fmt: skip
    # Latent d < 16 fires iff x_d > 0; then one dead latent, one firing on every token, and one
    # firing iff x_0 exceeds its 95th percentile (rare: < 10%, so not dense).
    tokens, mask = all_tokens(eval_windows)
    x = clean_acts(eval_tl, tokens)[mask]
    q = float(x[:, 0].quantile(0.95))
    d_sae = D_MODEL + 3
    sae = build_dictionary(SAEConfig(method="relu", d_sae=d_sae, hook=HOOK), D_MODEL)
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.W_enc[:, :D_MODEL] = torch.eye(D_MODEL)
        sae.W_enc[0, D_MODEL + 2] = 1.0
        sae.b_enc.zero_()
        sae.b_enc[D_MODEL:] = torch.tensor([-1.0, 1.0, -q])
        sae.b_dec.zero_()
    out = run(eval_model, eval_windows, sae, with_lm=False)
    rare = x[:, 0] > q
    l0 = (x > 0).sum(-1) + 1 + rare.long()
    assert out["l0_mean"] == pytest.approx(float(l0.double().mean()), rel=1e-12)
    assert (out["l0_min"], out["l0_max"]) == (float(l0.min()), float(l0.max()))
    assert out["l0_min"] < out["l0_max"]
    frac = torch.cat([(x > 0).double().mean(0), torch.tensor([0.0, 1.0, rare.double().mean()])])
    assert 0 < frac[-1] < 0.1
    assert out["dead_fraction"] == pytest.approx(1 / d_sae)
    assert out["dense_fraction"] == pytest.approx(float((frac > 0.1).double().mean()))
    assert out["log10_density"][D_MODEL] == pytest.approx(-10.0)  # the dead latent's floor
    assert out["log10_density"][D_MODEL + 1] == pytest.approx(0.0, abs=1e-9)
    assert sum(out["density_histogram"]["counts"]) == d_sae


def test_width_mismatch_names_both_widths(eval_model, eval_windows):
    narrow = build_dictionary(SAEConfig(method="relu", d_sae=32), 8)
    with pytest.raises(SaekitError, match=r"d_in=8.*width 16"):
        run(eval_model, eval_windows, narrow)


def test_unknown_hook_is_a_clear_error(eval_model, eval_windows, pm_identity):
    with pytest.raises(SaekitError, match="Unknown hook point 'blocks.9.hook_resid_post'"):
        evaluate_core(eval_model, pm_identity(), "blocks.9.hook_resid_post", eval_windows,
                      progress=False)  # fmt: skip

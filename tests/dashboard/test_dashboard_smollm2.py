"""End to end on the offline SmolLM2: token-detector features planted in the embedding space
(blocks.0.hook_resid_pre is exactly W_E[token]) score high, their shuffled codes score at
chance, their random-direction control (same norms and thresholds) never fires, and the
dashboard renders real tokens and the model's vocabulary projection."""

from __future__ import annotations

import json

import pytest
import torch

from saekit.activations.stream import StreamConfig
from saekit.config import save_yaml
from saekit.dashboard import build_dashboard
from saekit.data.text import DataConfig
from saekit.dictionaries import SAEConfig, build_dictionary
from saekit.interp import InterpConfig, run_interp_eval
from saekit.recipe import Recipe

HOOK = "blocks.0.hook_resid_pre"
WORDS = (" and", " of", " to", " in", " was", " he", " that", " it")
D_SAE = 64


@pytest.mark.e2e
def test_planted_smollm2_features_score_and_render(tmp_path, smollm2_tl):
    model = smollm2_tl.model
    ids = [smollm2_tl.tokenizer.encode(w, add_special_tokens=False) for w in WORDS]
    assert all(len(i) == 1 for i in ids)
    W_E = model.W_E.detach().float()  # [vocab, 576]
    sae = build_dictionary(SAEConfig(method="relu", d_sae=D_SAE, hook=HOOK), W_E.shape[1])
    with torch.no_grad():
        sae.b_dec.zero_()
        for j, (tid,) in enumerate(ids):
            u = W_E[tid] / W_E[tid].norm()
            proj = W_E @ u
            second = proj.topk(2).values[1]
            sae.W_enc[:, j] = u  # fires on the token alone: threshold between it and the next
            sae.b_enc[j] = -(proj[tid] + second) / 2
            sae.W_dec[j] = u
    sae.save(tmp_path / "run" / "saes" / "00-planted")
    save_yaml(
        Recipe(data=DataConfig(context_size=128), stream=StreamConfig(hooks=(HOOK,))),
        tmp_path / "run" / "recipe.yaml",
    )
    cfg = InterpConfig(n_windows=48, control_features=D_SAE)
    report = run_interp_eval(tmp_path / "run", cfg=cfg, model=smollm2_tl, progress=False)
    rows = json.loads((tmp_path / "run" / "interp" / "00-planted" / "table.json").read_text())
    planted = rows[: len(WORDS)]
    assert all(r["detection"] is not None for r in planted), planted
    for r, word in zip(planted, WORDS):
        assert r["explanation"][0] == word and r["token_entropy"] == 0.0, r
        # measured: 1.0 on all three for all 8
        assert r["detection"] >= 0.99 and r["fuzzing"] >= 0.99 and r["simulation"] >= 0.99, r
    controls = report["saes"]["00-planted"]["controls"]
    shuffled = controls["shuffled"]  # measured 0.538 / 0.502 / −0.020 on the 8 planted
    assert shuffled["scored"] == len(WORDS)
    assert abs(shuffled["detection_mean"] - 0.5) <= 0.08, shuffled
    assert abs(shuffled["fuzzing_mean"] - 0.5) <= 0.05, shuffled
    assert abs(shuffled["simulation_mean"]) <= 0.1, shuffled
    # A random direction with a planted threshold (midway between the token's own projection
    # and the next token's) fires on no token of the vocabulary: the control scores nothing.
    assert controls["random"]["scored"] == 0 and controls["random"]["detection_mean"] is None
    gen = torch.Generator().manual_seed(0)
    r_DR = torch.nn.functional.normalize(torch.randn(W_E.shape[1], 64, generator=gen), dim=0)
    thresholds_J = -sae.b_enc[: len(WORDS)].detach()
    assert float((W_E @ r_DR).max()) < 0.5 * float(thresholds_J.min())
    index = build_dashboard(tmp_path / "run")
    page = (index.parent / "00-planted" / "0.html").read_text()
    assert '<span class="tok on"' in page and "Vocabulary projection" in page
    assert f"<code>{WORDS[0]}</code>" in page  # real token strings, not ids

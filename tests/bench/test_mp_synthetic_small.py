"""The MP synthetic study end to end at toy size: table, JSON-able result and PNG (~5 s)."""

from __future__ import annotations

import json

import torch

from saekit.activations.synthetic import HierarchicalTree
from saekit.bench import mp_synthetic
from saekit.dictionaries import SAEConfig
from saekit.dictionaries.mp import MatchingPursuitSAE


def test_study_runs_and_reports(tmp_path):
    png, threads = tmp_path / "mp.png", torch.get_num_threads()
    result = mp_synthetic.run(
        levels=(0, 6), methods=("mp", "topk"), steps=40, batch_size=128, plot=str(png)
    )
    json.dumps(result)
    assert png.stat().st_size > 10_000
    assert set(result["results"]) == {"0", "6"}
    for level, by_method in result["results"].items():
        assert set(by_method) == {"mp", "topk"}
        for m in by_method.values():
            assert m["l0"] == 2.0  # fixed k = 2 for both
            keys = {"mmcs", "sibling_cosine", "gram_distortion", "absorption_rate"}
            assert keys | {"sibling_violation"} <= set(m)
        # The README's adaptive-inference claim: up to 4k = 8 pursuit steps, stopping at
        # ‖r‖ ≤ 0.05‖x − b_dec‖, cut the FVU of the same MP model (here 0.36 → 0.16).
        a = result["mp_adaptive"][level]
        assert 1 <= a["l0_min"] <= a["l0_mean"] <= a["l0_max"] <= 8
        assert a["fvu"] < 0.7 * by_method["mp"]["fvu"]
    text = mp_synthetic.table(result)
    assert "sib cos" in text and len(text.splitlines()) == 2 + 4 + 1 + 2
    assert torch.get_num_threads() == threads  # the study runs on 1 thread, then restores


def test_tree_metrics_on_the_true_dictionary():
    """With the true features as atoms, siblings keep the true cosine and nothing absorbs."""
    data = HierarchicalTree(level=4, seed=0)
    sae = MatchingPursuitSAE(SAEConfig(method="mp", d_sae=20, k=2), 20)
    with torch.no_grad():
        sae.W_dec.copy_(data.features_FD)
    m = mp_synthetic.tree_metrics(data, sae, n_tokens=4096)
    assert abs(m["sibling_cosine"] - 0.4) < 1e-5
    assert abs(m["absorption_rate"]) < 0.05

"""Selection on the real offline SmolLM2 (small budget: 13 short samples, a layer-3 SAE)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saekit.dictionaries import SAEConfig, build_dictionary
from saekit.dictionaries.save import save_dictionary
from saekit.selection.config import SelectConfig
from saekit.selection.data import Sample
from saekit.selection.select import load_selector, select_data

COOKING = [
    ("How long should I boil an egg?", "About nine minutes for a firm yolk."),
    ("What spice goes well with lentil soup?", "Cumin."),
    ("How do I keep pasta from sticking?", "Stir it and use plenty of water."),
    ("Which oil is best for frying?", "Sunflower oil."),
    ("How do I know bread is baked?", "It sounds hollow when tapped."),
    ("What makes a sauce thicker?", "Reduce it or add flour."),
]
MATH = [
    ("What is 17 times 3?", "51"),
    ("Solve x + 4 = 10.", "x = 6"),
    ("Is 91 a prime number?", "No, 91 = 7 x 13."),
    ("What is the derivative of x squared?", "2x"),
    ("What is 2 to the power 10?", "1024"),
    ("What is the square root of 144?", "12"),
]


@pytest.mark.e2e
def test_select_on_smollm2(smollm2_tl, tmp_path: Path) -> None:
    hook = "blocks.3.hook_resid_post"
    d = build_dictionary(SAEConfig(method="topk", d_sae=1152, k=16, hook=hook), 576)
    selector = load_selector(save_dictionary(d, tmp_path / "sae"), model=smollm2_tl)
    pool = [Sample(i, r, "cooking", n) for n, (i, r) in enumerate(COOKING)]
    pool += [Sample(i, r, "math", 6 + n) for n, (i, r) in enumerate(MATH)]
    target = [Sample("What is 9 times 8?", "72"), Sample("Solve 2x = 14.", "x = 7")]  # held out
    cfg = SelectConfig(ratio=0.5, max_tokens=64, batch_size=8)
    report = select_data(selector, pool, target, cfg, tmp_path / "out", progress=False)
    assert report["selected"] == 6 and sorted(report["selected_rows"]) == list(range(6, 12))
    ranking = [
        json.loads(x) for x in (tmp_path / "out" / "ranking.jsonl").read_text().split("\n") if x
    ]
    # Even an untrained SAE's features separate the topics: every math sample above every
    # cooking one, MoNA by 1.8x (0.132 vs 0.072) and the RDS embedding (0.877 vs 0.799).
    for method, margin in (("mona", 1.5), ("rds", 1.05)):
        math = min(r[method] for r in ranking if r["category"] == "math")
        cooking = max(r[method] for r in ranking if r["category"] == "cooking")
        assert math > margin * cooking, (method, math, cooking)
    # BOS and the chat template (incl. SmolLM2's default system prompt) are masked: only
    # content tokens are pooled, ~4-15 per sample here.
    assert 3 < report["mean_content_tokens"]["pool"] < 20
    again = select_data(selector, pool, target, cfg, None, progress=False)
    assert again["selected_rows"] == report["selected_rows"]

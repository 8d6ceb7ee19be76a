"""`run_selection_eval` on the tiny model with a labelled jsonl pool: JSON layout and plots."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from saekit.dictionaries import SAEConfig, build_dictionary
from saekit.dictionaries.save import save_dictionary
from saekit.errors import SaekitError
from saekit.selection import run_selection_eval
from saekit.selection.config import DataFields, SelectConfig
from saekit.selection.finetune import FinetuneConfig
from saekit.selection.select import load_selector

TOPICS = {
    "animals": ("cat", "dog", "owl", "cow"),
    "weather": ("sun", "rain", "fog", "snow"),
    "food": ("fig", "jam", "pie", "egg"),
}


@pytest.fixture
def labelled_pool(tmp_path: Path) -> Path:
    rng = random.Random(0)
    rows = []
    for topic, words in TOPICS.items():
        for i in range(10):
            text = " ".join(rng.choice(words) for _ in range(3))
            rows.append({"q": f"{text} {i}", "a": rng.choice(words), "label": topic})
    path = tmp_path / "labelled.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_run_selection_eval_writes_json_and_plots(
    tiny, tmp_path: Path, labelled_pool: Path
) -> None:
    d = build_dictionary(SAEConfig(method="topk", d_sae=64, k=4, hook=tiny.resid[1]), 16)
    selector = load_selector(save_dictionary(d, tmp_path / "sae"), model=tiny.hooked)
    out = tmp_path / "eval"
    result = run_selection_eval(
        selector,
        out,
        SelectConfig(max_tokens=24, batch_size=8),
        FinetuneConfig(n_blocks=1, steps=2, batch_size=2, max_tokens=24),
        pool_spec=str(labelled_pool),
        fields=DataFields(instruction="q", response="a", category="label"),
        n_categories=3,
        per_category=5,
        n_target=2,
        n_heldout=3,
        n_downstream=1,
        progress=False,
    )
    saved = json.loads((out / "selection.json").read_text())
    assert saved["retrieval"]["categories"] == sorted(TOPICS)
    assert saved["retrieval"]["pool_size"] == 15
    assert saved["retrieval"]["ratio"] == pytest.approx(1 / 3)
    summary = saved["retrieval"]["summary"]
    assert {"mona", "random", "bm25", "rds", "neurons"} <= set(summary)
    for row in summary.values():  # at ratio = the category share, precision = recall
        assert row["precision"]["mean"] == pytest.approx(row["recall"]["mean"])
    # The topics share no word, so BM25 ranks perfectly; MoNA on the tiny random model's
    # features nearly so (AUC 0.987 and 1.0 on the two backends).
    assert summary["bm25"]["precision"]["mean"] == summary["bm25"]["auc"]["mean"] == 1.0
    assert summary["mona"]["auc"]["mean"] >= 0.95
    down = saved["downstream"]
    assert len(down["categories"]) == 1
    (losses,) = down["categories"].values()
    assert {"base", "mona", "random", down["best_baseline"]} == set(losses)
    assert (out / "selection-retrieval.png").stat().st_size > 0
    assert (out / "selection-downstream.png").stat().st_size > 0
    assert result["sae_fvu"] is not None
    with pytest.raises(SaekitError, match="Only 0 categories have ≥ 30 samples"):
        run_selection_eval(
            selector,
            out,
            SelectConfig(max_tokens=24),
            pool_spec=str(labelled_pool),
            fields=DataFields(instruction="q", response="a", category="label"),
            n_categories=4,
            per_category=5,
            progress=False,
        )

"""`run_selection_eval` on the tiny model with a labelled jsonl pool: JSON layout and plots."""

from __future__ import annotations

import argparse
import importlib.util
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
    # LoRA runs on the plain HF model only (peft adapts nn.Linear modules).
    ft_models = {"last_blocks": tiny.hooked}
    if not tiny.hooked.is_transformer_lens and importlib.util.find_spec("peft") is not None:
        ft_models["lora"] = tiny.hooked
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
        ft_models=ft_models,
    )
    saved = json.loads((out / "selection.json").read_text())
    retrieval = saved["retrieval"]
    assert sorted(retrieval["targets"]) == sorted(TOPICS)
    assert retrieval["pool_size"] == 15
    summary = retrieval["summary"]
    assert {"mona", "random", "bm25", "rds", "neurons"} <= set(summary)
    for m, row in summary.items():
        for metric in ("precision", "auc"):
            ci = row[metric]
            assert ci["n"] == 3 and ci["lo"] <= ci["mean"] <= ci["hi"], (m, metric)
        # at the default ratio R/N (R-precision) precision = recall on every target
        for per in retrieval["per_target"].values():
            assert per[m]["precision"] == pytest.approx(per[m]["recall"])
    # The topics share no word, so BM25 ranks perfectly; MoNA on the tiny random model's
    # features nearly so (AUC 0.987 and 1.0 on the two backends).
    assert summary["bm25"]["precision"]["mean"] == summary["bm25"]["auc"]["mean"] == 1.0
    assert summary["mona"]["auc"]["mean"] >= 0.95
    paired = retrieval["paired_vs_mona"]["bm25"]["auc"]
    mona_auc = [retrieval["per_target"][t]["mona"]["auc"] for t in sorted(TOPICS)]
    assert paired["mean"] == pytest.approx(1.0 - sum(mona_auc) / 3)
    down = saved["downstream"]
    assert len(down["targets"]) == 1 and set(down["per_target"]) == set(ft_models)
    # The record names the fine-tuning methods that ran, not the config's template method.
    assert saved["finetune"]["methods"] == list(ft_models) and "method" not in saved["finetune"]
    for ft in ft_models:
        (losses,) = down["per_target"][ft].values()
        assert set(losses) == {"base", "full_pool", *summary}
        assert set(down["mean"][ft]) == set(losses)
        assert "mona" not in down["paired_vs_mona"][ft]
        base = losses["base"]["response_loss"]
        assert all(v["response_loss"] != base for m, v in losses.items() if m != "base")
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


def test_ft_models_of_the_cli(tiny) -> None:
    from saekit.selection.cli import _ft_models

    def args(method: str, downstream: int = 6) -> argparse.Namespace:
        return argparse.Namespace(ft_method=method, downstream=downstream, run_dir=".", model=None)

    assert _ft_models(args("both", 0), tiny.hooked) == {}
    assert _ft_models(args("last_blocks"), tiny.hooked) == {"last_blocks": tiny.hooked}
    if not tiny.hooked.is_transformer_lens and importlib.util.find_spec("peft") is not None:
        both = _ft_models(args("both"), tiny.hooked)
        assert both == {"last_blocks": tiny.hooked, "lora": tiny.hooked}

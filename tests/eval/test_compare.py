"""`saekit eval compare`: paired differences between dictionaries evaluated on the same held-out
windows, checked against the per-window columns directly; runs evaluated first when they have
no report yet; independent resampling for unpaired scores; clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from saekit.activations.stream import StreamConfig
from saekit.cli import main
from saekit.config import save_yaml
from saekit.data.text import DataConfig
from saekit.errors import SaekitError
from saekit.eval.scorecard import Score
from saekit.models.hooks import HookedModel
from saekit.recipe import Recipe
from saekit.report import evaluate_run
from saekit.report.compare import compare, load_cards

HOOK = "blocks.0.hook_resid_post"


def one_dictionary_run(root, corpus, sae) -> None:
    """A run directory holding one saved dictionary (SAELens format) and a 16-token recipe."""
    recipe = Recipe(data=DataConfig(source=str(corpus), context_size=16, eval_fraction=0.4),
                    stream=StreamConfig(hooks=(HOOK,)), saes=(sae.cfg,))  # fmt: skip
    root.mkdir()
    save_yaml(recipe, root / "recipe.yaml")
    sae.save(root / "saes" / root.name)


def test_compare_two_runs(
    tmp_path, saekit_home, corpus_jsonl, tokenizer, eval_tl, pm_identity, capsys
):
    model = HookedModel(eval_tl, tokenizer)
    one_dictionary_run(tmp_path / "topk", corpus_jsonl, pm_identity("topk", k=4))
    one_dictionary_run(tmp_path / "identity", corpus_jsonl, pm_identity("relu"))
    evaluated = []

    def evaluate(path):
        evaluated.append(path.name)
        return evaluate_run(path, n_windows=10, model=model)

    cards = load_cards([tmp_path / "topk", tmp_path / "identity"], evaluate)
    assert evaluated == ["topk", "identity"] and list(cards) == ["topk/topk", "identity/identity"]
    rows = compare(cards)
    fvu = {r.name: r for r in rows if r.metric == "explained_variance"}
    ref, other = fvu["topk/topk"], fvu["identity/identity"]
    assert ref.diff is None and other.diff is not None and other.diff.paired
    # the paired difference of two ratios over the same windows, by hand from the columns
    a, b = other.score.units, ref.score.units
    assert other.diff.value == pytest.approx(a.value - b.value, rel=1e-12)
    lo, hi = other.diff.ci
    assert 0 < lo <= other.diff.value <= hi  # the identity explains all variance, topk not
    assert other.significant and other.diff.p < 0.01
    # the CLI reads the reports just written (no model needed) and prints the same rows
    assert main(["eval", "compare", str(tmp_path / "topk"), str(tmp_path / "identity")]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "explained_variance" in x and "identity" in x)
    assert f"{other.diff.value:.3f}" in line and "better" in line and "paired" in line
    l0 = next(x for x in out.splitlines() if "l0_mean" in x and "identity" in x)
    assert "differs" in l0 and "better" not in l0  # L0 has no better direction
    assert (
        main(["eval", "compare", str(tmp_path / "topk"), str(tmp_path / "identity"), "--json"]) == 0
    )
    rows_json = json.loads(capsys.readouterr().out)
    ev = [r for r in rows_json if r["metric"] == "explained_variance"]
    assert ev[1]["difference"]["significant"] and ev[0]["difference"] is None
    # --markdown: scores down, dictionaries across, then the margins over the controls
    args = ["eval", "compare", str(tmp_path / "topk"), str(tmp_path / "identity"), "--markdown"]
    assert main(args) == 0
    scores_md, margins_md = _md_tables(capsys.readouterr().out)
    assert scores_md[0] == ["section", "score", "topk", "identity"]
    ev_md = next(r for r in scores_md if r[1] == "explained_variance")
    assert ev_md[2] == f"{ref.score.value:.3f} [{ref.score.ci[0]:.3f}, {ref.score.ci[1]:.3f}]"
    assert ev_md[3].endswith("↑") and ev_md[3].startswith(f"{other.score.value:.3f} [")
    assert next(r for r in scores_md if r[1] == "l0_mean")[3].endswith("≠")
    ev_margin = next(r for r in margins_md if r[1] == "explained_variance")
    s = other.score
    assert s.margin is not None and s.margin_ci is not None
    want = "✓" if s.margin_ci[0] > 0 else "✗" if s.margin_ci[1] < 0 else "~"
    assert ev_margin[3] == (
        f"{s.margin:.3f} [{s.margin_ci[0]:.3f}, {s.margin_ci[1]:.3f}] {want} "
        f"({s.strongest_control})"
    )


def _md_tables(text: str) -> list[list[list[str]]]:
    """The Markdown tables of `text`, each as rows of cells (separator rows dropped)."""
    tables: list[list[list[str]]] = []
    inside = False
    for line in text.splitlines():
        if line.startswith("|"):
            if not inside:
                tables.append([])
            inside = True
            if not line.startswith("|---"):
                tables[-1].append([c.strip() for c in line.strip("|").split("|")])
        else:
            inside = False
    assert len(tables) == 2
    return tables


def test_short_labels():
    from saekit.report.compare import short_labels

    names = ["card/00-topk-blocks.12.hook_resid_post", "card/04-mp-blocks.12.hook_resid_post",
             "card-snmf/00-snmf-blocks.12.mlp.hook_post", "other"]  # fmt: skip
    assert list(short_labels(names).values()) == ["topk", "mp", "snmf", "other"]
    twice = ["a/00-topk-blocks.1.hook_resid_post", "b/00-topk-blocks.1.hook_resid_post"]
    assert short_labels(twice) == {n: n for n in twice}  # equal headers: keep the full names


def test_unpaired_scores_resample_independently():
    rng = np.random.default_rng(0)

    def card(values, key):
        from saekit.eval.scorecard import Units, score

        return {"interpretability": {"detection": score(Units("features", key, values,
                                                              np.ones(len(values))))}}  # fmt: skip

    x, y = rng.normal(0.6, 0.1, 300), rng.normal(0.5, 0.1, 300)
    rows = compare({"a": card(x, ""), "b": card(y, "")})
    diff = rows[1].diff
    assert diff is not None and not diff.paired
    half = 1.96 * np.sqrt(x.var(ddof=1) / 300 + y.var(ddof=1) / 300)
    assert diff.value == pytest.approx(y.mean() - x.mean())
    assert diff.ci[1] - diff.ci[0] == pytest.approx(2 * half, rel=0.15)
    assert rows[1].significant and isinstance(rows[0].score, Score)


def test_compare_errors_are_clear(tmp_path, capsys):
    assert main(["eval", "compare", str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    with pytest.raises(SaekitError, match="needs at least two"):
        load_cards([tmp_path], lambda p: {"scorecard": {"only": {}}})
    assert main(["eval", str(tmp_path), str(tmp_path)]) == 2
    assert "Give one RUN_DIR" in capsys.readouterr().err


def test_too_few_units_are_never_significant():
    from saekit.eval.scorecard import Units, score

    def card(values):
        units = Units("probing tasks", "tasks:a,b", np.array(values), np.ones(len(values)))
        return {"sparse_probing": {"accuracy_k5": score(units)}}

    rows = compare({"a": card([0.5, 0.5]), "b": card([0.625, 0.625])})
    assert rows[1].diff is not None and rows[1].diff.p == 0.0  # a degenerate bootstrap
    assert not rows[1].significant

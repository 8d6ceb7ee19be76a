"""The scorecard's steering and selection sections, read from the layouts `saekit steer` and
`saekit select` write, checked against hand-computed means and pairing."""

from __future__ import annotations

import numpy as np
import pytest

from saekit.report.scorecard import (
    build_scorecard,
    scorecard_table,
    selection_scores,
    steering_scores,
)

HOOK = "blocks.12.hook_resid_post"


def steering_json() -> dict:
    def d(kind: str, score: float | None) -> dict:
        return {"kind": kind, "curve": [], "selected": None if score is None else {"score": score}}

    return {"sites": {HOOK: {"directions": {
        "sae#3": d("feature", 0.40), "sae#7": d("feature", 0.30), "sae#9": d("feature", None),
        "other#1": d("feature", 0.90), "random#0": d("random", 0.10), "random#1": d("random", 0.20),
    }}}}  # fmt: skip


def test_steering_section_is_the_selected_score_against_random_directions():
    s = steering_scores(steering_json(), "sae", HOOK)["steering_score"]
    assert s.value == pytest.approx(0.35) and s.resampled == "2 steered directions"
    assert s.controls == {"random": pytest.approx(0.15)} and s.margin == pytest.approx(0.20)
    assert steering_scores(steering_json(), "sae", "blocks.6.hook_resid_post") == {}


def test_selection_section_pairs_mona_with_random_over_categories():
    rand = {"auc": 0.5, "precision": 0.25}
    per_cat = {c: {"mona": {"auc": a, "precision": p}, "random": rand}
               for c, a, p in (("code", .9, .8), ("math", .7, .6), ("qa", .8, .5))}  # fmt: skip
    out = selection_scores({"retrieval": {"per_category": per_cat}})
    auc = out["retrieval_auc"]
    assert auc.value == pytest.approx(0.8) and auc.margin == pytest.approx(0.3)
    assert auc.units.key == "categories:code,math,qa" and auc.resampled == "3 held-out categories"
    # paired: every resample draws the same categories for both, so the margin's interval
    # lies within the per-category margins' range
    assert auc.margin_ci is not None and 0.2 - 1e-9 <= auc.margin_ci[0] <= auc.margin_ci[1] <= 0.4
    assert out["retrieval_precision"].value == pytest.approx(np.mean([0.8, 0.6, 0.5]))


def test_build_scorecard_orders_sections_and_prints_them():
    report = {"saes": {"sae": {"hook": HOOK}, "other": {"hook": HOOK}}}
    per_cat = {
        "a": {"mona": {"auc": 0.9, "precision": 0.5}, "random": {"auc": 0.5, "precision": 0.1}}
    }
    selection = {"sae": "runs/x/saes/sae", "retrieval": {"per_category": per_cat}}
    cards = build_scorecard(report, steering_json(), selection)
    assert list(cards["sae"]) == ["steering", "selection"]
    assert list(cards["other"]) == ["steering"]  # selection.json names the dictionary it used
    table = scorecard_table(cards)
    assert (
        "steering_score" in table and "retrieval_auc" in table and "2 steered directions" in table
    )

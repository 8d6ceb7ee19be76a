"""The study pool builder: deterministic, disjoint roles, distractors, mixed targets."""

from __future__ import annotations

import pytest

from saekit.errors import SaekitError
from saekit.selection.data import Sample
from saekit.selection.pool import build_study_pool, labelled_study_pool, specific_words

FAMILIES = {
    "colours": ("paint", "dye", "ink"),
    "animals": ("birds", "fish"),
    "numbers": ("sums", "digits"),
}
WORDS = {
    "paint": "paint colour hex wall",
    "dye": "dye colour fabric hex",
    "ink": "ink colour printer cyan",
    "birds": "bird wing nest feather",
    "fish": "fish fin river scale",
    "sums": "add plus total number",
    "digits": "digit count number place",
}


def by_cat(n: int = 50) -> dict[str, list[Sample]]:
    return {
        c: [Sample(f"{w} question {i}", f"answer {i}", c) for i in range(n)]
        for c, w in WORDS.items()
    }


def build(**kw):  # type: ignore[no-untyped-def]
    args = dict(per_category=12, n_target=3, n_heldout=4, n_mixed=2, distractors=3, min_pool=10)
    return build_study_pool(by_cat(), FAMILIES, **(args | kw))


def test_study_pool_roles_targets_and_distractors() -> None:
    study = build()
    texts = lambda rows: {(s.instruction, s.response) for s in rows}  # noqa: E731
    pool, ex = texts(study.pool), texts(study.exemplars)
    held = texts(s for rows in study.heldout.values() for s in rows)
    assert not (pool & ex) and not (pool & held) and not (ex & held)
    singles = [t for t in study.targets if t.kind == "single"]
    mixed = [t for t in study.targets if t.kind == "mixed"]
    # targets_per_family = 2: colours and animals give 2 each, numbers 2
    assert [t.name for t in singles] == ["paint", "dye", "birds", "fish", "sums", "digits"]
    family = {c: f for f, cats in FAMILIES.items() for c in cats}
    for t in mixed:
        assert 2 <= len(t.categories) <= 3
        assert len({family[c] for c in t.categories}) == len(t.categories)
        assert len(study.exemplar_rows(t)) == 3 * len(t.categories)
        assert len(study.target_heldout(t)) == 4 * len(t.categories)
    # "colour" is in every colours sample but sits in two of its members: the word most
    # specific to paint vs the rest of the pool is its own.
    assert study.keywords["paint"][0] == "paint"
    distractors = [s for s in study.pool if "(Keywords:" in s.instruction]
    assert len(distractors) == 3 * len(singles)
    for s in distractors:
        kw = s.instruction.split("(Keywords: ")[1].rstrip(")").split(", ")
        owner = next(c for c, words in study.keywords.items() if words == kw)
        assert family[s.category] != family[owner]  # same words, another family's task
    assert len(study.pool) == 12 * len(WORDS) + len(distractors)
    assert [s.source_index for s in study.pool] == list(range(len(study.pool)))


def test_study_pool_is_deterministic_and_seeded() -> None:
    a, b, c = build(), build(), build(seed=1)
    assert a == b
    assert [s.instruction for s in a.pool] != [s.instruction for s in c.pool]


def test_specific_words_needs_a_share_and_a_positive_margin() -> None:
    own = [Sample("alpha beta", "x"), Sample("alpha gamma", "x"), Sample("alpha beta", "x")]
    rest = [Sample("beta delta", "y"), Sample("beta delta", "y")]
    assert specific_words(own, rest, 3) == ["alpha", "gamma"]
    assert specific_words(own, rest, 3, min_share=0.5) == ["alpha"]
    assert specific_words([Sample("12 34", "5")], rest, 3) == []


def test_study_pool_errors() -> None:
    with pytest.raises(SaekitError, match="fewer than 90 samples: paint, dye"):
        build_study_pool(by_cat(), FAMILIES, n_target=5, n_heldout=45, min_pool=40)
    with pytest.raises(SaekitError, match="Only 7 categories"):
        labelled_study_pool(by_cat(), 8, 10, 3, 4, seed=0)


@pytest.mark.e2e
def test_offline_study_pool_size() -> None:
    """The default study pool from the real evals wheel: the sizes docs/selection.md states."""
    from saekit.selection.data import offline_categories

    study = build_study_pool(offline_categories(26))
    assert len(study.pool) == 5572
    assert len(study.targets) == 30 and sum(t.kind == "mixed" for t in study.targets) == 6
    assert sum(bool(k) for k in study.keywords.values()) == 12
    assert sum("(Keywords: " in s.instruction for s in study.pool) == 120
    assert len(study.exemplars) == 5 * len({c for t in study.targets for c in t.categories})

"""The selection study's pool: hard enough to rank methods, built the same way every time.

A pool of well-separated categories (different formats, scripts, tasks) lets every
model-based representation find a category almost perfectly, so methods cannot be told apart.
This builder makes three kinds of confusion part of the pool, from the offline instruction
mix (the eval categories of the PyPI `evals` wheel):

- **Near neighbours.** Categories come in families that share a domain but not a task: five
  Belarusian language tasks, four colour-code conversions, four South-Slavic exam sets, four
  cipher tasks, ... A target is one category; its family members are its hardest negatives.
- **Lexical distractors.** For each single-category target, the `n_keywords` words most
  specific to its pool samples (`specific_words`) are appended ("Keywords: ...") to
  `distractors` samples of categories in *other* families. They keep their own label: same
  words, different task.
- **Mixed targets.** A target whose exemplars blend 2-3 categories of different families; its
  positives are the union of those categories.

Each category is split as in the offline mix (`split_category`, seeded): `n_target` exemplars,
`n_heldout` held-out samples (the downstream check's test set), then at most `per_category`
pool samples; distractors come from the rest, so no text is in two roles.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from saekit.errors import SaekitError
from saekit.selection.data import Sample, split_category

FAMILIES: dict[str, tuple[str, ...]] = {
    "belarusian": (
        "belarusian_lexicon",
        "belarusian_orthography",
        "belarusian_word_analogy_inflection",
        "belarusian_synonyms",
        "belarusian_antonyms",
    ),
    "colour codes": (
        "benjaminmoore_to_hex",
        "pantone_to_hex",
        "ral_to_hex",
        "convert-hex-hsl-lightness",
    ),
    "south-slavic exams": (
        "croatian-exams-qa",
        "serbian-exams-qa",
        "macedonian-exams-qa",
        "bulgarian-exams-qa",
    ),
    "ciphers": ("decrypt_caesar_cipher", "rot13", "vigenere", "base64_decode"),
    "card and board games": ("poker_analysis", "poker_hand_ranks", "connect4"),
    "health": ("heart-disease", "diabetes", "medmcqa"),
    "logic": ("formal_logic", "logic-statements", "logical_counting", "escher_sentences"),
    "japanese": (
        "japanese_city_name_pronunciation",
        "tokyo-station-number",
        "manga-translation",
        "islands",
    ),
    "arithmetic": (
        "positive-binary-operations",
        "bitwise",
        "recurrence-relation",
        "count_intersections_polynomial",
        "determinant",
    ),
    "chinese": ("split_chinese_characters", "convert-bwt-num-and-chinese-num", "chinese_zodiac"),
    "english text": ("sarcasm", "bias_detection", "syllables_long_words", "word_association"),
    "lexicons": ("french-lexicon", "spanish-lexicon", "irish-lexicon", "brazilian-lexicon"),
}
"""Near-neighbour families: same domain (language, notation, subject), different task."""

TargetKind = Literal["single", "mixed"]
_WORD = re.compile(r"[^\W\d_]{3,}")


@dataclass(frozen=True)
class Target:
    """One retrieval target: the categories whose pool samples count as relevant."""

    name: str
    kind: TargetKind
    categories: tuple[str, ...]


@dataclass(frozen=True)
class StudyPool:
    """Pool, target exemplars and held-out samples of a selection study."""

    pool: list[Sample]
    exemplars: list[Sample]
    """Target exemplars of every category used by a target (labelled by category)."""
    heldout: dict[str, list[Sample]]
    """Held-out samples per category (the downstream check scores on these)."""
    targets: list[Target]
    keywords: dict[str, list[str]]
    """Lexical-distractor keywords per single-category target."""

    def exemplar_rows(self, target: Target) -> list[int]:
        return [i for i, s in enumerate(self.exemplars) if s.category in target.categories]

    def target_heldout(self, target: Target) -> list[Sample]:
        return [s for c in target.categories for s in self.heldout[c]]


def specific_words(
    samples: Sequence[Sample], others: Sequence[Sample], n: int, min_share: float = 0.2
) -> list[str]:
    """At most `n` words (≥ 3 letters, case-folded) in ≥ `min_share` of `samples`, ranked by
    document frequency in `samples` minus that in `others` (ties alphabetical; only words with
    a positive difference). Categories of digits or one-off words have none."""

    def df(rows: Sequence[Sample]) -> Counter[str]:
        counts: Counter[str] = Counter()
        for s in rows:
            counts.update(set(_WORD.findall(f"{s.instruction} {s.response}".lower())))
        return counts

    inside, outside = df(samples), df(others)
    score = {w: c / len(samples) - outside[w] / max(len(others), 1) for w, c in inside.items()}
    kept = [w for w, v in score.items() if v > 0 and inside[w] >= min_share * len(samples)]
    return sorted(kept, key=lambda w: (-score[w], w))[:n]


def build_study_pool(
    by_cat: dict[str, list[Sample]],
    families: dict[str, tuple[str, ...]] = FAMILIES,
    per_category: int = 120,
    n_target: int = 5,
    n_heldout: int = 20,
    targets_per_family: int = 2,
    n_mixed: int = 6,
    distractors: int = 10,
    n_keywords: int = 3,
    min_pool: int = 40,
    seed: int = 0,
) -> StudyPool:
    """The study pool from `by_cat` (category → samples, e.g. `offline_categories`)."""
    need = n_target + n_heldout + min_pool
    missing = [c for cats in families.values() for c in cats if len(by_cat.get(c, [])) < need]
    if missing:
        raise SaekitError(
            f"Categories with fewer than {need} samples: {', '.join(missing)}; lower "
            "--n-heldout or --n-target."
        )
    splits = {c: split_category(by_cat[c], n_target, n_heldout, seed) for c in _all(families)}
    pool = [s for c in _all(families) for s in splits[c]["pool"][:per_category]]
    rest = {c: splits[c]["pool"][per_category:] for c in _all(families)}
    singles = [
        Target(c, "single", (c,)) for cats in families.values() for c in cats[:targets_per_family]
    ]
    rng = random.Random(f"{seed}:study")
    mixed = []
    for i in range(n_mixed):
        fams = rng.sample(sorted(families), 2 + i % 2)
        cats = tuple(sorted(rng.choice(families[f]) for f in fams))
        mixed.append(Target(" + ".join(cats), "mixed", cats))
    keywords: dict[str, list[str]] = {}
    family_of = {c: f for f, cats in families.items() for c in cats}
    base = list(pool)
    for t in singles:
        (c,) = t.categories
        own = [s for s in base if s.category == c]
        keywords[c] = specific_words(own, [s for s in base if s.category != c], n_keywords)
        if not keywords[c]:
            continue
        donors = [d for d in _all(families) if family_of[d] != family_of[c] and rest[d]]
        for d in rng.sample(donors, min(distractors, len(donors))):
            s = rest[d].pop()
            note = f"\n(Keywords: {', '.join(keywords[c])})"
            pool.append(replace(s, instruction=s.instruction + note))
    used = sorted({c for t in singles + mixed for c in t.categories})
    return StudyPool(
        pool=[replace(s, source_index=i) for i, s in enumerate(pool)],
        exemplars=[s for c in used for s in splits[c]["target"]],
        heldout={c: splits[c]["heldout"] for c in _all(families)},
        targets=singles + mixed,
        keywords=keywords,
    )


def labelled_study_pool(
    by_cat: dict[str, list[Sample]],
    n_categories: int,
    per_category: int,
    n_target: int,
    n_heldout: int,
    seed: int,
) -> StudyPool:
    """A study on a user's labelled pool: `n_categories` categories drawn with `seed`, each in
    turn the (single-category) target."""
    need = n_target + n_heldout + per_category
    eligible = sorted(c for c, s in by_cat.items() if len(s) >= need)
    if len(eligible) < n_categories:
        raise SaekitError(
            f"Only {len(eligible)} categories have ≥ {need} samples; lower --categories "
            f"(now {n_categories}) or --per-category (now {per_category})."
        )
    chosen = sorted(random.Random(seed).sample(eligible, n_categories))
    splits = {c: split_category(by_cat[c], n_target, n_heldout, seed) for c in chosen}
    pool = [s for c in chosen for s in splits[c]["pool"][:per_category]]
    return StudyPool(
        pool=[replace(s, source_index=i) for i, s in enumerate(pool)],
        exemplars=[s for c in chosen for s in splits[c]["target"]],
        heldout={c: splits[c]["heldout"] for c in chosen},
        targets=[Target(c, "single", (c,)) for c in chosen],
        keywords={},
    )


def _all(families: dict[str, tuple[str, ...]]) -> list[str]:
    return [c for cats in families.values() for c in cats]

"""Labelled text sets for difference-in-means (DiffMean) directions, offline.

Concept texts are the last chat message of rows of 32 categories of the `evals` wheel
(fetched by `saekit setup`); neutral texts are its OpenWebText passages. Rows are taken at an
even stride through each file so one concept is not 32 copies of its first template.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from saekit.errors import SaekitError

EVALS_CONCEPTS = {
    "medical": "diabetes/samples.jsonl",
    "headlines": "sarcasm/samples.jsonl",
    "poker": "poker_hand_ranks/full_samples.jsonl",
    "lyrics": "guess_the_singer/samples.jsonl",
    "chess": "chess/match.jsonl",
    "legal": "aba_mrpc_true_false/samples.jsonl",
    "abstracts": "abstract2title/samples.jsonl",
    "backgammon": "backgammon/backgammon-can-hit.jsonl",
    "security": "cissp-study-questions/samples.jsonl",
    "interest": "finance_calc/samples.jsonl",
    "nutrition": "nutrition/facts.jsonl",
    "math": "jee-math/samples.jsonl",
    "sql": "sql/spider_sql.jsonl",
    "fables": "parable-to-moral-match/parable-to-moral-match-en.jsonl",
    "whereabouts": "theory_of_mind/tomi/test.jsonl",
    "physics": "quartz/samples.jsonl",
    "cardiology": "heart-disease/samples.jsonl",
    "french": "french-exams-qa/samples.jsonl",
    "german": "german-exams-qa/samples.jsonl",
    "italian": "italian-exams-qa/samples.jsonl",
    "spanish": "spanish-exams-qa/samples.jsonl",
    "portuguese": "portuguese-exams-qa/samples.jsonl",
    "russian": "russian_sarcasm/samples.jsonl",
    "polish": "polish-exams-qa/samples.jsonl",
    "turkish": "turkish-exams-qa/samples.jsonl",
    "arabic": "arabic-exams-qa/samples.jsonl",
    "chinese": "parable-to-moral-match/parable-to-moral-match-zh.jsonl",
    "contracts": "ner_finance/samples.jsonl",
    "code": "infiniteloop-match/infiniteloop-match.jsonl",
    "coordinates": "lat_long_identify/samples.jsonl",
    "music": "music_theory_scale_modes/samples.jsonl",
    "cipher": "decrypt_caesar_cipher/samples.jsonl",
}
"""Concept name → file under evals/registry/data/ whose last chat message is the text: 32
topics, formats and languages, in a fixed order (the steering study takes the first N)."""
NEUTRAL_FILE = "schelling_point/owt_5.jsonl"


def _rows(wheel: Path, name: str) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        lines = zf.read(f"evals/registry/data/{name}").decode().splitlines()
    return [line for line in lines if line.strip()]


def _strided(items: list[str], n: int) -> list[str]:
    step = max(1, len(items) // n)
    return items[::step][:n]


def evals_concept_texts(
    names: tuple[str, ...] = tuple(EVALS_CONCEPTS)[:4], n: int = 32, max_chars: int = 400
) -> tuple[dict[str, list[str]], list[str]]:
    """({concept: texts}, neutral texts) from the offline `evals` wheel (default: 4 concepts)."""
    from saekit.assets import evals_wheel

    unknown = [c for c in names if c not in EVALS_CONCEPTS]
    if unknown:
        raise SaekitError(
            f"Unknown DiffMean concept(s) {unknown}; choose from {sorted(EVALS_CONCEPTS)}."
        )
    wheel = evals_wheel()
    concepts = {}
    for name in names:
        rows = _rows(wheel, EVALS_CONCEPTS[name])
        texts = [json.loads(r)["input"][-1]["content"][:max_chars] for r in rows]
        concepts[name] = _strided([t for t in texts if t.strip()], n)
    neutral = [json.loads(r)["0"][:max_chars] for r in _rows(wheel, NEUTRAL_FILE)]
    return concepts, _strided(neutral, n)

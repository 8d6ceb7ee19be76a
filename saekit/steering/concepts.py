"""Labelled text sets for difference-in-means (DiffMean) directions, offline.

Concept texts are the last chat message of rows of a few categories of the `evals` wheel
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
}
"""Concept name → file under evals/registry/data/ whose last chat message is the text."""
NEUTRAL_FILE = "schelling_point/owt_5.jsonl"


def _rows(wheel: Path, name: str) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        lines = zf.read(f"evals/registry/data/{name}").decode().splitlines()
    return [line for line in lines if line.strip()]


def _strided(items: list[str], n: int) -> list[str]:
    step = max(1, len(items) // n)
    return items[::step][:n]


def evals_concept_texts(
    names: tuple[str, ...] = tuple(EVALS_CONCEPTS), n: int = 32, max_chars: int = 400
) -> tuple[dict[str, list[str]], list[str]]:
    """({concept: texts}, neutral texts) from the offline `evals` wheel."""
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

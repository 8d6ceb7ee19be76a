"""Instruction samples for selection: local jsonl, HF datasets, or the offline instruction mix.

The offline mix is built from the eval categories inside the PyPI `evals` wheel that
`saekit setup` downloads (684 jsonl files, ~937k chat samples in 445 categories). Each
category's samples are shuffled with a fixed seed and split the same way every time: the first
`n_target` are target exemplars, the next `n_heldout` a held-out set for the downstream check,
the rest pool candidates, so `--pool offline --target offline:logiqa` never overlaps.
"""

from __future__ import annotations

import json
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from saekit.errors import SaekitError
from saekit.selection.config import DataFields

EVALS_DATA = "evals/registry/data/"
Split = Literal["pool", "target", "heldout"]


@dataclass(frozen=True)
class Sample:
    """One instruction → response pair."""

    instruction: str
    response: str
    category: str = ""
    """Label: the sub-task of a target exemplar or the category of a labelled pool sample."""
    source_index: int = -1
    """Row of the sample in its source (jsonl line / dataset row), for the ranked list."""

    def record(self) -> dict[str, Any]:
        return {
            "instruction": self.instruction,
            "response": self.response,
            "category": self.category,
        }


def _text(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        # Chat messages: user turns carry the task; a system-only sample keeps its system text.
        user = [str(m.get("content", "")) for m in value if m.get("role") != "system"]
        return "\n".join(user) if any(user) else "\n".join(str(m.get("content", "")) for m in value)
    if isinstance(value, list) and value:
        return _text(value[0], where)
    if isinstance(value, int | float):
        return str(value)
    raise SaekitError(f"{where}: expected a string or chat messages, got {type(value).__name__}.")


def samples_from_records(
    records: list[dict[str, Any]], fields: DataFields, where: str
) -> list[Sample]:
    """Samples from dict records; a missing instruction or response field is an error."""
    out = []
    for i, rec in enumerate(records):
        for name in (fields.instruction, fields.response):
            if name not in rec:
                raise SaekitError(
                    f"{where} row {i} has no field {name!r} (fields: {', '.join(sorted(rec))}); "
                    f"set --instruction-field / --response-field."
                )
        category = str(rec.get(fields.category, ""))
        out.append(
            Sample(
                _text(rec[fields.instruction], f"{where} row {i}"),
                _text(rec[fields.response], f"{where} row {i}"),
                category,
                i,
            )
        )
    return out


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SaekitError(f"{path} line {n} is not JSON ({exc.msg}); fix or drop it.") from None
        if not isinstance(rec, dict):
            raise SaekitError(f"{path} line {n} is not a JSON object.")
        records.append(rec)
    return records


def load_samples(
    spec: str, fields: DataFields | None = None, split: Split = "pool", **mix: Any
) -> list[Sample]:
    """Samples named by `spec`: "offline[:CAT,CAT]", a .jsonl file, or an HF dataset id."""
    fields = fields or DataFields()
    if spec == "offline" or spec.startswith("offline:"):
        cats = [c for c in spec.partition(":")[2].split(",") if c] or None
        samples = offline_mix(split, categories=cats, **mix)
    elif spec.endswith(".jsonl") or Path(spec).expanduser().is_file():
        path = Path(spec).expanduser()
        if not path.is_file():
            raise SaekitError(f"{spec} does not exist; give a .jsonl file, an HF id or 'offline'.")
        samples = samples_from_records(_read_jsonl(path), fields, str(path))
    else:
        samples = samples_from_records(_hf_records(spec, fields), fields, spec)
    if not samples:
        raise SaekitError(f"{spec!r} holds no samples; give a non-empty {split} set.")
    return samples


def _hf_records(spec: str, fields: DataFields) -> list[dict[str, Any]]:
    import datasets

    try:
        ds = datasets.load_dataset(spec, split=fields.hf_split)
    except Exception as exc:  # datasets raises many types for a missing/offline dataset
        raise SaekitError(
            f"Could not load HF dataset {spec!r} ({type(exc).__name__}). Without a hub, use a "
            "local .jsonl file or the offline instruction mix ('offline' / 'offline:CATEGORY')."
        ) from None
    return [dict(r) for r in ds]


# ---- the offline instruction mix ----------------------------------------------------------------
def _category_rows(zf: zipfile.ZipFile, max_chars: int) -> dict[str, list[Sample]]:
    by_cat: dict[str, list[Sample]] = {}
    for name in sorted(zf.namelist()):
        if not (name.startswith(EVALS_DATA) and name.endswith(".jsonl")):
            continue
        category = name[len(EVALS_DATA) :].split("/")[0]
        seen = {(s.instruction, s.response) for s in by_cat.get(category, [])}
        # 3,000 rows per file are plenty for a mix of ≤ a few hundred per category and cut the
        # parse of the largest files (formal_logic: 215k rows) by ~70x.
        for line in zf.read(name).decode("utf-8", errors="ignore").splitlines()[:3000]:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(rec, dict) or not isinstance(rec.get("input"), list):
                continue  # not a chat-format eval (e.g. ballots' proposal texts)
            try:
                sample = Sample(
                    _text(rec["input"], name), _text(rec.get("ideal", ""), name), category
                )
            except SaekitError:
                continue
            key = (sample.instruction, sample.response)
            if (
                sample.instruction.strip()
                and len(key[0]) + len(key[1]) <= max_chars
                and key not in seen
            ):
                seen.add(key)
                by_cat.setdefault(category, []).append(sample)
    return by_cat


def offline_categories(
    min_samples: int = 40, max_chars: int = 400, wheel: Path | None = None
) -> dict[str, list[Sample]]:
    """Every category of the evals wheel with ≥ `min_samples` distinct short samples."""
    if wheel is None:
        from saekit.assets import evals_wheel

        wheel = evals_wheel()
    with zipfile.ZipFile(wheel) as zf:
        rows = _category_rows(zf, max_chars)
    return {c: s for c, s in rows.items() if len(s) >= min_samples}


def split_category(
    samples: list[Sample], n_target: int, n_heldout: int, seed: int
) -> dict[str, list[Sample]]:
    """The fixed target / held-out / pool split of one category's samples."""
    order = list(samples)
    random.Random(f"{seed}:{samples[0].category}").shuffle(order)
    return {
        "target": order[:n_target],
        "heldout": order[n_target : n_target + n_heldout],
        "pool": order[n_target + n_heldout :],
    }


def offline_mix(
    split: Split = "pool",
    categories: list[str] | None = None,
    per_category: int = 40,
    n_target: int = 5,
    n_heldout: int = 20,
    max_chars: int = 400,
    seed: int = 0,
    wheel: Path | None = None,
) -> list[Sample]:
    """`split` samples of the offline mix: up to `per_category` pool samples per category."""
    cats = offline_categories(n_target + n_heldout + 1, max_chars, wheel)
    names = sorted(cats) if categories is None else categories
    unknown = [c for c in names if c not in cats]
    if unknown:
        raise SaekitError(
            f"Unknown or too small offline categories: {', '.join(unknown)}. Some valid ones: "
            f"{', '.join(sorted(cats)[:12])} ({len(cats)} in all)."
        )
    out: list[Sample] = []
    for c in names:
        part = split_category(cats[c], n_target, n_heldout, seed)[split]
        out += part[:per_category] if split == "pool" else part
    return [Sample(s.instruction, s.response, s.category, i) for i, s in enumerate(out)]

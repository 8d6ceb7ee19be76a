"""Binary classification tasks for sparse probing: texts with 0/1 labels, and their splits.

Sources (`load_tasks(spec)`):
    offline            the default set below, read from the sae-probes wheel (no hub)
    offline:all        every binary dataset of the wheel (113)
    offline:A,B        the wheel's datasets with these names (e.g. 92_glue_sst2)
    PATH               a .csv or .jsonl file (one task, named after the file) or a folder of them
    HF_ID              a Hugging Face dataset id (where a hub is reachable)

Labels are encoded as sae-probes does (scikit-learn's LabelEncoder): the two distinct values,
sorted, become 0 and 1 ("False" < "True", "bigram" < "not_bigram").
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from saekit.errors import SaekitError

WHEEL_DATA = "sae_probes/data/cleaned_data/"
WHEEL_INDEX = "sae_probes/data/probing_datasets_MASTER.csv.zst"

DEFAULT_TASKS: dict[str, str] = {
    "5_hist_fig_ismale": "people",
    "7_hist_fig_ispolitician": "people",
    "57_wikidatais_alive": "people",
    "124_world_country_United_States": "places",
    "121_us_timezone_New_York": "places",
    "114_nyc_borough_Manhattan": "places",
    "127_art_type_song": "entities",
    "155_athlete_sport_basketball": "entities",
    "21_headline_istrump": "news",
    "139_news_class_Politics": "news",
    "161_agnews_0": "news",
    "92_glue_sst2": "sentiment",
    "149_twt_emotion_happiness": "sentiment",
    "87_glue_cola": "grammar",
    "66_living-room": "grammar",
    "52_virtue_is": "ethics",
    "36_sciq_tf": "reasoning",
    "42_temp_sense": "reasoning",
    "106_hate_hate": "toxicity",
    "96_spam_is": "toxicity",
    "110_aimade_humangpt3": "ai_text",
    "159_code_Python": "code",
    "146_disease_class_cardiovascular diseases": "medical",
    "152_it_tick_Hardware": "support",
}
"""The offline default: 24 of the wheel's 113 binary datasets, 1-3 from each of 13 kinds
of task, so no single kind (the wheel has 21 bigram and 9 wikidata tasks) dominates the mean."""


@dataclass(frozen=True)
class ProbingTask:
    """One binary classification task."""

    name: str
    """Dataset name (the wheel's file stem, a local file stem, or the HF id)."""
    category: str
    """Kind of task (the default set's grouping; "local" or "hf" otherwise)."""
    texts: tuple[str, ...]
    """The texts to classify."""
    labels: np.ndarray
    """0/1 label of each text (int64)."""


def _encode(name: str, texts: list[str], raw: list[Any], category: str) -> ProbingTask:
    keep = [i for i, t in enumerate(texts) if t and t.strip()]
    values = sorted({str(raw[i]) for i in keep})
    if len(values) != 2:
        raise SaekitError(
            f"Probing task {name!r} has {len(values)} label values ({values[:5]}); sparse "
            "probing needs exactly two: give a binary label column (--probing.label_field)."
        )
    labels = np.array([values.index(str(raw[i])) for i in keep], dtype=np.int64)
    return ProbingTask(name, category, tuple(texts[i] for i in keep), labels)


def _read_zst_csv(zf: zipfile.ZipFile, member: str) -> list[dict[str, str]]:
    import zstandard

    with zf.open(member) as fh:
        text = zstandard.ZstdDecompressor().stream_reader(fh).read().decode()
    return list(csv.DictReader(io.StringIO(text)))


def wheel_task_names(zf: zipfile.ZipFile) -> list[str]:
    """The wheel's binary datasets, as its index lists them (113 in sae-probes 0.4.2)."""
    index = _read_zst_csv(zf, WHEEL_INDEX)
    return [
        row["Dataset save name"].split("/")[-1].removesuffix(".csv")
        for row in index
        if row["Data type"] == "Binary Classification"
    ]


def _offline(spec: str) -> list[ProbingTask]:
    from saekit.assets import sae_probes_wheel

    with zipfile.ZipFile(sae_probes_wheel()) as zf:
        available = wheel_task_names(zf)
        chosen = spec.partition(":")[2]
        names = (
            list(DEFAULT_TASKS)
            if not chosen
            else available
            if chosen == "all"
            else [n.strip() for n in chosen.split(",")]
        )
        unknown = [n for n in names if n not in available]
        if unknown:
            raise SaekitError(
                f"No binary probing dataset {unknown[0]!r} in sae-probes; names look like "
                f"{', '.join(available[:3])} (offline:all runs every one)."
            )
        tasks = []
        for n in names:
            rows = _read_zst_csv(zf, f"{WHEEL_DATA}{n}.csv.zst")
            texts, raw = [r["prompt"] for r in rows], [r["target"] for r in rows]
            tasks.append(_encode(n, texts, raw, DEFAULT_TASKS.get(n, "sae-probes")))
        return tasks


def _local_file(path: Path, text_field: str, label_field: str) -> ProbingTask:
    if path.suffix == ".csv":
        rows = list(csv.DictReader(path.open(newline="")))
    elif path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.open() if line.strip()]
    else:
        raise SaekitError(f"Probing task file {str(path)!r}: use a .csv or .jsonl file.")
    missing = [f for f in (text_field, label_field) if rows and f not in rows[0]]
    if not rows or missing:
        raise SaekitError(
            f"{path} has no {'rows' if not rows else repr(missing[0])} (columns: "
            f"{sorted(rows[0]) if rows else []}); set --probing.text_field/--probing.label_field."
        )
    texts = [str(r[text_field]) for r in rows]
    return _encode(path.stem, texts, [r[label_field] for r in rows], "local")


def _hf(spec: str, text_field: str, label_field: str, split: str) -> ProbingTask:
    import datasets

    try:
        ds = datasets.load_dataset(spec, split=split)
    except Exception as exc:  # noqa: BLE001 - any hub failure becomes one clear message
        raise SaekitError(
            f"Could not open HF dataset {spec!r} ({type(exc).__name__}: {str(exc)[:160]}). "
            "Without a hub, use --probing.tasks offline or a local .csv/.jsonl file."
        ) from None
    if text_field not in ds.column_names or label_field not in ds.column_names:
        raise SaekitError(
            f"HF dataset {spec!r} has columns {ds.column_names}; set "
            "--probing.text_field and --probing.label_field."
        )
    return _encode(spec, [str(t) for t in ds[text_field]], list(ds[label_field]), "hf")


def load_tasks(
    spec: str, text_field: str = "text", label_field: str = "label", hf_split: str = "train"
) -> list[ProbingTask]:
    """The tasks named by `spec` (see the module docstring)."""
    if spec == "offline" or spec.startswith("offline:"):
        return _offline(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".csv", ".jsonl"))
        if not files:
            raise SaekitError(f"Folder {spec!r} holds no .csv or .jsonl probing tasks.")
        return [_local_file(f, text_field, label_field) for f in files]
    if path.exists():
        return [_local_file(path, text_field, label_field)]
    if spec.endswith((".csv", ".jsonl")) or spec.startswith(("/", ".")):
        raise SaekitError(
            f"Probing task file {spec!r} does not exist: give an existing .csv/.jsonl file or "
            "folder, or --probing.tasks offline (the sae-probes tasks)."
        )
    return [_hf(spec, text_field, label_field, hf_split)]


def balanced_split(
    labels: np.ndarray, n_train: int, n_test: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint train/test indices, half of each with label 1, drawn with `seed`.

    The sae-probes "normal" setting: ⌈n/2⌉ positives and ⌊n/2⌋ negatives per split. A task with
    too few examples of a class gets smaller splits in the same 1:1 and train:test proportions.
    """
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    per_class = min(len(pos), len(neg))
    scale = min(1.0, per_class / ((n_train + n_test + 1) // 2 + 1))
    n_train, n_test = max(2, int(n_train * scale)), max(2, int(n_test * scale))
    pos, neg = rng.permutation(pos), rng.permutation(neg)
    tr_pos, te_pos = (n_train + 1) // 2, (n_test + 1) // 2
    tr_neg, te_neg = n_train - tr_pos, n_test - te_pos
    train = np.concatenate([pos[:tr_pos], neg[:tr_neg]])
    test = np.concatenate([pos[tr_pos : tr_pos + te_pos], neg[tr_neg : tr_neg + te_neg]])
    return rng.permutation(train), rng.permutation(test)


def tokenize_texts(tokenizer: Any, texts: list[str], context_size: int) -> list[list[int]]:
    """Token ids of each text: BOS (as saekit's training windows start) and at most
    context_size − 1 text tokens (SAEBench truncates at 128 as well)."""
    from saekit.data.text import _bos_id

    bos = _bos_id(tokenizer)
    encoded = tokenizer(
        texts, add_special_tokens=False, truncation=True, max_length=context_size - 1
    )["input_ids"]
    return [[bos, *ids] for ids in encoded]

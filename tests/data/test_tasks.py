"""Probing tasks: the sae-probes wheel's datasets, local files, label encoding and splits.

References: pandas' own zstd CSV reader and scikit-learn's LabelEncoder (what sae-probes'
`get_yvals` uses) for the wheel's labels.
"""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from saekit.data.tasks import (
    DEFAULT_TASKS,
    WHEEL_DATA,
    balanced_split,
    load_tasks,
    tokenize_texts,
)
from saekit.errors import SaekitError


def test_split_is_balanced_disjoint_and_seeded():
    labels = np.array([1] * 300 + [0] * 500)
    train, test = balanced_split(labels, 100, 41, seed=3)
    assert len(train) == 100 and len(test) == 41
    assert labels[train].sum() == 50 and labels[test].sum() == 21  # ⌈n/2⌉ positives
    assert not set(train) & set(test)
    again = balanced_split(labels, 100, 41, seed=3)
    assert (again[0] == train).all() and (again[1] == test).all()
    assert not (balanced_split(labels, 100, 41, seed=4)[0] == train).all()


def test_split_shrinks_to_the_rarer_class():
    labels = np.array([1] * 30 + [0] * 500)
    train, test = balanced_split(labels, 100, 50, seed=0)
    assert labels[train].sum() <= 30 and labels[test].sum() + labels[train].sum() <= 30
    assert len(train) + len(test) <= 60 and len(train) > 2 * len(test) - 4
    assert abs(2 * labels[train].sum() - len(train)) <= 1


def test_local_csv_jsonl_and_folder(tmp_path):
    from sklearn.preprocessing import LabelEncoder

    raw = ["yes", "no", "no", "yes", "yes"]
    texts = ["a cat", "a dog", "", "the cat", "cats"]  # the empty text is dropped
    (tmp_path / "t.jsonl").write_text(
        "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(texts, raw))
    )
    (tmp_path / "csvs").mkdir()
    for name in ("u", "v"):
        rows = "".join(f"{t},{y}\n" for t, y in zip(texts, raw))
        (tmp_path / "csvs" / f"{name}.csv").write_text("sentence,y\n" + rows)
    (task,) = load_tasks(str(tmp_path / "t.jsonl"))
    expected = LabelEncoder().fit_transform([y for t, y in zip(texts, raw) if t])
    assert task.name == "t" and list(task.labels) == list(expected)
    assert task.texts == ("a cat", "a dog", "the cat", "cats")
    tasks = load_tasks(str(tmp_path / "csvs"), text_field="sentence", label_field="y")
    assert [t.name for t in tasks] == ["u", "v"] and tasks[1].texts == task.texts


def test_bad_task_files_are_one_line_errors(tmp_path):
    path = tmp_path / "three.csv"
    path.write_text("text,label\na,x\nb,y\nc,z\n")
    with pytest.raises(SaekitError, match="exactly two.*--probing.label_field"):
        load_tasks(str(path))
    with pytest.raises(SaekitError, match="'words'.*--probing.text_field"):
        load_tasks(str(path), text_field="words")
    with pytest.raises(SaekitError, match="does not exist"):
        load_tasks(str(tmp_path / "missing.csv"))
    with pytest.raises(SaekitError, match="No binary probing dataset 'nope'"):
        load_tasks("offline:nope")


def test_offline_default_matches_the_wheel_read_by_pandas():
    import pandas as pd
    from sklearn.preprocessing import LabelEncoder

    from saekit.assets import sae_probes_wheel

    tasks = load_tasks("offline")
    assert [t.name for t in tasks] == list(DEFAULT_TASKS)
    assert len(tasks) >= 16 and len({t.category for t in tasks}) >= 12
    with zipfile.ZipFile(sae_probes_wheel()) as zf:
        for task in (tasks[0], tasks[14]):  # 0/1 targets, and "bigram"/"not_bigram"
            data = zf.read(f"{WHEEL_DATA}{task.name}.csv.zst")
            df = pd.read_csv(io.BytesIO(data), compression="zstd")
            assert task.texts == tuple(df["prompt"])
            assert list(task.labels) == list(LabelEncoder().fit_transform(df["target"]))


def test_tokenize_prepends_bos_and_truncates(tokenizer):
    (ids,) = tokenize_texts(tokenizer, ["abcdefghij"], context_size=6)
    assert ids[0] == tokenizer.bos_token_id and len(ids) == 6
    assert tokenizer.decode(ids[1:]).replace(" ", "") == "abcde"

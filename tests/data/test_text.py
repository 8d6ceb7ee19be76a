"""Text sources → documents → token windows: layout, held-out split, on-disk cache, errors."""

from __future__ import annotations

import json
import string

import numpy as np
import pytest
import torch

from saekit.data.text import DataConfig, TokenWindows, build_windows, iter_documents
from saekit.errors import SaekitError

BOS = 1  # conftest tokenizer: <unk>=0, <bos>=1, <eos>=2, <pad>=3


def expected_stream(cfg: DataConfig, tokenizer, split: str) -> list[int]:
    """The split's documents tokenized and joined, each followed by BOS as separator."""
    from saekit.data.text import _is_eval

    out: list[int] = []
    for doc in iter_documents(cfg):
        if _is_eval(doc, cfg.eval_fraction) == (split == "eval"):
            out += tokenizer(doc, add_special_tokens=False)["input_ids"] + [BOS]
    return out


# ---- documents -------------------------------------------------------------------------------
def test_jsonl_documents_in_a_seeded_order(corpus_jsonl):
    lines = [json.loads(line)["text"] for line in corpus_jsonl.read_text().splitlines()]
    docs = list(iter_documents(DataConfig(source=str(corpus_jsonl))))
    assert sorted(docs) == sorted(lines) and docs != lines
    assert docs == list(iter_documents(DataConfig(source=str(corpus_jsonl))))
    other = list(iter_documents(DataConfig(source=str(corpus_jsonl), shuffle_seed=1)))
    assert sorted(other) == sorted(docs) and other != docs
    first = list(iter_documents(DataConfig(source=str(corpus_jsonl), max_documents=7)))
    assert first == docs[:7]


def test_txt_documents_are_blank_line_paragraphs(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("first para\nstill first\n\n\n  second  \n\nthird\n")
    docs = sorted(iter_documents(DataConfig(source=str(path))))
    assert docs == ["first para\nstill first", "second", "third"]


def test_folder_source_reads_every_text_file(tmp_path, corpus_jsonl, corpus_txt):
    (tmp_path / "ignored.csv").write_text("x\n")
    folder_docs = list(iter_documents(DataConfig(source=str(tmp_path))))
    single = [
        *iter_documents(DataConfig(source=str(corpus_jsonl))),
        *iter_documents(DataConfig(source=str(corpus_txt))),
    ]
    assert sorted(folder_docs) == sorted(single)


def test_jsonl_errors_name_the_line_and_the_fix(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(SaekitError, match=r"bad.jsonl:2 has no field 'text'.*data.text_field"):
        list(iter_documents(DataConfig(source=str(path))))
    path.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(SaekitError, match=r"bad.jsonl:2 is not valid JSON"):
        list(iter_documents(DataConfig(source=str(path))))


def test_missing_local_source_is_an_error(tmp_path):
    with pytest.raises(SaekitError, match="does not exist"):
        list(iter_documents(DataConfig(source=str(tmp_path / "missing.jsonl"))))


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(SaekitError, match=r"no \.txt, \.jsonl or \.parquet"):
        list(iter_documents(DataConfig(source=str(tmp_path))))


def test_config_validation():
    with pytest.raises(SaekitError, match="context_size"):
        DataConfig(context_size=1)
    with pytest.raises(SaekitError, match="eval_fraction"):
        DataConfig(eval_fraction=1.0)


# ---- windows ---------------------------------------------------------------------------------
def test_windows_are_bos_then_the_concatenated_documents(saekit_home, corpus_jsonl, tokenizer):
    cfg = DataConfig(source=str(corpus_jsonl), context_size=16)
    w = build_windows(cfg, tokenizer, "train")
    stream = expected_stream(cfg, tokenizer, "train")
    n = len(stream) // 15
    assert w.windows_NT.shape == (n, 16) and w.windows_NT.dtype == torch.int32
    assert (w.windows_NT[:, 0] == BOS).all()
    assert w.windows_NT[:, 1:].reshape(-1).tolist() == stream[: n * 15]


def test_windows_without_bos(saekit_home, corpus_jsonl, tokenizer):
    cfg = DataConfig(source=str(corpus_jsonl), context_size=16, prepend_bos=False)
    w = build_windows(cfg, tokenizer, "train")
    stream = expected_stream(cfg, tokenizer, "train")
    assert w.windows_NT.reshape(-1).tolist() == stream[: len(w) * 16]


def test_max_tokens_caps_the_window_count(saekit_home, corpus_jsonl, tokenizer):
    cfg = DataConfig(source=str(corpus_jsonl), context_size=16)
    w = build_windows(cfg, tokenizer, "train", max_tokens=150)
    assert len(w) == 150 // 15 + 1
    full = build_windows(cfg, tokenizer, "train")
    assert torch.equal(w.windows_NT, full.windows_NT[: len(w)])


def test_held_out_split_is_disjoint_by_document(saekit_home, tmp_path, tokenizer):
    # Document i repeats one letter, so every token tells which document it came from.
    letters = string.ascii_lowercase
    path = tmp_path / "letters.jsonl"
    path.write_text("".join(json.dumps({"text": c * 40}) + "\n" for c in letters))
    cfg = DataConfig(source=str(path), context_size=8, eval_fraction=0.3)
    train = build_windows(cfg, tokenizer, "train").windows_NT
    held = build_windows(cfg, tokenizer, "eval").windows_NT
    vocab = tokenizer.get_vocab()
    train_letters = {c for c in letters if (train == vocab[c]).any()}
    eval_letters = {c for c in letters if (held == vocab[c]).any()}
    assert train_letters and eval_letters
    assert not train_letters & eval_letters
    # The split depends on the text only: another document order gives the same split.
    reordered = DataConfig(source=str(path), context_size=8, eval_fraction=0.3, shuffle_seed=5)
    again = build_windows(reordered, tokenizer, "eval").windows_NT
    assert {c for c in letters if (again == vocab[c]).any()} == eval_letters


def test_windows_are_cached_on_disk(saekit_home, corpus_jsonl, tokenizer):
    cfg = DataConfig(source=str(corpus_jsonl), context_size=16)
    first = build_windows(cfg, tokenizer, "train")
    (cached,) = (saekit_home / "tokens").glob("*.npy")
    # Poison the cached array: a second build must read it instead of re-tokenizing.
    poisoned = np.load(cached)
    poisoned[0, 1] = 7
    np.save(cached, poisoned)
    second = build_windows(cfg, tokenizer, "train")
    assert second.windows_NT[0, 1] == 7
    assert torch.equal(second.windows_NT[1:], first.windows_NT[1:])
    # Editing the source changes the key: the stale array is not reused.
    with corpus_jsonl.open("a") as fh:
        fh.write(json.dumps({"text": "one more document."}) + "\n")
    third = build_windows(cfg, tokenizer, "train")
    assert third.windows_NT[0, 1] != 7
    assert len(list((saekit_home / "tokens").glob("*.npy"))) == 2


def test_empty_dataset_is_a_clear_error(saekit_home, tmp_path, tokenizer):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(SaekitError, match="no full 16-token window.*empty or too small"):
        build_windows(DataConfig(source=str(path), context_size=16), tokenizer, "train")


def test_eval_split_with_zero_fraction_is_a_clear_error(saekit_home, corpus_jsonl, tokenizer):
    cfg = DataConfig(source=str(corpus_jsonl), context_size=16, eval_fraction=0.0)
    with pytest.raises(SaekitError, match="eval_fraction is 0"):
        build_windows(cfg, tokenizer, "eval")


def test_get_wraps_around_and_mask_drops_special_tokens():
    windows = TokenWindows(torch.arange(12, dtype=torch.int32).reshape(4, 3), special_ids=[0, 4])
    got = windows.get(3, 3)
    assert got.dtype == torch.long
    assert got.tolist() == [[9, 10, 11], [0, 1, 2], [3, 4, 5]]
    assert windows.token_mask(got).tolist() == [[1, 1, 1], [0, 1, 1], [1, 0, 1]]

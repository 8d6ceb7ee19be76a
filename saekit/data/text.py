"""Text sources → tokenized fixed-length context windows, with a held-out split.

Sources: `offline` (the default corpus built by `saekit setup`), a local .txt / .jsonl / .parquet
file or a directory of them, or an HF dataset id (streamed). Documents are concatenated with a
separator token and cut into windows of `context_size` tokens; with `prepend_bos` each window
starts with BOS (the model's usual position-0 token, so position 0 is never a mid-document
token acting as an attention sink). A document goes to the held-out split when a stable hash of
its text falls under `eval_fraction`, so the split never depends on order or sharding.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from saekit.errors import SaekitError

Split = Literal["train", "eval"]


@dataclass(frozen=True)
class DataConfig:
    """Where text comes from and how it is cut into context windows."""

    source: str = "offline"
    """'offline' (default corpus), a local .txt/.jsonl/.parquet file or folder, or an HF
    dataset id."""
    text_field: str = "text"
    """Field holding the text in jsonl/parquet/HF records."""
    hf_split: str = "train"
    """Split of an HF dataset to stream."""
    context_size: int = 128
    """Tokens per context window (including BOS)."""
    prepend_bos: bool = True
    """Start every window with the tokenizer's BOS token."""
    eval_fraction: float = 0.02
    """Fraction of documents held out for evaluation (stable hash of the text)."""
    max_documents: int | None = None
    """Read at most this many documents (None: all)."""
    shuffle_seed: int = 0
    """Seed of the document order shuffle for local sources (streamed HF data keeps its order)."""

    def __post_init__(self) -> None:
        if self.context_size < 2:
            raise SaekitError(f"data.context_size must be ≥ 2, got {self.context_size}.")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise SaekitError(f"data.eval_fraction must be in [0, 1), got {self.eval_fraction}.")


def _is_eval(text: str, fraction: float) -> bool:
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64 < fraction


def _local_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl", ".parquet"))
        if not files:
            raise SaekitError(f"Folder {str(path)!r} holds no .txt, .jsonl or .parquet files.")
        return files
    return [path]


def _read_local(path: Path, text_field: str) -> Iterator[str]:
    if path.suffix == ".txt":
        # Blank-line separated paragraphs are the documents of a plain text file.
        for para in path.read_text(errors="ignore").split("\n\n"):
            if para.strip():
                yield para.strip()
    elif path.suffix == ".jsonl":
        with path.open() as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    raise SaekitError(f"{path}:{n} is not valid JSON.") from None
                if text_field not in record:
                    raise SaekitError(
                        f"{path}:{n} has no field {text_field!r} (keys: "
                        f"{sorted(record)}); set data.text_field."
                    )
                yield str(record[text_field])
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if text_field not in table.column_names:
            raise SaekitError(
                f"{path} has no column {text_field!r} (columns: "
                f"{table.column_names}); set data.text_field."
            )
        yield from (str(t) for t in table.column(text_field).to_pylist())
    else:
        raise SaekitError(f"Unsupported text file {str(path)!r}: use .txt, .jsonl or .parquet.")


def iter_documents(cfg: DataConfig) -> Iterator[str]:
    """Every document of the source, in a deterministic order."""
    if cfg.source == "offline":
        from saekit.assets import offline_corpus

        files = [offline_corpus()]
    elif Path(cfg.source).expanduser().exists():
        files = _local_files(Path(cfg.source).expanduser())
    elif cfg.source.endswith((".txt", ".jsonl", ".parquet")) or cfg.source.startswith(("/", ".")):
        raise SaekitError(f"Text source {cfg.source!r} does not exist.")
    else:
        yield from _iter_hf(cfg)
        return
    docs = [d for f in files for d in _read_local(f, cfg.text_field)]
    order = np.random.default_rng(cfg.shuffle_seed).permutation(len(docs))
    for i in order[: cfg.max_documents]:
        yield docs[i]


def _iter_hf(cfg: DataConfig) -> Iterator[str]:
    import datasets

    try:
        ds = datasets.load_dataset(cfg.source, split=cfg.hf_split, streaming=True)
    except Exception as exc:  # noqa: BLE001 - any hub failure becomes one clear message
        raise SaekitError(
            f"Could not open HF dataset {cfg.source!r} ({type(exc).__name__}: {str(exc)[:200]}). "
            "With no hub access, use data.source=offline or a local .txt/.jsonl/.parquet file."
        ) from None
    for n, record in enumerate(ds):
        if cfg.max_documents is not None and n >= cfg.max_documents:
            break
        if cfg.text_field not in record:
            raise SaekitError(
                f"HF dataset records have no field {cfg.text_field!r}: "
                f"{sorted(record)}; set data.text_field."
            )
        yield str(record[cfg.text_field])


class TokenWindows:
    """All context windows of one split, tokenized once and kept as an int32 array.

    The 5.6M tokens of the offline corpus take 22 MB; the array is cached on disk keyed by the
    source, the data config and the tokenizer, so only the first run pays for tokenizing.
    """

    def __init__(self, windows_NT: Tensor, special_ids: list[int]) -> None:
        self.windows_NT = windows_NT
        self.special_ids = special_ids

    def __len__(self) -> int:
        return int(self.windows_NT.shape[0])

    def get(self, start: int, count: int) -> Tensor:
        """Windows [start, start+count) (wrapping around: the stream is an endless epoch loop)."""
        n = len(self)
        idx = torch.arange(start, start + count) % n
        return self.windows_NT[idx].long()

    def token_mask(self, tokens_BT: Tensor) -> Tensor:
        """True where a token is an ordinary token (not BOS/EOS/pad/other special)."""
        mask = torch.ones_like(tokens_BT, dtype=torch.bool)
        for tid in self.special_ids:
            mask &= tokens_BT != tid
        return mask


def special_ids(tokenizer: Any) -> list[int]:
    """Ids of every special token (BOS, EOS, pad, ...): positions never trained on."""
    return sorted({int(i) for i in getattr(tokenizer, "all_special_ids", []) if i is not None})


def _bos_id(tokenizer: Any) -> int:
    for attr in ("bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    raise SaekitError(
        "The tokenizer has neither a BOS nor an EOS token; set data.prepend_bos=false."
    )


def _cache_key(cfg: DataConfig, tokenizer: Any, split: Split, max_tokens: int | None) -> str | None:
    """A key for the tokenized-window cache, or None for streamed (HF) sources."""
    if cfg.source == "offline":
        from saekit.assets import CORPUS_VERSION

        stamp = CORPUS_VERSION
    elif Path(cfg.source).expanduser().exists():
        files = _local_files(Path(cfg.source).expanduser())
        stamp = str([(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files])
    else:
        return None
    parts = [
        stamp,
        repr(cfg),
        split,
        str(max_tokens),
        str(getattr(tokenizer, "name_or_path", "")),
        str(len(tokenizer)),
    ]
    return hashlib.blake2b("|".join(parts).encode(), digest_size=12).hexdigest()


def build_windows(
    cfg: DataConfig, tokenizer: Any, split: Split, max_tokens: int | None = None
) -> TokenWindows:
    """Tokenize the split's documents into [n_windows, context_size] windows (cached on disk)."""
    from saekit.assets import cache_home

    key = _cache_key(cfg, tokenizer, split, max_tokens)
    path = cache_home() / "tokens" / f"{key}.npy" if key else None
    if path is not None and path.is_file():
        array = np.load(path)
    else:
        array = _tokenize(cfg, tokenizer, split, max_tokens)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".partial.npy")
            np.save(partial, array)
            partial.replace(path)
    return TokenWindows(torch.from_numpy(array), special_ids(tokenizer))


def _tokenize(cfg: DataConfig, tokenizer: Any, split: Split, max_tokens: int | None) -> np.ndarray:
    bos = _bos_id(tokenizer)
    body = cfg.context_size - 1 if cfg.prepend_bos else cfg.context_size
    budget = None if max_tokens is None else max_tokens // body + 1
    stream: list[int] = []
    batch: list[str] = []

    def flush() -> None:
        # Batched calls to the fast tokenizer are ~10x quicker than one call per document.
        if not batch:
            return
        for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            stream.extend(ids)
            stream.append(bos)
        batch.clear()

    for doc in iter_documents(cfg):
        if _is_eval(doc, cfg.eval_fraction) != (split == "eval"):
            continue
        batch.append(doc)
        if len(batch) == 256:
            flush()
            if budget is not None and len(stream) >= budget * body:
                break
    flush()
    n = len(stream) // body
    if budget is not None:
        n = min(n, budget)
    if n == 0:
        raise SaekitError(
            f"The {split} split of data source {cfg.source!r} yields no full {cfg.context_size}-"
            "token window: the dataset is empty or too small (or eval_fraction is 0 for eval)."
        )
    body_NT = np.asarray(stream[: n * body], dtype=np.int32).reshape(n, body)
    if not cfg.prepend_bos:
        return body_NT
    return np.concatenate([np.full((n, 1), bos, dtype=np.int32), body_NT], axis=1)

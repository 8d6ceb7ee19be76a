"""Settings of `saekit attribute` (one prompt) and `saekit attribute validate` (ablations over
held-out prompts). Each field is also a flag: `--layer-set`, `--n-prompts`, ..."""

from __future__ import annotations

from dataclasses import dataclass

from saekit.errors import SaekitError


@dataclass(frozen=True)
class AttributeConfig:
    """Which output to explain, through which dictionaries, and how exactly."""

    prompt: str = ""
    """Text whose next-token prediction is explained (the target is read at its last token)."""
    target: str = ""
    """Token whose logit is explained, exactly one token of the model's vocabulary (mind the
    leading space: ' Paris'); empty = the model's own top prediction."""
    contrast: str = ""
    """Explain the logit difference target − contrast instead (one token); empty = none."""
    layer_set: tuple[str, ...] = ()
    """Dictionaries to attribute through, each by name or hook (comma-separated); empty = every
    dictionary of the run. Each is spliced in alone."""
    steps: int = 8
    """Gauss-Legendre points of the path integral of the gradient (1 = its midpoint only)."""
    tolerance: float = 0.01
    """Largest accepted |Δ − Σ attributions| / |Δ|: the points double (up to max_steps) until
    the quadrature meets it; a miss is reported, never hidden."""
    max_steps: int = 64
    """Most Gauss-Legendre points tried."""
    batch_size: int = 16
    """Path points run through the model per forward and backward."""
    top: int = 20
    """Features per dictionary in the printed summary and in the HTML view."""

    def __post_init__(self) -> None:
        if not 1 <= self.steps <= self.max_steps:
            raise SaekitError(
                f"steps must be in [1, max_steps={self.max_steps}], got {self.steps}; "
                "e.g. --steps 8."
            )
        if not self.tolerance > 0:
            raise SaekitError(f"tolerance must be > 0, got {self.tolerance}; e.g. 0.01.")
        for name in ("batch_size", "top"):
            if getattr(self, name) < 1:
                raise SaekitError(f"{name} must be >= 1, got {getattr(self, name)}.")


@dataclass(frozen=True)
class ValidateConfig:
    """Ablate the top-attributed features, then as many random active ones, on held-out text."""

    n_prompts: int = 32
    """Held-out prompts (each a window of the run's eval split cut to prompt_tokens); the
    target is the logit difference of the model's top two next-token predictions."""
    prompt_tokens: int = 24
    """Tokens per prompt (the BOS included)."""
    n_ablate: int = 10
    """Feature activations (feature, position) ablated together: the n with the largest
    attribution, or n drawn uniformly from every active one."""
    random_draws: int = 8
    """Random sets ablated per prompt; their mean effect is the prompt's random effect."""
    confidence: float = 0.95
    """Level of the bootstrap interval over prompts of the mean paired difference."""
    bootstrap: int = 10_000
    """Bootstrap resamples of the prompts."""
    seed: int = 0
    """Seed of the prompt cuts, the random sets and the bootstrap."""

    def __post_init__(self) -> None:
        for name in ("n_ablate", "random_draws", "bootstrap"):
            if getattr(self, name) < 1:
                raise SaekitError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.n_prompts < 2:
            raise SaekitError("n_prompts must be >= 2 for an interval over prompts.")
        if self.prompt_tokens < 3:
            raise SaekitError(f"prompt_tokens must be >= 3, got {self.prompt_tokens}.")
        if not 0 < self.confidence < 1:
            raise SaekitError(f"confidence must be in (0, 1), got {self.confidence}; e.g. 0.95.")

"""TrainConfig: the `train:` section of a recipe (optimization, schedules, logs, checkpoints)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from saekit.errors import SaekitError


@dataclass(frozen=True)
class TrainConfig:
    """Optimization, schedules, logging and checkpoints."""

    total_tokens: int = 2_000_000
    """Training tokens per dictionary."""
    lr: float | None = None
    """Adam learning rate; None = per dictionary, 2e-4/√(d_sae/2^14) times its method's scale
    (topk: 4, the others: 1)."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """Adam (β1, β2)."""
    lr_warmup_steps: int | None = None
    """Linear LR warmup steps; None = the method's default (topk: 10, the others: 50)."""
    lr_decay_fraction: float | None = None
    """Fraction of the run (at the end) over which the LR decays linearly to 0; None = the
    method's default (topk: 0.5, the others: 0.2)."""
    ema_decay: float | None = None
    """β of the moving average of the dictionary's weights that is exported, checkpointed and
    probed instead of Adam's last iterate, its window shrinking with the lr (train/averaging.py;
    0: the last iterate); None = the method's default (topk: 0.98, the others: 0)."""
    sparsity_warmup_steps: int = 100
    """Steps over which the L1/L0 penalty ramps from 0 to its full weight."""
    grad_clip_norm: float | None = None
    """Clip the gradient norm of each dictionary to this (0 disables); None = the method's
    default (topk: no clip, the others: 1)."""
    dead_window_tokens: int = 10_000_000
    """A latent is dead when it has not fired for this many tokens (drives AuxK)."""
    b_dec_init_samples: int = 8192
    """Rows of the first batch whose geometric median initializes b_dec (0: zeros)."""
    log_every: int = 10
    """Steps between log lines (history.jsonl, wandb, progress bar)."""
    checkpoint_every: int = 0
    """Steps between checkpoints (0: only at the end)."""
    output_dir: str = "runs/quickstart"
    """Run directory: recipe, checkpoints, trained dictionaries, reports."""
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    """wandb logging mode; offline runs land in OUTPUT_DIR/wandb."""
    wandb_project: str = "saekit"
    """wandb project name."""
    device: str = "cpu"
    """Device of the dictionaries (under torchrun, cuda means cuda:LOCAL_RANK)."""
    seed: int = 0
    """Seed of torch and Python RNGs during training."""
    parallel: Literal["data", "hooks"] = "data"
    """Under torchrun (WORLD_SIZE > 1): data = every process trains every dictionary on its
    1/N of each global batch of stream.batch_size tokens, gradients all-reduced; hooks =
    dictionary i trains on process i mod N, on all tokens. Ignored in a single process."""

    def __post_init__(self) -> None:
        if self.lr is not None and not self.lr > 0:
            raise SaekitError(f"train.lr must be > 0, got {self.lr}.")
        for name, low in _AT_LEAST.items():
            if (value := getattr(self, name)) is not None and value < low:
                raise SaekitError(f"train.{name} must be ≥ {low}, got {value}.")
        if self.checkpoint_every < 0:
            raise SaekitError(
                f"train.checkpoint_every must be ≥ 0 (0: only at the end), got "
                f"{self.checkpoint_every}."
            )
        if self.grad_clip_norm is not None and self.grad_clip_norm < 0:
            raise SaekitError(
                f"train.grad_clip_norm must be ≥ 0 (0 disables clipping), got "
                f"{self.grad_clip_norm}."
            )
        if self.lr_decay_fraction is not None and not 0 <= self.lr_decay_fraction <= 1:
            raise SaekitError(
                f"train.lr_decay_fraction must be in [0, 1], got {self.lr_decay_fraction}."
            )
        if self.ema_decay is not None and not 0 <= self.ema_decay < 1:
            raise SaekitError(
                f"train.ema_decay must be in [0, 1) (0: export the last iterate), got "
                f"{self.ema_decay}."
            )
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise SaekitError(f"train.adam_betas must be in [0, 1), got {list(self.adam_betas)}.")


_AT_LEAST = {
    "total_tokens": 1,
    "log_every": 1,
    "dead_window_tokens": 1,
    "lr_warmup_steps": 0,
    "sparsity_warmup_steps": 0,
    "b_dec_init_samples": 0,
}
"""Integer fields of TrainConfig and their smallest valid value."""
